"""Annotation files ``{anno_dir}/{split}_reid_{lang}.json`` and their cross-language pairing.

Upstream paired the two language files by position without looking; here every entry is
checked (same file_path, same id, same number of captions) and any problem stops the run
with one line naming the file(s) and the entry index.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from data.text import has_words
from utils.config import Config, annotation_path, query_languages
from utils.errors import InputError

# optional, next to the annotation files: per evaluation split, the metrics of reference rankers that the
# evaluation report shows beside the model's (engine/reference_levels.py; the synthetic generator writes one)
REFERENCE_FILE = "reference_levels.json"


class DataError(InputError):
    """A data problem, reported as one line."""


@dataclass(frozen=True)
class Entry:
    """One image of one language file: its path relative to ``image_dir``, person id, captions."""
    file_path: str
    id: int
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Pair:
    """One image with aligned source and target captions (caption i of one translates caption i of the other)."""
    file_path: str
    id: int
    src_captions: tuple[str, ...]
    tgt_captions: tuple[str, ...]


def read_entries(path: str | Path) -> list[Entry]:
    """Parse and validate one annotation file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: expected a JSON list of entries, got {type(raw).__name__}")
    if not raw:
        raise DataError(f"{path}: empty list of entries")
    return [_entry(path, i, item) for i, item in enumerate(raw)]


def _entry(path: Path, i: int, item: object) -> Entry:
    where = f"{path}: entry {i}"
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object with file_path, id, captions, got {type(item).__name__}")
    for key in ("file_path", "id", "captions"):
        if key not in item:
            raise DataError(f"{where}: missing field '{key}'")
    fp, pid, caps = item["file_path"], item["id"], item["captions"]
    if not isinstance(fp, str) or not fp:
        raise DataError(f"{where}: 'file_path' must be a non-empty string, got {fp!r}")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise DataError(f"{where}: 'id' must be an integer, got {pid!r}")
    if not isinstance(caps, list) or not caps:
        raise DataError(f"{where}: 'captions' must be a non-empty list, got {caps!r}")
    for j, c in enumerate(caps):
        if not isinstance(c, str):
            raise DataError(f"{where}: caption {j} must be a string, got {c!r}")
        if not has_words(c):
            raise DataError(f"{where}: caption {j} is empty or only punctuation: {c!r}")
    return Entry(fp, pid, tuple(caps))


def pair_entries(src: list[Entry], tgt: list[Entry], src_name: str, tgt_name: str) -> list[Pair]:
    """Zip two language files after checking they are aligned entry by entry."""
    both = f"{src_name} and {tgt_name}"
    if len(src) != len(tgt):
        raise DataError(f"{both} are not aligned: {len(src)} vs {len(tgt)} entries")
    pairs = []
    for i, (s, t) in enumerate(zip(src, tgt)):
        if s.file_path != t.file_path:
            raise DataError(f"{both} are not aligned at entry {i}: file_path {s.file_path!r} vs {t.file_path!r}")
        if s.id != t.id:
            raise DataError(f"{both} are not aligned at entry {i}: id {s.id} vs {t.id}")
        if len(s.captions) != len(t.captions):
            raise DataError(f"{both} are not aligned at entry {i}: {len(s.captions)} vs {len(t.captions)} captions")
        pairs.append(Pair(s.file_path, s.id, s.captions, t.captions))
    return pairs


def load_split(cfg: Config, split: str) -> list[Pair]:
    """The aligned source/target entries of ``split`` (train, val or test)."""
    src_path = annotation_path(cfg, split, cfg.data.source_language)
    tgt_path = annotation_path(cfg, split, cfg.data.target_language)
    return pair_entries(read_entries(src_path), read_entries(tgt_path), str(src_path), str(tgt_path))


def load_language(cfg: Config, split: str, lang: str) -> list[Entry]:
    """One language file of a split (evaluation reads each language on its own)."""
    return read_entries(annotation_path(cfg, split, lang))


def has_split(cfg: Config, split: str) -> bool:
    """Whether both language files of ``split`` exist (a val split is optional)."""
    return all(annotation_path(cfg, split, lang).is_file()
               for lang in (cfg.data.source_language, cfg.data.target_language))


def split_languages(cfg: Config, split: str) -> list[str]:
    """The query languages evaluated on ``split``: every evaluated language on test (checked
    to exist before the run); on val, those with a val file, since the per-epoch selection
    needs only the source and the target and the others are still evaluated on test at the end."""
    return [lang for lang in query_languages(cfg) if split == "test" or annotation_path(cfg, split, lang).is_file()]


def person_indices(ids: list[int]) -> dict[int, int]:
    """Map raw person ids to contiguous indices 0..P-1 in order of first appearance."""
    out: dict[int, int] = {}
    for pid in ids:
        out.setdefault(pid, len(out))
    return out
