"""Caption cleaning (upstream and Unicode option), token truncation and MLM masking as upstream draws it."""
from __future__ import annotations

import random
import unicodedata

import numpy as np
import pytest

from data.text import IGNORE_INDEX, clean_caption, clean_caption_unicode, clean_for, has_words, mask_tokens, tokenize
from utils.config import Config, Mlm

# raw caption -> (upstream pre_caption output, data.unicode_cleaning output)
SAMPLES = {
    "en": ("A man, wearing a RED t-shirt; black shoes!",
           "a man, wearing a red t-shirt black shoes", "a man wearing a red t shirt black shoes"),
    "ch": ("一个男人，穿着红色T恤、黑色鞋子。（背着包）",
           "一个男人，穿着红色t恤、黑色鞋子。（背着包）", "一个男人 穿着红色t恤 黑色鞋子 背着包"),
    "fr": ("Un homme porte un t-shirt « rouge » et des chaussures noires...",
           "un homme porte un t-shirt « rouge » et des chaussures noires",
           "un homme porte un t shirt rouge et des chaussures noires"),
    "de": ("Ein Mann trägt ein ROTES T-Shirt, schwarze Schuhe.",
           "ein mann trägt ein rotes t-shirt, schwarze schuhe", "ein mann trägt ein rotes t shirt schwarze schuhe"),
}


@pytest.mark.parametrize("lang", list(SAMPLES))
def test_clean_caption_upstream_and_unicode(lang):
    raw, upstream, unicode = SAMPLES[lang]
    assert clean_caption(raw) == upstream
    assert clean_caption_unicode(raw) == unicode


def test_only_the_ten_characters_are_removed():
    assert clean_caption('a.b!c"d(e)f*g#h:i;j~k') == "a b c d e f g h i j k"
    kept = "he's 5'10, a/b? c-d 衬衫，裤子。"
    assert clean_caption(kept) == kept
    assert clean_caption('"He\'s tall" (very); OK?') == "he's tall very ok?"


def test_whitespace_as_pre_caption():
    # runs of 2+ whitespace become one space, a single tab stays, trailing newlines and edge spaces go
    assert clean_caption("  Two  spaces\tand\ttabs \n\n") == "two spaces\tand\ttabs"
    assert clean_caption("end.\n") == "end"
    assert clean_caption(" ... ") == ""


def test_word_cut():
    assert clean_caption("One two. three four five", max_words=3) == "one two three"
    assert clean_caption("a, b, c, d", max_words=2) == "a, b,"
    assert clean_caption("one two", max_words=2) == "one two"
    chinese = "一个身材苗条的男人留着黑色短发，穿着红色条纹t恤"
    assert clean_caption(chinese, max_words=3) == chinese  # no spaces: one word
    assert clean_caption_unicode("One, two; three four", max_words=2) == "one two"


def test_unicode_option_full_width_and_symbols():
    assert clean_caption_unicode("ＡＢＣ，ｄｅｆ！\u3000ｇ") == "abc def g"
    assert clean_caption_unicode("白色+黑色/灰色~「裙子」") == "白色 黑色 灰色 裙子"
    assert clean_caption_unicode(" …。，！ ") == ""
    assert clean_caption(" …。，！ ") == "…。，！"


def test_has_words_uses_the_strict_cleaning():
    assert not has_words("。，！?") and not has_words(" ,.!? ") and has_words("a,")


def test_clean_for_follows_the_config():
    cfg = Config()
    cfg.experiment.text_length = 4
    raw = "A man, in a T-shirt. With shoes"
    assert clean_for(cfg)(raw) == "a man, in a"
    cfg.data.unicode_cleaning = True
    assert clean_for(cfg)(raw) == "a man in a"


def _captions(root):
    import json
    out = {}
    for lang in ("en", "ch", "fr", "de"):
        entries = json.loads((root / "annos" / f"train_reid_{lang}.json").read_text(encoding="utf-8"))
        out[lang] = [clean_caption(c) for e in entries for c in e["captions"]]
    return out


