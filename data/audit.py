"""Data audit: problems in annotation files that training accepts but that distort it, reported, never fatal.

``main.py --check`` prints it after the split summary; ``tools.prepare_data`` can run
:func:`audit_entries` on what it converts. Each finding is counted over every file read
(a split and a language) and shown with up to three examples ("train/en[12]" is entry 12
of ``train_reid_en.json``):

* same caption, different people: a caption, cleaned as the run cleans it and case-folded,
  attached to two or more person ids within one file (RSTPReid has such). Each such text
  counts once.
* empty or one-word captions: at most one word after cleaning. A word is a whitespace-separated
  run holding a letter or digit; CJK text has no spaces, so two CJK characters count as one word.
* control characters: Unicode category Cc except tab, newline and carriage return (the
  cleaning and the tokenizer treat those as spaces); U+0085 (NEL) counts, since the tokenizer
  turns it into ``<unk>``.
* U+FFFD: the replacement character, left by a decoding error upstream.
* code fragments: an HTML tag (``<br>``, ``</b>``), an HTML entity (``&amp;``, ``&#39;``), a
  written-out escape (backslash + n, t, r or u), a ``{...}`` pair, or a URL (``http://``,
  ``https://``, ``www.``).
* wrong script: a ``ch`` caption without any Han character, or an ``en``/``fr``/``de`` caption
  with a CJK character (Han, kana, Hangul). Other language codes are not checked.
* duplicate images: a file_path listed more than once in one split (any of its language
  files): it is trained on twice per epoch, or is twice in the evaluation gallery.
* single-image people (info): a person id with one image in a split. Evaluation ranks images
  for each caption, and the image a caption describes is in the gallery, so such a query has
  one relevant image (never skipped; its AP is 1/rank); in train it is an ordinary person.
* caption length (info, per language): tokens with ``<s>`` ``</s>`` of the cleaned text the
  run tokenizes (already cut to ``experiment.text_length`` words, as upstream): mean, 95th
  percentile, and how many exceed ``text_length`` and are cut there. Without a tokenizer,
  whitespace words instead, and the line says so.
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from data.text import clean_caption
from utils.config import Config

EXAMPLES = 3  # examples shown per finding
EXCERPT = 48  # characters of a caption shown in an example
TOKENIZE_CHUNK = 4096  # captions per batch call of the tokenizer
WARNING, INFO = "warning", "info"

SHARED = "same caption, different people"
SHORT = "empty or one-word captions"
CONTROL = "control characters"
FFFD = "U+FFFD"
CODE = "code fragments"
SCRIPT = "wrong script"
DUP_IMAGES = "duplicate images"
SINGLE = "single-image people"
WARNING_NAMES = (SHARED, SHORT, CONTROL, FFFD, CODE, SCRIPT, DUP_IMAGES)
NOTES = {  # what a finding means for the run, said after its count
    DUP_IMAGES: "trained on twice per epoch, or twice in the evaluation gallery",
    SINGLE: "in val/test each of their captions has one relevant gallery image, the one it describes "
            "(ranked like any query, never skipped); in train an ordinary person",
}

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
HAN_RE = re.compile(f"[{_HAN}]")
CJK_RE = re.compile(f"[{_HAN}\u3040-\u30ff\u1100-\u11ff\uac00-\ud7af]")  # Han, kana, Hangul
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # Cc less \t \n \r
CODE_RE = re.compile(
    r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>"  # HTML tag
    r"|&(?:[a-zA-Z]{2,8}|#[0-9]{1,7}|#x[0-9a-fA-F]{1,6});"  # HTML entity
    r"|\\[ntru]"  # escape written out
    r"|\{[^{}]*\}"  # template placeholder / JSON
    r"|https?://|www\."  # URL
)
HAN_LANGUAGES = ("ch",)
LATIN_LANGUAGES = ("en", "fr", "de")


@dataclass
class Finding:
    """One kind of problem: how many, where (per file or split), the first few examples."""
    name: str
    count: int = 0
    examples: list[str] = field(default_factory=list)
    level: str = WARNING
    by_place: Counter[str] = field(default_factory=Counter)
    detail: str = ""

    def add(self, place: str, example: str) -> None:
        self.count += 1
        self.by_place[place] += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


@dataclass
class AuditReport:
    """All findings of one audit; ``warnings`` are the ones that found something."""
    findings: list[Finding]
    files: int
    captions: int
    seconds: float = 0.0

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING and f.count]

    def get(self, name: str) -> Finding:
        return next(f for f in self.findings if f.name == name)


def _excerpt(text: str, at: int = 0) -> str:
    """A short quoted piece of ``text`` around position ``at``, invisible characters escaped."""
    start = max(0, min(at - EXCERPT // 3, len(text) - EXCERPT))
    piece = "".join(c if c.isprintable() and c != "\ufffd" else ascii(c)[1:-1] for c in text[start:start + EXCERPT])
    return '"' + ("..." if start else "") + piece + ("..." if start + EXCERPT < len(text) else "") + '"'


def _fields(entry: Any) -> tuple[str, int, Sequence[str]]:
    """(file_path, id, captions) of an ``Entry`` or of a raw ``{"file_path", "id", "captions"}`` dict."""
    if isinstance(entry, Mapping):
        return entry["file_path"], entry["id"], entry["captions"]
    return entry.file_path, entry.id, entry.captions


def _is_short(cleaned: str) -> bool:
    """At most one word: space-separated runs with a letter or digit, two CJK characters one word."""
    if CJK_RE.search(cleaned):
        cjk = len(CJK_RE.findall(cleaned))
        rest = CJK_RE.sub(" ", cleaned).split()
        return sum(any(c.isalnum() for c in w) for w in rest) + math.ceil(cjk / 2) <= 1
    words = 0
    for w in cleaned.split():  # stops at the second word: most captions cost two words
        words += any(c.isalnum() for c in w)
        if words > 1:
            return False
    return True


def _script_problem(lang: str, text: str) -> int | None:
    """Position to show if ``text`` is in the wrong script for ``lang`` (0 for a missing script), else None."""
    if lang in HAN_LANGUAGES:
        return None if HAN_RE.search(text) else 0
    if lang in LATIN_LANGUAGES:
        m = CJK_RE.search(text)
        return m.start() if m else None
    return None


def _check_captions(place: str, lang: str, entries: Sequence[Any], clean: Callable[[str], str],
                    found: dict[str, Finding], texts: list[tuple[str, str]]) -> None:
    """Caption-level findings of one file; its cleaned captions (with their place) go to ``texts``."""
    ids_of: dict[str, set[int]] = {}
    first: dict[str, str] = {}
    for i, entry in enumerate(entries):
        _, pid, captions = _fields(entry)
        where = f"{place}[{i}]"
        for raw in captions:
            text = clean(raw)
            texts.append((where, text))
            key = text.casefold()
            ids_of.setdefault(key, set()).add(pid)
            first.setdefault(key, where)
            if _is_short(text):
                found[SHORT].add(place, f"{where} {_excerpt(raw)}")
            for name, m in ((CONTROL, CONTROL_RE.search(raw)), (CODE, CODE_RE.search(raw))):
                if m:
                    found[name].add(place, f"{where} {_excerpt(raw, m.start())}")
            if "\ufffd" in raw:
                found[FFFD].add(place, f"{where} {_excerpt(raw, raw.index(chr(0xFFFD)))}")
            at = _script_problem(lang, raw)
            if at is not None:
                found[SCRIPT].add(place, f"{where} {_excerpt(raw, at)}")
    for key, ids in ids_of.items():
        if len(ids) > 1:
            shown = ", ".join(map(str, sorted(ids)[:4])) + (", ..." if len(ids) > 4 else "")
            found[SHARED].add(place, f"{first[key]} ids {shown}: {_excerpt(key)}")


def _check_images(split: str, files: Mapping[str, Sequence[Any]], found: dict[str, Finding]) -> None:
    """Duplicate file_paths and single-image people of one split, over its language files (usually aligned)."""
    dups: dict[str, int] = {}
    singles: dict[int, str] = {}
    for entries in files.values():
        counts = Counter(_fields(e)[0] for e in entries)
        for fp, n in counts.items():
            if n > 1:
                dups[fp] = max(dups.get(fp, 0), n)
        images: dict[int, set[str]] = {}
        for e in entries:
            fp, pid, _ = _fields(e)
            images.setdefault(pid, set()).add(fp)
        singles.update({pid: next(iter(fps)) for pid, fps in images.items() if len(fps) == 1})
    for fp, n in dups.items():
        found[DUP_IMAGES].add(split, f"{split} {fp} x{n}")
    for pid, fp in sorted(singles.items()):
        found[SINGLE].add(split, f"{split} id {pid} ({fp})")


def _lengths(texts: list[str], tokenizer: Any) -> np.ndarray:
    """Token count of each text with ``<s>`` ``</s>``, untruncated (tokenizer batch calls), or whitespace words."""
    if tokenizer is None:
        return np.array([len(t.split()) for t in texts], dtype=np.int64)
    unique = list(dict.fromkeys(texts))  # templated and shared captions are tokenized once
    counts: dict[str, int] = {}
    for s in range(0, len(unique), TOKENIZE_CHUNK):
        chunk = unique[s:s + TOKENIZE_CHUNK]
        ids = tokenizer(chunk, return_attention_mask=False, verbose=False)["input_ids"]
        counts.update(zip(chunk, map(len, ids)))
    return np.array([counts[t] for t in texts], dtype=np.int64)


def _length_finding(lang: str, texts: list[tuple[str, str]], tokenizer: Any, text_length: int | None) -> Finding:
    """Mean, 95th percentile and count over ``text_length`` of one language's captions."""
    lengths = _lengths([t for _, t in texts], tokenizer)
    unit = "tokens (with <s> </s>)" if tokenizer is not None else "words (no tokenizer: whitespace words)"
    f = Finding(f"caption length ({lang})", level=INFO)
    if not len(lengths):
        f.detail = "no captions"
        return f
    f.detail = f"mean {lengths.mean():.1f}, p95 {int(np.percentile(lengths, 95, method='higher'))} {unit}"
    if text_length is not None:
        for i in np.flatnonzero(lengths > text_length):
            where, text = texts[i]
            f.add(lang, f"{where} {lengths[i]}: {_excerpt(text)}")
        f.detail += f"; {f.count:,} of {len(lengths):,} over text_length {text_length}, cut there"
    return f


