"""The annotation formats ``tools.prepare_data`` reads, recognised by their content.

Users hold the datasets in the shape each benchmark released them, under whatever file
name; looking at the entries rather than the name lets one command take any of them.
Rules, in order (``detect_format``):

- a folder: our own ``{split}_reid_{lang}.json`` files in it (validated, passed through);
- a JSON object instead of a list: UFineBench's JSON, its entries under one key (any name)
  or under the keys ``train`` / ``val`` / ``test`` (the key is then the split);
- entries with ``image``: UFineBench; with ``img_path``: RSTPReid ``data_captions.json``;
- no entry with ``split``: CUHK-PEDES ``caption_all.json`` (standard split by identity),
  unless the file is named ``{split}_reid_{lang}.json``: one of our files (its content
  cannot say which split and language it holds, its name does);
- ``split`` and ``file_path`` with captions of 50 words or more on average: UFineBench
  (about 80 words; the others 20-40); splits train/test only: ICFG-PEDES
  ``ICFG-PEDES.json``; otherwise CUHK-PEDES ``reid_raw.json``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from data.annotations import DataError, Entry, pair_entries, read_entries
from data.text import has_words

SPLITS = ("train", "val", "test")
CUHK_SPLIT = (11003, 1000, 1000)  # identities sorted by id: train, val, test
LONG_CAPTION_WORDS = 50
OWN_NAME = re.compile(r"^(train|val|test)_reid_([A-Za-z0-9_-]+)\.json$")
LABELS = {
    "cuhk_raw": "CUHK-PEDES reid_raw.json", "caption_all": "CUHK-PEDES caption_all.json",
    "icfg": "ICFG-PEDES ICFG-PEDES.json", "rstpreid": "RSTPReid data_captions.json",
    "ufinebench": "UFineBench JSON", "own": "our {split}_reid_{lang}.json files",
}
PATH_KEYS = {"cuhk_raw": ("file_path",), "caption_all": ("file_path",), "icfg": ("file_path",),
             "rstpreid": ("img_path",), "ufinebench": ("image", "file_path")}


@dataclass(frozen=True)
class SourceEntry:
    """One image; ``indices`` are its kept captions' positions in the input, so translations align by caption index."""
    file_path: str
    id: int
    captions: tuple[str, ...]
    indices: tuple[int, ...]
    n_input: int

    def as_dict(self) -> dict:
        return {"file_path": self.file_path, "id": self.id, "captions": list(self.captions)}


@dataclass
class Source:
    """A converted input: the ``recognised:`` text, ``{split: {lang: entries}}``, its language, captions dropped."""
    label: str
    splits: dict[str, dict[str, list[SourceEntry]]]
    language: str = "en"
    dropped: int = 0


