"""A gallery saved on disk for repeated searches: one feature vector per image, memory-mapped.

Encoding a gallery is the slow part of a search; this keeps its result. The folder holds

* ``index.json``: format version, the encoder fingerprint (of the checkpoint's bytes, the
  image size and the evaluation precision), the feature size, the image root, the number of images and
  the names of the three data files below. Written last and atomically, after the data
  files are flushed to disk, so it always describes complete data: rows past its count
  (an interrupted encoding) are cut off before the next append.
* ``features-<gen>.f32``: [count, dim] float32, row i the L2-normalised feature of image i.
* ``images-<gen>.jsonl``: line i = ``["path relative to the root", size, mtime_ns]`` (JSON
  escapes any character a file name can hold).
* ``images_offsets-<gen>.i64``: byte offset of every line of the list and of its end, so
  a search reads the paths of its hits without reading the list.

:func:`sync_index` brings an index up to date with a list of images: new images are
encoded and appended in chunks (the count in ``index.json`` advances after each chunk, so
an interrupted run keeps what it finished); changed or removed images make it first copy
the unchanged rows into a new generation of files, published when complete; another
encoder (checkpoint or settings) or feature size starts a new generation from scratch.
Files of other generations are deleted. A search then needs only the index and the model's
text side; re-ranking encodes just its top k images again (``engine.retriever.Retriever``),
so the index holds no image tokens.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.checkpoint import atomic_write
from utils.errors import InputError

INDEX_FILE = "index.json"
LOCK_FILE = ".lock"  # held while an index is updated
INDEX_VERSION = 1  # raise when the files change meaning
SCAN_ROWS = 65536  # rows scored per step of a search: bounded memory for any index size
DATA_FILES = {"features": ".f32", "images": ".jsonl", "images_offsets": ".i64"}  # name -> extension; <name>-<gen><ext>
REQUIRED_KEYS = {"version", "encoder", "dim", "root", "count", "generation", *DATA_FILES}
ENCODE_CHUNK = 1024  # images encoded between two updates of index.json


class GalleryIndexError(InputError):
    """An index folder that cannot be used, reported as one line."""


Stamp = tuple[str, int, int]  # (path relative to the root, size, mtime_ns)


def image_stamp(root: str, rel: str) -> Stamp:
    st = os.stat(os.path.join(root, rel))
    return rel, st.st_size, st.st_mtime_ns


@dataclass
class SyncReport:
    """What :func:`sync_index` did."""
    kept: int
    added: int
    changed: int
    removed: int
    reason: str = ""  # why everything was encoded again ("" when nothing forced it)


def top_rows(chunks: Iterator[torch.Tensor], query: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, rows) of the ``n`` rows with the largest dot product with ``query`` [E], best first.

    ``chunks`` are consecutive [r, E] blocks of the matrix; only ``n`` candidates are kept
    between blocks. Equal scores are ordered by row, as a stable sort of all scores would.
    """
    best_s = query.new_zeros(0)
    best_r = torch.zeros(0, dtype=torch.long, device=query.device)
    if n <= 0:
        return best_s, best_r
    offset = 0
    for block in chunks:
        s = block @ query
        if len(s) > n:  # the n best and every score equal to the n-th, so ties are settled by row below
            i = (s >= torch.topk(s, n).values[-1]).nonzero()[:, 0]
        else:
            i = torch.arange(len(s), device=s.device)
        best_s, best_r = torch.cat([best_s, s[i]]), torch.cat([best_r, i + offset])
        offset += len(block)
        if len(best_s) > n:
            best_s, best_r = _ordered(best_s, best_r)
            best_s, best_r = best_s[:n], best_r[:n]
    return _ordered(best_s, best_r)