def audit_entries(entries_by_split_lang: Mapping[str, Mapping[str, Sequence[Any]]], tokenizer: Any = None,
                  text_length: int | None = None, clean: Callable[[str], str] | None = None) -> AuditReport:
    """Audit in-memory entries ``{split: {lang: [Entry or {"file_path", "id", "captions"} dict]}}``.

    ``clean`` is the run's caption cleaning (default: upstream's, not cut to a number of words,
    so that words over ``text_length`` count); ``tokenizer`` (a Hugging Face tokenizer) measures
    lengths in tokens, else in whitespace words.
    """
    start = time.perf_counter()
    clean = clean or clean_caption
    found = {name: Finding(name) for name in WARNING_NAMES}
    found[SINGLE] = Finding(SINGLE, level=INFO)
    texts: dict[str, list[tuple[str, str]]] = {}
    files = captions = 0
    for split, by_lang in entries_by_split_lang.items():
        for lang, entries in by_lang.items():
            bucket = texts.setdefault(lang, [])
            before = len(bucket)
            _check_captions(f"{split}/{lang}", lang, entries, clean, found, bucket)
            files, captions = files + 1, captions + len(bucket) - before
        _check_images(split, by_lang, found)
    lengths = [_length_finding(lang, t, tokenizer, text_length) for lang, t in texts.items()]
    return AuditReport([*found.values(), *lengths], files, captions, time.perf_counter() - start)


