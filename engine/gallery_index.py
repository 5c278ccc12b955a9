"""A gallery saved on disk for repeated searches: one feature vector per image, memory-mapped.

Encoding a gallery is the slow part of a search; this keeps its result. The folder holds

* ``index.json``: format version, the checkpoint's SHA-256, the feature size, the image
  root, the number of images and the names of the three data files below. Written last
  and atomically, so it always describes complete data: rows past its count (an
  interrupted encoding) are cut off before the next append.
* ``features-<gen>.f32``: [count, dim] float32, row i the L2-normalised feature of image i.
* ``images-<gen>.tsv``: line i = path relative to the root, size in bytes, mtime in ns.
* ``offsets-<gen>.i64``: byte offset of every line of the list and of its end, so a
  search reads the paths of its hits without reading the list.

:func:`sync_index` brings an index up to date with a list of images: new images are
encoded and appended in chunks (the count in ``index.json`` advances after each chunk, so
an interrupted run keeps what it finished); changed or removed images make it copy the
unchanged rows into a new generation of files first; a different checkpoint (or feature
size) starts a new generation from scratch. A search then needs only the index and the
model's text side; re-ranking encodes just its top k images again
(``engine.retriever.Retriever``), so the index holds no image tokens.
"""
from __future__ import annotations

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
INDEX_VERSION = 1  # raise when the files change meaning
SCAN_ROWS = 65536  # rows scored per step of a search: bounded memory for any index size
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
        if meta.get("version") != INDEX_VERSION:
            raise GalleryIndexError(f"{path}: not an index of this version ({INDEX_VERSION}); rebuild it with --gallery")
        index = cls(folder, meta)
        for name in ("features", "images", "offsets"):
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
    def checkpoint(self) -> str:
        """SHA-256 of the checkpoint whose image features these are."""
        return self.meta["checkpoint"]

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

    def offsets(self) -> np.ndarray:
        return np.fromfile(self.folder / self.meta["offsets"], dtype=np.int64, count=self.count + 1)

    def paths(self, rows: Sequence[int]) -> list[str]:
        """Full paths of the images at ``rows`` (reads only their lines of the list)."""
        offsets = np.memmap(self.folder / self.meta["offsets"], dtype=np.int64, mode="r", shape=(self.count + 1,))
        out = []
        with open(self.folder / self.meta["images"], "rb") as f:
            for r in rows:
                f.seek(int(offsets[r]))
                line = f.read(int(offsets[r + 1] - offsets[r])).decode("utf-8")
                out.append(os.path.join(self.root, line.split("\t", 1)[0]))
        return out

    def stamps(self) -> list[Stamp]:
        """(relative path, size, mtime_ns) of every image, in row order."""
        end = int(self.offsets()[-1]) if self.count else 0
        with open(self.folder / self.meta["images"], "rb") as f:
            text = f.read(end).decode("utf-8")
        out = []
        for line in text.splitlines():
            rel, size, mtime = line.rsplit("\t", 2)
            out.append((rel, int(size), int(mtime)))
        return out


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


def _new_generation(folder: Path, old: dict | None, checkpoint: str, dim: int, root: str) -> dict:
    """Empty data files of a new generation (the old ones stay until index.json points away from them)."""
    gen = int(old["generation"]) + 1 if old else 1
    meta = {"version": INDEX_VERSION, "checkpoint": checkpoint, "dim": dim, "root": root, "count": 0,
            "generation": gen, "features": f"features-{gen}.f32", "images": f"images-{gen}.tsv",
            "offsets": f"offsets-{gen}.i64"}
    for name in ("features", "images"):
        (folder / meta[name]).write_bytes(b"")
    np.zeros(1, dtype=np.int64).tofile(folder / meta["offsets"])
    return meta


def _switch(folder: Path, old: dict | None, meta: dict) -> None:
    """Make ``meta`` current, then delete the previous generation's files."""
    _write_meta(folder, meta)
    if old and old.get("generation") != meta["generation"]:
        for name in ("features", "images", "offsets"):
            (folder / old[name]).unlink(missing_ok=True)


def _truncate(folder: Path, meta: dict) -> int:
    """Cut every data file to the rows index.json counts; returns the list's byte length."""
    count, dim = int(meta["count"]), int(meta["dim"])
    offsets = np.fromfile(folder / meta["offsets"], dtype=np.int64, count=count + 1)
    if len(offsets) != count + 1:
        raise GalleryIndexError(f"{folder}: {meta['offsets']} is shorter than index.json says; rebuild the index")
    for name, size in (("features", count * dim * 4), ("images", int(offsets[-1])), ("offsets", (count + 1) * 8)):
        with open(folder / meta[name], "r+b") as f:
            f.truncate(size)
    return int(offsets[-1])


