"""Convert an official raw annotation file into this project's ``{split}_reid_{lang}.json`` files.

Raw inputs (one JSON list each):
- CUHK-PEDES ``reid_raw.json`` and ICFG-PEDES ``ICFG-PEDES.json``: entries with
  ``split``, ``captions``, ``file_path``, ``id`` (other fields ignored);
- RSTPReid ``data_captions.json``: the same with ``img_path`` instead of ``file_path``.

Translations (``--translation LANG=FILE``, repeatable) are JSON objects mapping each
``file_path`` to its list of translated captions, in the order and number of the
English captions written to ``{split}_reid_en.json``; one file may cover all splits.

Example:
    python -m tools.prepare_data --raw CUHK-PEDES/reid_raw.json --out CUHK-PEDES/annos \\
        --image-dir CUHK-PEDES/imgs --translation ch=cuhk_ch.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from data.annotations import DataError, pair_entries, read_entries
from data.text import has_words

SPLITS = ("train", "val", "test")


def _load_json(path: Path) -> object:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


def convert_raw(path: Path) -> tuple[dict[str, list[dict]], int]:
    """Split the raw entries into ``{split: [{file_path, id, captions}]}``; returns also the dropped caption count.

    Captions that are empty after cleaning are dropped (entries left without captions too),
    since training and evaluation reject them.
    """
    raw = _load_json(path)
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON list of entries")
    out: dict[str, list[dict]] = defaultdict(list)
    dropped = 0
    for i, item in enumerate(raw):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object, got {type(item).__name__}")
        fp = item.get("file_path", item.get("img_path"))
        if not isinstance(fp, str) or not fp:
            raise DataError(f"{where}: needs a non-empty 'file_path' (CUHK-PEDES, ICFG-PEDES) or 'img_path' (RSTPReid)")
        split, pid, caps = item.get("split"), item.get("id"), item.get("captions")
        if split not in SPLITS:
            raise DataError(f"{where}: 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
        if isinstance(pid, str) and pid.strip().isdigit():
            pid = int(pid)
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise DataError(f"{where}: 'id' must be an integer, got {pid!r}")
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise DataError(f"{where}: 'captions' must be a list of strings")
        kept = [c.strip() for c in caps if has_words(c)]
        dropped += len(caps) - len(kept)
        if kept:
            out[split].append({"file_path": fp, "id": pid, "captions": kept})
    return dict(out), dropped


def merge_translation(english: dict[str, list[dict]], path: Path, lang: str) -> dict[str, list[dict]]:
    """Entries of ``lang`` aligned with the English ones, from a ``file_path -> captions`` mapping."""
    mapping = _load_json(path)
    if not isinstance(mapping, dict):
        raise DataError(f"{path}: expected a JSON object mapping file_path to a list of captions")
    out: dict[str, list[dict]] = {}
    used = set()
    for split, entries in english.items():
        out[split] = []
        for i, e in enumerate(entries):
            caps = mapping.get(e["file_path"])
            if caps is None:
                raise DataError(f"{path}: no {lang} captions for {e['file_path']!r} ({split} entry {i})")
            if not isinstance(caps, list) or not all(isinstance(c, str) and has_words(c) for c in caps):
                raise DataError(f"{path}: {e['file_path']!r}: expected a list of non-empty caption strings")
            if len(caps) != len(e["captions"]):
                raise DataError(f"{path}: {e['file_path']!r} has {len(caps)} {lang} captions but "
                                f"{len(e['captions'])} English ones ({split} entry {i})")
            used.add(e["file_path"])
            out[split].append({"file_path": e["file_path"], "id": e["id"], "captions": caps})
    extra = set(mapping) - used
    if extra:
        raise DataError(f"{path}: {len(extra)} file_path(s) not in the English annotations, e.g. {sorted(extra)[0]!r}")
    return out


def write_split_files(out_dir: Path, lang: str, splits: dict[str, list[dict]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, entries in splits.items():
        with open(out_dir / f"{split}_reid_{lang}.json", "w", encoding="utf-8") as f:
            json.dump(entries, f, ensure_ascii=False)


def missing_images(splits: dict[str, list[dict]], image_dir: Path) -> list[str]:
    return [e["file_path"] for entries in splits.values() for e in entries if not (image_dir / e["file_path"]).is_file()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.prepare_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True, type=Path,
                    help="reid_raw.json (CUHK-PEDES), ICFG-PEDES.json or data_captions.json (RSTPReid)")
    ap.add_argument("--out", required=True, type=Path, help="folder for {split}_reid_{lang}.json (the config's anno_dir)")
    ap.add_argument("--image-dir", type=Path, help="image root (the config's image_dir); lists files that are missing")
    ap.add_argument("--translation", action="append", default=[], metavar="LANG=FILE",
                    help="translated captions: JSON object file_path -> captions (lang: ch, fr or de); repeatable")
    args = ap.parse_args(argv)
    translations = []
    for spec in args.translation:
        lang, sep, file = spec.partition("=")
        if not sep or lang not in ("ch", "fr", "de") or not file:
            ap.error(f"--translation expects LANG=FILE with LANG in ch, fr, de, got '{spec}'")
        translations.append((lang, Path(file)))
    try:
        english, dropped = convert_raw(args.raw)
        merged = {lang: merge_translation(english, file, lang) for lang, file in translations}
        write_split_files(args.out, "en", english)
        for lang, splits in merged.items():
            write_split_files(args.out, lang, splits)
            for split in splits:
                a, b = args.out / f"{split}_reid_en.json", args.out / f"{split}_reid_{lang}.json"
                pair_entries(read_entries(a), read_entries(b), str(a), str(b))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split in SPLITS:
        if split in english:
            entries = english[split]
            print(f"{split:5s}: {len({e['id'] for e in entries}):6d} ids {len(entries):7d} images "
                  f"{sum(len(e['captions']) for e in entries):7d} captions")
    if dropped:
        print(f"dropped {dropped} empty caption(s)")
    print(f"wrote {', '.join(['en'] + list(merged))} files to {args.out}")
    if args.image_dir is not None:
        missing = missing_images(english, args.image_dir)
        if missing:
            listing = args.out / "missing_images.txt"
            listing.write_text("\n".join(missing) + "\n", encoding="utf-8")
            print(f"{len(missing)} image file(s) missing under {args.image_dir} (all listed in {listing}):")
            for fp in missing[:20]:
                print(f"  {fp}")
        else:
            print(f"all images found under {args.image_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