@pytest.mark.parametrize("lang", ["en", "ch", "fr", "de"])
def test_truncation_by_tokens_keeps_whole_characters(synthetic_root, tokenizer, lang):
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
            # a prefix of whole characters of the caption as the tokenizer normalises it
            # (NFKC, as xlm-roberta's SentencePiece: a Chinese "，" reads back as ",")
            assert text and unicodedata.normalize("NFKC", cap).startswith(text), (cap, text)


def test_long_chinese_caption_is_truncated_to_text_length(tokenizer):
    cap = clean_caption("一个身材苗条的男人留着黑色短发，穿着红色条纹T恤，下身穿着蓝色长裤，背着一个黑色双肩包。" * 3)
    ids, mask = tokenize(tokenizer, [cap], 20)
    assert int(mask.sum()) == 20 and ids[0, -1].item() == tokenizer.eos_token_id


class StubTokenizer:
    """20 ids: <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 19; ordinary tokens 4..18."""
    all_special_ids = [0, 1, 2, 3, 19]
    mask_token_id = 19

    def __len__(self) -> int:
        return 20


def _caption(length: int) -> list[int]:
    """``<s>`` + ordinary tokens + ``</s>``, ``length`` ids in all."""
    return [0] + [4 + k % 15 for k in range(length - 2)] + [2]


def _masked(labels: list[int]) -> list[int]:
    return [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]


# n = min(max_masks, max(1, round(len * mask_prob))) for len = 2..40, <s> and </s> counted, half to even
COUNTS = {
    (0.4, 12): [1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 6, 6, 6, 7, 7, 8, 8, 8, 9, 9, 10, 10, 10, 11, 11, 12, 12, 12,
                12, 12, 12, 12, 12, 12, 12, 12, 12],
    (0.5, 100): [1, 2, 2, 2, 3, 4, 4, 4, 5, 6, 6, 6, 7, 8, 8, 8, 9, 10, 10, 10, 11, 12, 12, 12, 13, 14, 14, 14, 15,
                 16, 16, 16, 17, 18, 18, 18, 19, 20, 20],
    (0.25, 100): [1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 6, 6, 7, 7, 7, 8, 8, 8, 8, 8,
                  9, 9, 9, 10, 10, 10],
}


@pytest.mark.parametrize("prob, max_masks", list(COUNTS))
def test_mask_count_counts_specials_and_rounds_half_to_even(prob, max_masks):
    mlm = Mlm(mask_prob=prob, max_masks=max_masks)
    rng = np.random.default_rng(0)
    got = [len(_masked(mask_tokens(_caption(n), rng, mlm, StubTokenizer())[1])) for n in range(2, 41)]
    assert got == COUNTS[(prob, max_masks)]


def test_mask_count_with_protect_special_counts_ordinary_tokens_only():
    mlm = Mlm(protect_special=True)
    rng = np.random.default_rng(0)
    got = {n: len(_masked(mask_tokens(_caption(n), rng, mlm, StubTokenizer())[1])) for n in (3, 4, 9, 12, 40)}
    assert got == {3: 1, 4: 1, 9: 3, 12: 4, 40: 12}  # round(0.4 * (n - 2)), at least 1, at most 12


def test_end_token_can_be_masked_start_token_never():
    mlm, tok = Mlm(), StubTokenizer()
    ids = _caption(5)
    end = first = 0
    for seed in range(2000):
        labels = mask_tokens(ids, np.random.default_rng(seed), mlm, tok)[1]
        first += labels[0] != IGNORE_INDEX
        end += labels[4] != IGNORE_INDEX
        assert [labels[i] for i in _masked(labels)] == [ids[i] for i in _masked(labels)]
    assert first == 0 and 700 <= end <= 1300  # 2 of the 4 candidates 1..4 are masked
    assert mask_tokens([0, 2], np.random.default_rng(0), mlm, tok)[1] == [IGNORE_INDEX, 2]  # empty caption


def test_random_replacements_come_from_the_whole_vocabulary():
    mlm, tok = Mlm(), StubTokenizer()
    ids = _caption(30)
    drawn = set()
    for seed in range(3000):
        out, labels = mask_tokens(ids, np.random.default_rng(seed), mlm, tok)
        drawn |= {out[i] for i in _masked(labels) if out[i] not in (ids[i], tok.mask_token_id)}
    assert {0, 1, 2, 3} <= drawn and drawn <= set(range(19))  # special ids included