def load_json(path: Path) -> object:
    """Parsed JSON, every failure as one DataError line."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected a JSON file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


def unwrap(raw: object, path: Path) -> tuple[list, str]:
    """The entry list of a file and, when it sat inside an object, where (UFineBench's layout)."""
    if isinstance(raw, list):
        if not raw:
            raise DataError(f"{path}: expected a non-empty JSON list of entries")
        return raw, ""
    if isinstance(raw, dict) and raw and set(raw) <= set(SPLITS) and all(isinstance(v, list) for v in raw.values()):
        entries = [{**e, "split": s} if isinstance(e, dict) else e for s, v in raw.items() for e in v]
        if entries:
            return entries, f"entries under the keys {', '.join(raw)}"
    if isinstance(raw, dict):
        lists = [(k, v) for k, v in raw.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1:
            return lists[0][1], f"entries under the key {lists[0][0]!r}"
    shape = f"an object with keys {', '.join(map(str, list(raw)[:5]))}" if isinstance(raw, dict) else type(raw).__name__
    raise DataError(f"{path}: expected a JSON list of entries (or an object holding one under a key), got {shape}")


def detect_format(entries: list, wrapped: bool = False) -> str:
    """The format name (a key of ``LABELS``) of a non-empty entry list, from its fields and content."""
    first = entries[0]
    if not isinstance(first, dict):
        raise DataError(f"entry 0: expected an object, got {type(first).__name__}")
    if wrapped or "image" in first:
        return "ufinebench"
    if "img_path" in first:
        return "rstpreid"
    if not any(isinstance(e, dict) and "split" in e for e in entries):
        return "caption_all"
    if mean_caption_words(entries) >= LONG_CAPTION_WORDS:
        return "ufinebench"
    if {e.get("split") for e in entries if isinstance(e, dict)} <= {"train", "test"}:
        return "icfg"
    return "cuhk_raw"


def mean_caption_words(entries: list) -> float:
    words = [len(c.split()) for e in entries if isinstance(e, dict) and isinstance(e.get("captions"), list)
             for c in e["captions"] if isinstance(c, str)]
    return sum(words) / max(len(words), 1)


def parse_entry(item: object, where: str, keys: tuple[str, ...], fmt: str) -> tuple[SourceEntry, int]:
    """One input entry with its empty captions removed (training rejects them); returns also how many were."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected an object, got {type(item).__name__}")
    fp = next((item[k] for k in keys if k in item), None)
    if not isinstance(fp, str) or not fp:
        raise DataError(f"{where}: needs a non-empty {' or '.join(map(repr, keys))} ({LABELS[fmt]})")
    pid, caps = item.get("id"), item.get("captions")
    if isinstance(pid, str) and pid.strip().isdigit():
        pid = int(pid)
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise DataError(f"{where}: 'id' must be an integer, got {pid!r}")
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise DataError(f"{where}: 'captions' must be a list of strings")
    kept = [j for j, c in enumerate(caps) if has_words(c)]
    entry = SourceEntry(fp, pid, tuple(caps[j].strip() for j in kept), tuple(kept), len(caps))
    return entry, len(caps) - len(kept)


def convert_split_entries(entries: list, path: Path, fmt: str) -> Source:
    """Entries carrying their own ``split`` field, grouped by split."""
    splits: dict[str, list[SourceEntry]] = {}
    dropped = 0
    for i, item in enumerate(entries):
        where = f"{path}: entry {i}"
        entry, n = parse_entry(item, where, PATH_KEYS[fmt], fmt)
        split = item.get("split")
        if split not in SPLITS:
            raise DataError(f"{where}: 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
        dropped += n
        if entry.captions:
            splits.setdefault(split, []).append(entry)
    ordered = {s: {"en": splits[s]} for s in SPLITS if s in splits}
    return Source(LABELS[fmt], ordered, dropped=dropped)


def split_by_identity(entries: list, path: Path, counts: tuple[int, int, int] | None) -> Source:
    """caption_all.json: identities sorted by id, the first ``counts[0]`` train, the next val, the rest test."""
    parsed = [parse_entry(item, f"{path}: entry {i}", PATH_KEYS["caption_all"], "caption_all")
              for i, item in enumerate(entries)]
    ids = sorted({e.id for e, _ in parsed})
    wanted = counts or CUHK_SPLIT
    if len(ids) != sum(wanted):
        given = ("--split-counts " + ",".join(map(str, counts)) + f" sums to {sum(counts)}") if counts else \
            f"the standard CUHK-PEDES split expects {sum(CUHK_SPLIT)} (pass --split-counts TRAIN,VAL,TEST to split them)"
        raise DataError(f"{path}: found {len(ids)} identities, but {given}")
    bounds = (wanted[0], wanted[0] + wanted[1])
    split_of = {pid: SPLITS[(k >= bounds[0]) + (k >= bounds[1])] for k, pid in enumerate(ids)}
    splits: dict[str, list[SourceEntry]] = {}
    for e, _ in parsed:
        if e.captions:
            splits.setdefault(split_of[e.id], []).append(e)
    how = ("split by identity " if counts else "standard split by identity ") + "/".join(map(str, wanted))
    label = f"{LABELS['caption_all']} (no split field): {how} of {len(ids)} identities" + \
        (" (--split-counts)" if counts else "")
    return Source(label, {s: {"en": splits[s]} for s in SPLITS if s in splits},
                  dropped=sum(n for _, n in parsed))


def read_own(files: list[Path], where: Path) -> Source:
    """Our own files, validated as training reads them and checked aligned across languages; kept as they are."""
    read: dict[str, dict[str, list[Entry]]] = {}
    for f in files:
        split, lang = OWN_NAME.match(f.name).groups()
        read.setdefault(split, {})[lang] = read_entries(f)
    langs = sorted({lang for by_lang in read.values() for lang in by_lang})
    source_lang = "en" if "en" in langs else langs[0]
    for split, by_lang in read.items():
        if source_lang not in by_lang:
            raise DataError(f"{where}: {split} has no {split}_reid_{source_lang}.json (languages {', '.join(by_lang)})")
        name = f"{split}_reid_{source_lang}.json"
        for lang, entries in by_lang.items():
            pair_entries(by_lang[source_lang], entries, name, f"{split}_reid_{lang}.json")
    splits = {s: {lang: [SourceEntry(e.file_path, e.id, e.captions, tuple(range(len(e.captions))), len(e.captions))
                         for e in read[s][lang]] for lang in sorted(read[s], key=lambda x: (x != source_lang, x))}
              for s in SPLITS if s in read}
    label = (f"{LABELS['own']}: {len(files)} file(s) validated and passed through "
             f"(splits {', '.join(splits)}; languages {', '.join(sorted(langs, key=lambda x: (x != source_lang, x)))})")
    return Source(label, splits, language=source_lang)


def read_source(path: Path, split_counts: tuple[int, int, int] | None = None) -> Source:
    """Recognise and convert ``path`` (a file in any format above, or a folder of our files)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if OWN_NAME.match(p.name) and p.is_file())
        if not files:
            raise DataError(f"{path}: a folder, but without {{split}}_reid_{{lang}}.json files")
        source = read_own(files, path)
    else:
        entries, note = unwrap(load_json(path), path)
        if OWN_NAME.match(path.name) and not any(isinstance(e, dict) and "split" in e for e in entries):
            source = read_own([path], path)
        else:
            try:
                fmt = detect_format(entries, wrapped=bool(note))
            except DataError as e:
                raise DataError(f"{path}: {e}") from None
            if fmt == "caption_all":
                return split_by_identity(entries, path, split_counts)
            source = convert_split_entries(entries, path, fmt)
            source.label = f"{source.label} ({format_reason(fmt, entries, note)})"
    if split_counts is not None:
        raise DataError(f"--split-counts applies only to a file without split field (CUHK-PEDES caption_all.json), "
                        f"not to {path}")
    return source


def format_reason(fmt: str, entries: list, note: str) -> str:
    """What in the content gave the format away, for the ``recognised:`` line."""
    if fmt == "ufinebench":
        if note:
            return note
        if isinstance(entries[0], dict) and "image" in entries[0]:
            return "entries with an 'image' field"
        return f"split field, captions of {mean_caption_words(entries):.1f} words on average"
    return {"cuhk_raw": "split field with val, file_path", "icfg": "split field with train/test only, file_path",
            "rstpreid": "split field, img_path"}[fmt]
