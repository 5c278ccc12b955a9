"""Caption text: Unicode-aware cleaning, token-level truncation and MLM masking (SPEC §4.3, §6)."""
from __future__ import annotations

import unicodedata

import numpy as np
import torch

from utils.config import Mlm

IGNORE_INDEX = -100


def clean_caption(text: str) -> str:
    """Lower-case, turn every punctuation/symbol character into a space, collapse whitespace.

    Unicode categories (P* punctuation, S* symbols) cover ASCII, full-width (，。！) and
    Chinese (、「」《》) marks alike, so the same rule works for en/ch/fr/de. NFKC first maps
    full-width letters and digits to their ASCII forms.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    chars = [" " if unicodedata.category(c)[0] in "PS" else c for c in text]
    return " ".join("".join(chars).split())


def tokenize(tokenizer, texts: list[str], text_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``<s> tokens </s>`` truncated by tokens to ``text_length`` and padded to it.

    Truncating token ids (not words) is what keeps Chinese captions, which have no spaces,
    within the length; SentencePiece pieces are whole characters, so no character is cut.
    """
    enc = tokenizer(texts, max_length=text_length, truncation=True, padding="max_length", return_tensors="pt")
    return enc["input_ids"].long(), enc["attention_mask"].long()


def token_ids(tokenizer, texts: list[str], text_length: int) -> list[list[int]]:
    """Unpadded ids of each text, truncated by tokens to ``text_length`` (specials included)."""
    return tokenizer(texts, max_length=text_length, truncation=True)["input_ids"]


def mask_tokens(ids: list[int], rng: np.random.Generator, mlm: Mlm, tokenizer) -> tuple[list[int], list[int]]:
    """Whole-span MLM masking of one caption; returns (masked ids, labels with -100 elsewhere).

    n = min(max_masks, max(1, round(len * mask_prob))) real tokens are masked, where len
    counts non-special tokens and round is half-up. Spans start at a random unmasked token;
    with probability ``skipgram_prb`` a span is 2..skipgram_size tokens, else 1. Each
    masked token becomes ``<mask>`` (80%), a random non-special token (10%) or stays (10%).
    Special tokens are never masked nor drawn as replacements (an upstream defect).
    """
    special = set(tokenizer.all_special_ids)
    real = [i for i, t in enumerate(ids) if t not in special]
    out, labels = list(ids), [IGNORE_INDEX] * len(ids)
    if not real:
        return out, labels
    n = min(mlm.max_masks, max(1, int(len(real) * mlm.mask_prob + 0.5)), len(real))
    chosen: set[int] = set()
    while len(chosen) < n:
        free = [k for k in range(len(real)) if real[k] not in chosen]
        start = free[rng.integers(len(free))]
        span = int(rng.integers(2, mlm.skipgram_size + 1)) if mlm.skipgram_size >= 2 and rng.random() < mlm.skipgram_prb else 1
        for k in range(start, min(start + span, len(real))):
            if len(chosen) < n:
                chosen.add(real[k])
    vocab = len(tokenizer)
    for pos in sorted(chosen):
        labels[pos] = ids[pos]
        u = rng.random()
        if u < 0.8:
            out[pos] = tokenizer.mask_token_id
        elif u < 0.9:
            out[pos] = _random_token(rng, vocab, special)
    return out, labels


def _random_token(rng: np.random.Generator, vocab: int, special: set[int]) -> int:
    while True:
        t = int(rng.integers(vocab))
        if t not in special:
            return t
