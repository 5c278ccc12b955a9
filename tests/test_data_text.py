"""Caption cleaning, token truncation (whole characters only) and MLM masking statistics."""
from __future__ import annotations

import numpy as np
import pytest

from data.text import IGNORE_INDEX, clean_caption, mask_tokens, tokenize
from tests.data_fixtures import synthetic_root, tokenizer  # noqa: F401
from utils.config import Mlm

SAMPLES = {
    "en": ("A man, wearing a RED t-shirt; black shoes!", "a man wearing a red t shirt black shoes"),
    "ch": ("一个男人，穿着红色T恤、黑色鞋子。（背着包）", "一个男人 穿着红色t恤 黑色鞋子 背着包"),
    "fr": ("Un homme porte un t-shirt « rouge » et des chaussures noires...", "un homme porte un t shirt rouge et des chaussures noires"),
    "de": ("Ein Mann trägt ein ROTES T-Shirt, schwarze Schuhe.", "ein mann trägt ein rotes t shirt schwarze schuhe"),
}


@pytest.mark.parametrize("lang", list(SAMPLES))
def test_clean_caption(lang):
    raw, expected = SAMPLES[lang]
    assert clean_caption(raw) == expected


def test_clean_caption_full_width_and_symbols():
    assert clean_caption("ＡＢＣ，ｄｅｆ！\u3000ｇ") == "abc def g"
    assert clean_caption("白色+黑色/灰色~「裙子」") == "白色 黑色 灰色 裙子"
    assert clean_caption(" …。，！ ") == ""


def _captions(root):
    import json
    out = {}
    for lang in ("en", "ch", "fr", "de"):
        entries = json.loads((root / "annos" / f"train_reid_{lang}.json").read_text(encoding="utf-8"))
        out[lang] = [clean_caption(c) for e in entries for c in e["captions"]]
    return out


@pytest.mark.parametrize("lang", ["en", "ch", "fr", "de"])
def test_truncation_by_tokens_keeps_whole_characters(synthetic_root, tokenizer, lang):  # noqa: F811
    caps = _captions(synthetic_root)[lang]
    for length in (6, 9, 13):
        ids, mask = tokenize(tokenizer, caps, length)
        assert ids.shape == mask.shape == (len(caps), length)
        for row, m, cap in zip(ids.tolist(), mask.tolist(), caps):
            real = row[:sum(m)]
            assert real[0] == tokenizer.bos_token_id and real[-1] == tokenizer.eos_token_id
            assert tokenizer.unk_token_id not in real
            assert all(t == tokenizer.pad_token_id for t in row[sum(m):])
            text = tokenizer.decode(real, skip_special_tokens=True)
            assert "\ufffd" not in text
            assert text and cap.startswith(text), (cap, text)  # a prefix of whole characters


def test_long_chinese_caption_is_truncated_to_text_length(tokenizer):  # noqa: F811
    cap = clean_caption("一个身材苗条的男人留着黑色短发，穿着红色条纹T恤，下身穿着蓝色长裤，背着一个黑色双肩包。" * 3)
    ids, mask = tokenize(tokenizer, [cap], 20)
    assert int(mask.sum()) == 20 and ids[0, -1].item() == tokenizer.eos_token_id


def _mask_many(tokenizer, caps, mlm, n=3000):  # noqa: F811
    rng = np.random.default_rng(0)
    enc = tokenizer(caps, truncation=True, max_length=40)["input_ids"]
    enc = [enc[i % len(enc)] for i in range(n)]
    return enc, [mask_tokens(ids, rng, mlm, tokenizer) for ids in enc]


def test_mlm_masking_statistics(synthetic_root, tokenizer):  # noqa: F811
    caps = [c for cs in _captions(synthetic_root).values() for c in cs]
    mlm = Mlm()
    special = set(tokenizer.all_special_ids)
    enc, results = _mask_many(tokenizer, caps, mlm)
    kinds = {"mask": 0, "random": 0, "same": 0}
    for ids, (out, labels) in zip(enc, results):
        real = [t for t in ids if t not in special]
        n = min(mlm.max_masks, max(1, int(len(real) * mlm.mask_prob + 0.5)))
        masked = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
        assert len(masked) == n
        assert len(out) == len(labels) == len(ids)
        for i, (a, b, lab) in enumerate(zip(ids, out, labels)):
            if a in special:
                assert lab == IGNORE_INDEX and b == a
            elif lab == IGNORE_INDEX:
                assert b == a
            else:
                assert lab == a
                kind = "mask" if b == tokenizer.mask_token_id else ("same" if b == a else "random")
                kinds[kind] += 1
                if kind == "random":
                    assert b not in special and 0 <= b < len(tokenizer)
    total = sum(kinds.values())
    assert total > 20000
    assert abs(kinds["mask"] / total - 0.8) < 0.015
    assert abs(kinds["random"] / total - 0.1) < 0.01
    assert abs(kinds["same"] / total - 0.1) < 0.01


def test_mlm_spans_and_short_captions(tokenizer):  # noqa: F811
    ids = [0] + list(range(10, 40)) + [2]
    mlm = Mlm(mask_prob=0.4, max_masks=12, skipgram_prb=1.0, skipgram_size=3)
    rng = np.random.default_rng(1)
    runs = []
    for _ in range(200):
        _, labels = mask_tokens(ids, rng, mlm, tokenizer)
        pos = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
        assert len(pos) == 12 and 0 not in pos and len(ids) - 1 not in pos
        runs.append(sum(1 for a, b in zip(pos, pos[1:]) if b == a + 1))
    assert np.mean(runs) > 6  # spans of 2-3 make most masked tokens adjacent
    out, labels = mask_tokens([0, 15, 2], rng, mlm, tokenizer)
    assert labels[1] == 15 and labels[0] == labels[2] == IGNORE_INDEX
    assert mask_tokens([0, 2], rng, mlm, tokenizer) == ([0, 2], [IGNORE_INDEX, IGNORE_INDEX])
