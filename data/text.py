"""Caption text: cleaning, token-level truncation and MLM masking (docs/design.md, docs/fidelity.md)."""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from utils.config import Config, Mlm

IGNORE_INDEX = -100

_UPSTREAM_REMOVED = re.compile(r'[.!"()*#:;~]')
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def _keep_words(text: str, max_words: int | None) -> str:
    words = text.split(" ")
    return text if max_words is None or len(words) <= max_words else " ".join(words[:max_words])


def clean_caption(text: str, max_words: int | None = None) -> str:
    """Upstream ``pre_caption``, step for step: the cleaning the published numbers used.

    Lower-case; only the ten characters ``. ! " ( ) * # : ; ~`` become spaces (commas,
    hyphens, apostrophes, ``?``, ``/`` and Chinese ``，。`` reach the tokenizer); runs of two
    or more whitespace characters become one space; trailing newlines, then spaces at both
    ends, are stripped; at most ``max_words`` space-separated words are kept.
    """
    text = _WHITESPACE_RUN.sub(" ", _UPSTREAM_REMOVED.sub(" ", text.lower()))
    return _keep_words(text.rstrip("\n").strip(" "), max_words)


def clean_caption_unicode(text: str, max_words: int | None = None) -> str:
    """Option ``data.unicode_cleaning``: every Unicode punctuation/symbol character becomes a space.

    Categories P* and S* cover ASCII, full-width (，。！) and Chinese (、「」《》) marks alike,
    so one rule fits en/ch/fr/de; NFKC first maps full-width letters and digits to ASCII.
    Whitespace is collapsed and at most ``max_words`` words are kept.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    chars = [" " if unicodedata.category(c)[0] in "PS" else c for c in text]
    return _keep_words(" ".join("".join(chars).split()), max_words)


def has_words(text: str) -> bool:
    """Whether a caption keeps any word once all punctuation and symbols are gone.

    The validity rule for annotation files and queries; it is the stricter of the two
    cleanings, so a file accepted here works with either.
    """
    return bool(clean_caption_unicode(text))


def clean_for(cfg: Config) -> Callable[[str], str]:
    """The caption cleaning this config uses, cut to ``experiment.text_length`` words like upstream."""
    fn = clean_caption_unicode if cfg.data.unicode_cleaning else clean_caption
    return partial(fn, max_words=cfg.experiment.text_length)


def tokenize(tokenizer, texts: list[str], text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<s> tokens </s>`` truncated by tokens to ``text_length`` and padded to it.

    Truncating token ids (not words) is what keeps Chinese captions, which have no spaces,
    within the length; SentencePiece pieces are whole characters, so no character is cut.
    """
    enc = tokenizer(texts, max_length=text_length, truncation=True, padding="max_length", return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


def tokenize_caption(tokenizer, cfg: Config, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One caption as evaluation reads it: cleaned (:func:`clean_for`), tokenized and cut to its
    own length, without padding: ids and mask [1, L] (search, explanations)."""
    ids, mask = tokenize(tokenizer, [clean_for(cfg)(text)], cfg.experiment.text_length)
    length = int(mask.sum())
    return ids[:, :length], mask[:, :length]


def token_ids(tokenizer, texts: list[str], text_length: int) -> list[list[int]]:
    """Unpadded ids of each text, truncated by tokens to ``text_length`` (specials included)."""
    return tokenizer(texts, max_length=text_length, truncation=True)["input_ids"]


def mask_tokens(ids: list[int], rng: np.random.Generator, mlm: Mlm, tokenizer) -> tuple[list[int], list[int]]:
    """Span MLM masking of one caption as upstream draws it; returns (masked ids, labels, -100 elsewhere).

    n = min(max_masks, max(1, round(len * mask_prob))) with Python's round (half to even)
    and len counting ``<s>``/``</s>``. Candidate positions are 1..len-1 (``</s>`` can be
    masked, ``<s>`` not), visited in random order; an unmasked one starts a span of
    randint(2, skipgram_size) positions with probability skipgram_prb, else of one, and a
    span stops at the first non-candidate position (overlaps simply re-mask). Once n or
    more are masked, a random n of them are kept. Each becomes ``<mask>`` (80%), a token
    drawn from the whole vocabulary (10%) or stays (10%). With ``mlm.protect_special``
    only non-special tokens count, are candidates and are drawn as replacements.
    """
    out, labels = list(ids), [IGNORE_INDEX] * len(ids)
    special = set(tokenizer.all_special_ids) if mlm.protect_special else set()
    if mlm.protect_special:
        candidates = [i for i, t in enumerate(ids) if t not in special]
        length = len(candidates)
    else:
        candidates, length = list(range(1, len(ids))), len(ids)
    if not candidates:
        return out, labels
    n = min(mlm.max_masks, max(1, round(length * mlm.mask_prob)))
    allowed, masked = set(candidates), set()
    for start in rng.permutation(candidates).tolist():
        if len(masked) >= n:
            break
        if start in masked:
            continue
        span = 1
        if mlm.skipgram_prb > 0 and mlm.skipgram_size >= 2 and rng.random() < mlm.skipgram_prb:
            span = int(rng.integers(2, mlm.skipgram_size + 1))
        for pos in range(start, start + span):
            if pos not in allowed:
                break
            masked.add(pos)
    chosen = sorted(masked)
    if len(chosen) > n:
        chosen = sorted(rng.permutation(chosen)[:n].tolist())
    vocab = len(tokenizer)
    for pos in chosen:
        labels[pos] = ids[pos]
        if rng.random() < 0.8:
            out[pos] = tokenizer.mask_token_id
        elif rng.random() < 0.5:
            out[pos] = _random_token(rng, vocab, special)
    return out, labels


def _random_token(rng: np.random.Generator, vocab: int, excluded: set[int]) -> int:
    """A uniform token id of the vocabulary outside ``excluded`` (empty upstream: specials can come)."""
    while True:
        t = int(rng.integers(vocab))
        if t not in excluded:
            return t