def new_index(folder: Path, checkpoint: str, dim: int, root: str) -> dict:
    """An empty index in ``folder`` (replacing none); returns its metadata for :func:`append_rows`."""
    meta = _new_generation(folder, None, checkpoint, dim, root)
    _write_meta(folder, meta)
    return meta


def append_rows(folder: Path, meta: dict, feats: np.ndarray, stamps: list[Stamp]) -> None:
    """Add rows (features [n, dim], their images' stamps) at the end of the data files, then count them in
    index.json: the one way rows get into an index (:func:`sync_index`, benchmarks/search_index.py)."""
    end = _truncate(folder, meta)
    lines = [f"{rel}\t{size}\t{mtime}\n".encode() for rel, size, mtime in stamps]
    with open(folder / meta["features"], "ab") as f:
        f.write(np.ascontiguousarray(feats, dtype=np.float32).tobytes())
    with open(folder / meta["images"], "ab") as f:
        f.write(b"".join(lines))
    with open(folder / meta["offsets"], "ab") as f:
        f.write((end + np.cumsum([len(x) for x in lines], dtype=np.int64)).tobytes())
    meta["count"] = int(meta["count"]) + len(stamps)
    _write_meta(folder, meta)


def _compact(folder: Path, old: dict, keep_rows: list[int], stamps: list[Stamp]) -> dict:
    """A new generation holding only ``keep_rows`` of the current one (with their ``stamps``)."""
    index = SavedIndex(folder, old)
    meta = _new_generation(folder, old, old["checkpoint"], int(old["dim"]), old["root"])
    feats = index.features()
    for s in range(0, len(keep_rows), SCAN_ROWS):
        rows = keep_rows[s:s + SCAN_ROWS]
        append_rows(folder, meta, feats[rows], stamps[s:s + SCAN_ROWS])
    _switch(folder, old, meta)
    return meta


def sync_index(folder: str | os.PathLike, root: str | os.PathLike, rels: Sequence[str], checkpoint: str, dim: int,
               encode: Callable[[list[str]], torch.Tensor], chunk: int = ENCODE_CHUNK,
               progress: bool = True) -> SyncReport:
    """Make the index in ``folder`` hold exactly the images ``rels`` (paths relative to ``root``).

    ``checkpoint``: the SHA-256 of the model's checkpoint; ``encode(paths)`` -> [n, dim]
    normalised image features of full paths. Unchanged images (same path, size and mtime)
    keep their rows; others are encoded in chunks of ``chunk`` images.
    """
    folder, root = Path(folder), os.path.realpath(root)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [image_stamp(root, rel) for rel in dict.fromkeys(rels)]
    old = _read_meta(folder / INDEX_FILE) if (folder / INDEX_FILE).is_file() else None
    reason = ""
    if old is None:
        reason = "new index"
    elif old.get("version") != INDEX_VERSION:
        reason = "index of another version"
        old = None
    elif old["checkpoint"] != checkpoint:
        reason = "the checkpoint changed"
    elif int(old["dim"]) != dim:
        reason = "the feature size changed"
    if reason:
        meta = _new_generation(folder, old, checkpoint, dim, root)
        _switch(folder, old, meta)
        have: dict[Stamp, int] = {}
        current: list[Stamp] = []
    else:
        meta = old
        if meta["root"] != root:  # a moved gallery: images keep their rows when their stamps are unchanged
            meta["root"] = root
            _write_meta(folder, meta)
        current = SavedIndex(folder, meta).stamps()
        have = {s: r for r, s in enumerate(current)}
    want_set = set(wanted)
    keep = [r for r, s in enumerate(current) if s in want_set]
    gone = len(current) - len(keep)
    if gone:
        meta = _compact(folder, meta, keep, [current[r] for r in keep])
    todo = [s for s in wanted if s not in have]
    known = {s[0] for s in current}
    changed = sum(s[0] in known for s in todo)
    with tqdm(total=len(todo), desc="encoding gallery", unit="img", disable=not progress or not todo) as bar:
        for s in range(0, len(todo), chunk):
            part = todo[s:s + chunk]
            feats = encode([os.path.join(root, rel) for rel, _, _ in part])
            append_rows(folder, meta, feats.float().cpu().numpy(), part)
            bar.update(len(part))
    return SyncReport(kept=len(keep), added=len(todo) - changed, changed=changed, removed=gone - changed,
                      reason=reason)


__all__ = ["ENCODE_CHUNK", "INDEX_FILE", "GalleryIndexError", "SCAN_ROWS", "SavedIndex", "SyncReport", "append_rows",
           "image_stamp", "new_index", "sync_index", "top_rows"]