def audit(cfg: Config, files: Iterable[tuple[str, str]], tokenizer: Any = None) -> AuditReport:
    """Audit the annotation files ``(split, lang)`` of ``cfg`` (those ``--check`` read), cleaned and
    tokenized as the run does (``tokenizer``: the run's, built from ``cfg.text_encoder`` if None)."""
    from data.annotations import load_language
    from data.text import clean_for

    start = time.perf_counter()
    by: dict[str, dict[str, list[Any]]] = {}
    for split, lang in files:
        by.setdefault(split, {})[lang] = load_language(cfg, split, lang)
    if tokenizer is None:
        from model.text import build_tokenizer

        tokenizer = build_tokenizer(cfg.text_encoder)
    report = audit_entries(by, tokenizer, cfg.experiment.text_length, clean_for(cfg))
    return replace(report, seconds=time.perf_counter() - start)


def _places(f: Finding) -> str:
    return ", ".join(f"{p} {n:,}" for p, n in f.by_place.items())


def format_audit(report: AuditReport) -> str:
    """A header, one line per finding that found something (with up to 3 examples), the rest on one line."""
    n = len(report.warnings)
    lines = [f"data audit: {report.files} files, {report.captions:,} captions, "
             f"{n} warning{'s' if n != 1 else ''} ({report.seconds:.1f} s)"]
    clear = []
    for f in report.findings:
        if f.detail:
            line = f"  {f.name}: {f.detail}"
        elif f.count:
            line = f"  {f.level}: {f.name}: {f.count:,} ({_places(f)})"
            line += f": {NOTES[f.name]}" if f.name in NOTES else ""
        else:
            clear.append(f.name)
            continue
        if f.examples:
            line += ", e.g. " + "; ".join(f.examples)
        lines.append(line)
    if clear:
        lines.append("  no findings: " + ", ".join(clear))
    return "\n".join(lines)
