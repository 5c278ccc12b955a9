"""Convert the annotation file you hold into this project's ``{split}_reid_{lang}.json`` files.

The input is recognised by its content, whatever its name (data/formats.py has the rules):
- CUHK-PEDES ``reid_raw.json`` (``split``, ``file_path``, ``id``, ``captions``) or
  ``caption_all.json`` (no ``split``: the standard split by identity, 11,003 / 1,000 /
  1,000 identities in id order, or ``--split-counts``);
- ICFG-PEDES ``ICFG-PEDES.json`` (splits train and test only);
- RSTPReid ``data_captions.json`` (``img_path`` instead of ``file_path``);
- UFineBench's JSON (captions of ~80 words, an ``image`` field, or the entries under a key);
- our own ``{split}_reid_{lang}.json`` files, or a folder of them (validated, passed through).
It prints one ``recognised: ...`` line, then images, people and captions per split.

Translations (``--translation LANG=FILE``, repeatable, also several files of one language)
are a JSON object ``file_path -> [captions]`` or a list of entries with ``file_path`` and
``captions``, in any order: caption i of an image translates its input caption i.

Example:
    python -m tools.prepare_data --raw CUHK-PEDES/caption_all.json --out CUHK-PEDES/annos \\
        --image-dir CUHK-PEDES/imgs --translation ch=cuhk_ch.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data.annotations import DataError
from data.audit import audit_entries, format_audit
from data.formats import SPLITS, Source, read_source
from data.translations import add_translation, read_translations

LANGS = ("ch", "fr", "de")
Converted = dict[str, dict[str, list[dict]]]  # {split: {lang: [{file_path, id, captions}]}}


def parse_split_counts(text: str | None) -> tuple[int, int, int] | None:
    """``TRAIN,VAL,TEST`` identity counts (val may be 0)."""
    if text is None:
        return None
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise DataError(f"--split-counts expects TRAIN,VAL,TEST (three whole numbers), got {text!r}")
    counts = tuple(int(p) for p in parts)
    if counts[0] == 0 or counts[2] == 0:
        raise DataError(f"--split-counts needs at least one train and one test identity, got {text!r}")
    return counts  # type: ignore[return-value]


def parse_translations(specs: list[str]) -> dict[str, list[Path]]:
    """``LANG=FILE`` options grouped by language, in the order given."""
    out: dict[str, list[Path]] = {}
    for spec in specs:
        lang, sep, file = spec.partition("=")
        if not sep or lang not in LANGS or not file:
            raise DataError(f"--translation expects LANG=FILE with LANG in {', '.join(LANGS)}, got {spec!r}")
        out.setdefault(lang, []).append(Path(file))
    return out


def converted_entries(source: Source, translations: dict[str, list[Path]]) -> Converted:
    """Every output file's entries, translations aligned in; all checked, nothing written yet."""
    for lang, files in translations.items():
        if any(lang in by_lang for by_lang in source.splits.values()):
            raise DataError(f"--translation {lang}=...: the input already has {lang} captions")
        add_translation(source, read_translations(files), lang, ", ".join(map(str, files)))
    return {split: {lang: [e.as_dict() for e in entries] for lang, entries in by_lang.items()}
            for split, by_lang in source.splits.items()}


def write_split_files(out_dir: Path, converted: Converted) -> None:
    """Write all files or none: each goes to a temporary name first, renamed once all are written."""
    done: list[tuple[Path, Path]] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for split, by_lang in converted.items():
            for lang, entries in by_lang.items():
                final = out_dir / f"{split}_reid_{lang}.json"
                tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
                done.append((tmp, final))
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(entries, f, ensure_ascii=False)
    except OSError as e:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        raise DataError(f"{out_dir}: cannot write: {e.strerror or e}") from None
    for tmp, final in done:
        os.replace(tmp, final)


def missing_images(entries: list[dict], image_dir: Path) -> list[str]:
    return [e["file_path"] for e in entries if not (image_dir / e["file_path"]).is_file()]


def report(converted: Converted, language: str, dropped: int, out_dir: Path, image_dir: Path | None) -> None:
    """Counts per split (to compare with the published sizes), then the images that are missing."""
    for split in SPLITS:
        if split in converted:
            entries = converted[split][language]
            print(f"{split:5s}: {len({e['id'] for e in entries}):6d} ids {len(entries):7d} images "
                  f"{sum(len(e['captions']) for e in entries):7d} captions")
    if dropped:
        print(f"dropped {dropped} empty caption(s)")
    print(f"wrote {', '.join(next(iter(converted.values())))} files to {out_dir}")
    stale = sorted(p.name for split in SPLITS if split not in converted for p in out_dir.glob(f"{split}_reid_*.json"))
    if stale:  # e.g. a val file of an earlier conversion would still select the checkpoints
        print(f"warning: {out_dir} also holds {', '.join(stale)} from before, which this input has no split for; "
              "training will read them: remove them if they are not yours")
    if image_dir is None:
        return
    missing = [fp for by_lang in converted.values() for fp in missing_images(by_lang[language], image_dir)]
    if missing:
        listing = out_dir / "missing_images.txt"
        listing.write_text("\n".join(missing) + "\n", encoding="utf-8")
        print(f"{len(missing)} image file(s) missing under {image_dir} (all listed in {listing}):")
        for fp in missing[:20]:
            print(f"  {fp}")
    else:
        print(f"all images found under {image_dir}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.prepare_data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", required=True, type=Path,
                    help="reid_raw.json or caption_all.json (CUHK-PEDES), ICFG-PEDES.json, data_captions.json "
                         "(RSTPReid), UFineBench's JSON, or our {split}_reid_{lang}.json file(s) / their folder")
    ap.add_argument("--out", required=True, type=Path, help="folder for {split}_reid_{lang}.json (the config's anno_dir)")
    ap.add_argument("--image-dir", type=Path, help="image root (the config's image_dir); lists files that are missing")
    ap.add_argument("--translation", action="append", default=[], metavar="LANG=FILE",
                    help="translated captions aligned by file_path (lang: ch, fr or de); repeatable")
    ap.add_argument("--split-counts", metavar="TRAIN,VAL,TEST",
                    help="identities per split for a file without split field, if not CUHK-PEDES' 11003,1000,1000")
    args = ap.parse_args(argv)
    try:
        translations = parse_translations(args.translation)
        source = read_source(args.raw, parse_split_counts(args.split_counts))
        print(f"recognised: {source.label}")
        converted = converted_entries(source, translations)
        print(format_audit(audit_entries(converted)))  # warnings only: a finding never stops the conversion
        write_split_files(args.out, converted)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report(converted, source.language, source.dropped, args.out, args.image_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