def _ordered(scores: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort by score descending, rows ascending among equal scores."""
    by_row = torch.argsort(rows)
    scores, rows = scores[by_row], rows[by_row]
    order = torch.sort(scores, descending=True, stable=True).indices
    return scores[order], rows[order]


class SavedIndex:
    """An index folder opened for searching (read-only)."""

    def __init__(self, folder: str | os.PathLike, meta: dict) -> None:
        self.folder, self.meta = Path(folder), meta

    @classmethod
    def open(cls, folder: str | os.PathLike) -> SavedIndex:
        path = Path(folder) / INDEX_FILE
        if not path.is_file():
            raise GalleryIndexError(f"no gallery index in {folder} (build one with --gallery)")
        meta = _read_meta(path)
        if meta.get("version") != INDEX_VERSION or not REQUIRED_KEYS <= meta.keys():
            raise GalleryIndexError(f"{path}: not an index of this version ({INDEX_VERSION}); rebuild it with --gallery")
        index = cls(folder, meta)
        for name in DATA_FILES:
            if not (index.folder / meta[name]).is_file():
                raise GalleryIndexError(f"{path}: its file {meta[name]} is missing")
        return index

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def root(self) -> str:
        return self.meta["root"]

    @property
    def encoder(self) -> str:
        """Names the weights and settings that encoded these features (``Retriever.fingerprint(images_only=True)``)."""
        return self.meta["encoder"]

    def __len__(self) -> int:
        return self.count

    def features(self) -> np.ndarray:
        """[count, dim] float32, memory-mapped copy-on-write (pages are read only when used)."""
        if self.count == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(self.folder / self.meta["features"], dtype=np.float32, mode="c", shape=(self.count, self.dim))

    def blocks(self, rows: int = SCAN_ROWS) -> Iterator[torch.Tensor]:
        feats = self.features()
        for s in range(0, self.count, rows):
            yield torch.from_numpy(feats[s:s + rows])

    def top(self, query: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosine similarities, rows) of the ``n`` best images for a normalised query feature [E]."""
        if query.shape[-1] != self.dim:
            raise GalleryIndexError(f"{self.folder}: features have size {self.dim}, the model's {query.shape[-1]}")
        return top_rows(self.blocks(), query.float().cpu(), n)

    def paths(self, rows: Sequence[int]) -> list[str]:
        """Full paths of the images at ``rows`` (reads only their lines of the list)."""
        offsets = np.memmap(self.folder / self.meta["images_offsets"], dtype=np.int64, mode="r",
                            shape=(self.count + 1,))
        out = []
        with open(self.folder / self.meta["images"], "rb") as f:
            for r in rows:
                f.seek(int(offsets[r]))
                out.append(os.path.join(self.root, _parse(f.read(int(offsets[r + 1] - offsets[r])))[0]))
        return out

    def stamps(self) -> list[Stamp]:
        """(relative path, size, mtime_ns) of every image, in row order."""
        end = _last_offset(self.folder, self.meta)
        with open(self.folder / self.meta["images"], "rb") as f:
            data = f.read(end)
        return [_parse(line) for line in data.split(b"\n")[:-1]]


def _line(stamp: Stamp) -> bytes:
    """One line of the image list: JSON escapes tabs, line breaks and undecodable bytes of file names."""
    return json.dumps(list(stamp)).encode("ascii") + b"\n"


def _parse(line: bytes) -> Stamp:
    rel, size, mtime = json.loads(line)
    return rel, int(size), int(mtime)


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GalleryIndexError(f"{path}: unreadable index ({e})") from None
    if not isinstance(meta, dict):
        raise GalleryIndexError(f"{path}: not an index file")
    return meta


def _write_meta(folder: Path, meta: dict) -> None:
    atomic_write(folder / INDEX_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=1), encoding="utf-8"))


def _new_generation(folder: Path, old: dict | None, encoder: str, dim: int, root: str) -> dict:
    """Empty data files of a new generation (the old ones stay until index.json points away from them)."""
    gen = int(old["generation"]) + 1 if old else 1
    meta = {"version": INDEX_VERSION, "encoder": encoder, "dim": dim, "root": root, "count": 0,
            "generation": gen, **{name: f"{name}-{gen}{ext}" for name, ext in DATA_FILES.items()}}
    for name in ("features", "images"):
        (folder / meta[name]).write_bytes(b"")
    np.zeros(1, dtype=np.int64).tofile(folder / meta["images_offsets"])
    return meta


def _remove_strays(folder: Path, meta: dict | None) -> None:
    """Delete data files index.json does not name (an interrupted rebuild or compaction, another version)."""
    current = {meta[name] for name in DATA_FILES} if meta else set()
    for name, ext in DATA_FILES.items():
        for path in folder.glob(f"{name}-*{ext}"):
            if path.name not in current:
                path.unlink()


def _last_offset(folder: Path, meta: dict) -> int:
    """Byte length of the image list's counted lines: the last of the count + 1 offsets."""
    count = int(meta["count"])
    path = folder / meta["images_offsets"]
    if path.stat().st_size < (count + 1) * 8:
        raise GalleryIndexError(f"{folder}: {meta['images_offsets']} is shorter than index.json says; "
                                "rebuild the index (delete the folder)")
    return int(np.fromfile(path, dtype=np.int64, count=1, offset=count * 8)[0])


def _append_data(folder: Path, meta: dict, feats: np.ndarray, stamps: list[Stamp]) -> None:
    """Write rows after the counted ones (anything past them, from an interrupted write, is cut
    off first) and flush them to disk; ``meta``'s count advances, index.json is not written."""
    count, dim = int(meta["count"]), int(meta["dim"])
    end = _last_offset(folder, meta)
    lines = [_line(stamp) for stamp in stamps]
    parts = ((meta["features"], count * dim * 4, np.ascontiguousarray(feats, dtype=np.float32).tobytes()),
             (meta["images"], end, b"".join(lines)),
             (meta["images_offsets"], (count + 1) * 8,
              (end + np.cumsum([len(x) for x in lines], dtype=np.int64)).tobytes()))
    for name, size, data in parts:
        with open(folder / name, "r+b") as f:
            f.truncate(size)
            f.seek(size)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    meta["count"] = count + len(stamps)


