"""Translated captions aligned to a converted source by file_path and caption index.

Translation files come in another order than the source (or cover one split each), so
position says nothing; an image's ``file_path`` and a caption's index in the input do.
A translation file is either a JSON object ``file_path -> [captions]`` or a list of
entries (any layout ``data.formats`` reads: ``file_path`` / ``img_path`` / ``image`` and
``captions``; a ``split`` field is ignored). Caption i translates input caption i, also
when the source dropped an empty caption before it.
"""
from __future__ import annotations

from pathlib import Path

from data.annotations import DataError
from data.formats import Source, SourceEntry, load_json, unwrap
from data.text import has_words

PATH_FIELDS = ("file_path", "img_path", "image")


def read_mapping(path: Path) -> dict[str, object]:
    """``file_path -> captions`` of one translation file (values are checked when aligned)."""
    raw = load_json(path)
    if isinstance(raw, dict) and all(isinstance(v, list) and not any(isinstance(c, dict) for c in v)
                                     for v in raw.values()):
        return raw
    entries, _ = unwrap(raw, path)
    mapping: dict[str, object] = {}
    for i, item in enumerate(entries):
        fp = next((item[k] for k in PATH_FIELDS if k in item), None) if isinstance(item, dict) else None
        if not isinstance(fp, str) or not fp or "captions" not in item:
            raise DataError(f"{path}: entry {i}: expected an object with 'file_path' (or 'img_path', 'image') "
                            f"and 'captions'")
        if fp in mapping:
            raise DataError(f"{path}: entry {i}: {fp!r} appears twice")
        mapping[fp] = item["captions"]
    return mapping


def read_translations(files: list[Path]) -> dict[str, object]:
    """One language's mapping from one or more files (e.g. one per split); a file_path in two is an error."""
    merged: dict[str, object] = {}
    for f in files:
        mapping = read_mapping(f)
        twice = next((fp for fp in mapping if fp in merged), None)
        if twice is not None:
            raise DataError(f"{f}: {twice!r} already has captions in another translation file of this language")
        merged.update(mapping)
    return merged


def align_entry(e: SourceEntry, caps: object, lang: str, src_name: str) -> SourceEntry:
    """The translation of one image, its captions picked at the source's kept caption indices."""
    if not isinstance(caps, list) or len(caps) != e.n_input:
        n = len(caps) if isinstance(caps, list) else 0
        raise DataError(f"{e.file_path!r} caption {min(n, e.n_input)} cannot be aligned: "
                        f"has {n} {lang} captions but {e.n_input} {src_name} ones")
    for j in e.indices:
        if not isinstance(caps[j], str) or not has_words(caps[j]):
            raise DataError(f"{e.file_path!r} caption {j} cannot be aligned: the {lang} caption is "
                            f"empty or not a string: {caps[j]!r}")
    return SourceEntry(e.file_path, e.id, tuple(caps[j].strip() for j in e.indices), e.indices, e.n_input)


def add_translation(source: Source, mapping: dict[str, object], lang: str, where: str) -> None:
    """Add ``lang`` to every split of ``source``; the first image that cannot be aligned stops with its name."""
    src_name = "English" if source.language == "en" else source.language
    aligned: dict[str, list[SourceEntry]] = {}
    seen: set[str] = set()
    for split, by_lang in source.splits.items():
        aligned[split] = []
        for i, e in enumerate(by_lang[source.language]):
            if e.file_path in seen:
                raise DataError(f"{where}: {e.file_path!r} is in the source twice ({split} entry {i}), "
                                f"so translations cannot be aligned by file_path")
            seen.add(e.file_path)
            if e.file_path not in mapping:
                raise DataError(f"{where}: no {lang} captions for {e.file_path!r} caption 0 ({split} entry {i})")
            try:
                aligned[split].append(align_entry(e, mapping[e.file_path], lang, src_name))
            except DataError as err:
                raise DataError(f"{where}: {err} ({split} entry {i})") from None
    extra = sorted(set(mapping) - seen)
    if extra:
        raise DataError(f"{where}: {len(extra)} file_path(s) not in the {src_name} annotations, e.g. {extra[0]!r}")
    for split, entries in aligned.items():
        source.splits[split][lang] = entries