def test_protect_special_never_touches_special_tokens():
    mlm, tok = Mlm(protect_special=True), StubTokenizer()
    ids = [0, 4, 5, 3, 6, 7, 8, 2]  # <unk> in the middle is special too
    drawn = set()
    for seed in range(3000):
        out, labels = mask_tokens(ids, np.random.default_rng(seed), mlm, tok)
        for i in (0, 3, 7):
            assert labels[i] == IGNORE_INDEX and out[i] == ids[i]
        drawn |= {out[i] for i in _masked(labels) if out[i] not in (ids[i], tok.mask_token_id)}
    assert drawn and not drawn & set(tok.all_special_ids)
    assert mask_tokens([0, 2], np.random.default_rng(0), mlm, tok) == ([0, 2], [IGNORE_INDEX, IGNORE_INDEX])


def test_spans_stop_at_the_end_and_use_the_given_generator():
    mlm, tok = Mlm(mask_prob=1.0, max_masks=12, skipgram_prb=1.0, skipgram_size=3), StubTokenizer()
    for seed in range(200):
        labels = mask_tokens([0, 4, 5, 2], np.random.default_rng(seed), mlm, tok)[1]
        assert _masked(labels) == [1, 2, 3]  # n = 4 > 3 candidates: all of them, no error past the end
    np.random.seed(0)
    random.seed(0)
    a = mask_tokens(_caption(30), np.random.default_rng(5), Mlm(), tok)
    np.random.seed(1)
    random.seed(1)
    assert mask_tokens(_caption(30), np.random.default_rng(5), Mlm(), tok) == a
    assert mask_tokens(_caption(30), np.random.default_rng(6), Mlm(), tok) != a


def test_spans_make_masked_tokens_adjacent():
    ids = _caption(32)
    rng = np.random.default_rng(1)
    runs = {}
    for prb in (0.0, 1.0):
        mlm = Mlm(mask_prob=0.4, max_masks=12, skipgram_prb=prb, skipgram_size=3)
        adjacent = []
        for _ in range(300):
            pos = _masked(mask_tokens(ids, rng, mlm, StubTokenizer())[1])
            assert len(pos) == 12 and 0 not in pos
            adjacent.append(sum(1 for a, b in zip(pos, pos[1:]) if b == a + 1))
        runs[prb] = float(np.mean(adjacent))
    assert runs[1.0] > 6 and runs[0.0] < 5.5, runs  # spans of 2-3 vs single tokens


def _mask_many(tokenizer, caps, mlm, n=3000):
    rng = np.random.default_rng(0)
    enc = tokenizer(caps, truncation=True, max_length=40)["input_ids"]
    enc = [enc[i % len(enc)] for i in range(n)]
    return enc, [mask_tokens(ids, rng, mlm, tokenizer) for ids in enc]


def test_mlm_masking_statistics(synthetic_root, tokenizer):
    caps = [c for cs in _captions(synthetic_root).values() for c in cs]
    mlm = Mlm()
    enc, results = _mask_many(tokenizer, caps, mlm)
    kinds = {"mask": 0, "random": 0, "same": 0}
    for ids, (out, labels) in zip(enc, results):
        masked = _masked(labels)
        assert len(masked) == min(mlm.max_masks, max(1, round(len(ids) * mlm.mask_prob)))
        assert len(out) == len(labels) == len(ids) and 0 not in masked
        for i, (a, b, lab) in enumerate(zip(ids, out, labels)):
            if lab == IGNORE_INDEX:
                assert b == a
            else:
                assert lab == a
                kind = "mask" if b == tokenizer.mask_token_id else ("same" if b == a else "random")
                kinds[kind] += 1
                assert 0 <= b < len(tokenizer)
    total = sum(kinds.values())
    assert total > 20000
    assert abs(kinds["mask"] / total - 0.8) < 0.015
    assert abs(kinds["random"] / total - 0.1) < 0.01
    assert abs(kinds["same"] / total - 0.1) < 0.01