def new_index(folder: Path, encoder: str, dim: int, root: str) -> dict:
    """An empty index in ``folder`` (replacing none); returns its metadata for :func:`append_rows`."""
    meta = _new_generation(folder, None, encoder, dim, root)
    _write_meta(folder, meta)
    return meta


def append_rows(folder: Path, meta: dict, feats: np.ndarray, stamps: list[Stamp]) -> None:
    """Add rows (features [n, dim], their images' stamps) at the end, then count them in index.json:
    how encoded images enter an index (:func:`sync_index`, benchmarks/search_index.py)."""
    _append_data(folder, meta, feats, stamps)
    _write_meta(folder, meta)


def _switch(folder: Path, meta: dict) -> None:
    """Make ``meta`` current, then delete every other generation's files."""
    _write_meta(folder, meta)
    _remove_strays(folder, meta)


def _compact(folder: Path, old: dict, keep_rows: list[int], stamps: list[Stamp]) -> dict:
    """A new generation holding only ``keep_rows`` of the current one, published only once complete."""
    feats = SavedIndex(folder, old).features()
    meta = _new_generation(folder, old, old["encoder"], int(old["dim"]), old["root"])
    for s in range(0, len(keep_rows), SCAN_ROWS):
        _append_data(folder, meta, feats[keep_rows[s:s + SCAN_ROWS]], stamps[s:s + SCAN_ROWS])
    _switch(folder, meta)
    return meta


def _current(folder: Path, encoder: str, dim: int, root: str) -> tuple[dict, list[Stamp], str]:
    """(metadata, stamps of its rows, why it was started afresh or ""): the index to update, a new empty
    one when there is none, it is of another version, or ``encoder`` or ``dim`` differ."""
    old = _read_meta(folder / INDEX_FILE) if (folder / INDEX_FILE).is_file() else None
    if old is not None and (old.get("version") != INDEX_VERSION or not REQUIRED_KEYS <= old.keys()):
        old = None
    _remove_strays(folder, old)
    reason = ("new index" if old is None else "the checkpoint or its settings changed" if old["encoder"] != encoder
              else "the feature size changed" if int(old["dim"]) != dim else "")
    if reason:
        meta = _new_generation(folder, old, encoder, dim, root)
        _switch(folder, meta)
        return meta, [], reason
    if old["root"] != root:  # a moved gallery: images keep their rows when their stamps are unchanged
        old["root"] = root
        _write_meta(folder, old)
    return old, SavedIndex(folder, old).stamps(), ""


def sync_index(folder: str | os.PathLike, root: str | os.PathLike, rels: Sequence[str], encoder: str, dim: int,
               encode: Callable[[list[str]], torch.Tensor], chunk: int = ENCODE_CHUNK,
               progress: bool = True) -> SyncReport:
    """Make the index in ``folder`` hold exactly the images ``rels`` (paths relative to ``root``).

    ``encoder``: names the weights and settings that encode images (``Retriever.fingerprint(images_only=True)``);
    ``encode(paths)`` -> [n, dim] normalised image features of full paths. Unchanged images
    (same path, size and mtime) keep their rows; the others are encoded in chunks of ``chunk``
    images, each counted in index.json once written. One process at a time: another one
    finds the folder locked and stops with an error.
    """
    folder, root = Path(folder), os.path.realpath(root)
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        return _sync(folder, root, rels, encoder, dim, encode, chunk, progress)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold the folder's update lock (released when the process ends, however it ends)."""
    with open(folder / LOCK_FILE, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GalleryIndexError(f"{folder}: another process is updating this index") from None
        yield


def _sync(folder: Path, root: str, rels: Sequence[str], encoder: str, dim: int,
          encode: Callable[[list[str]], torch.Tensor], chunk: int, progress: bool) -> SyncReport:
    wanted = [image_stamp(root, rel) for rel in dict.fromkeys(rels)]
    meta, current, reason = _current(folder, encoder, dim, root)
    want_set, have = set(wanted), set(current)
    keep = [r for r, stamp in enumerate(current) if stamp in want_set]
    if len(keep) < len(current):
        meta = _compact(folder, meta, keep, [current[r] for r in keep])
    todo = [stamp for stamp in wanted if stamp not in have]
    known = {stamp[0] for stamp in current}
    changed = sum(stamp[0] in known for stamp in todo)
    with tqdm(total=len(todo), desc="encoding gallery", unit="img", disable=not progress or not todo) as bar:
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            append_rows(folder, meta, encode([os.path.join(root, rel) for rel, _, _ in part]).float().cpu().numpy(),
                        part)
            bar.update(len(part))
    return SyncReport(kept=len(keep), added=len(todo) - changed, changed=changed,
                      removed=len(current) - len(keep) - changed, reason=reason)


__all__ = ["ENCODE_CHUNK", "INDEX_FILE", "GalleryIndexError", "SCAN_ROWS", "SavedIndex", "SyncReport", "append_rows",
           "image_stamp", "new_index", "sync_index", "top_rows"]
