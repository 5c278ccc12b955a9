"""Text encoder built from a Hugging Face folder: config values, weights, tokenizer."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from model.text import build_text_encoder, build_tokenizer


def test_config_values_and_layer_count(tiny_text_dir) -> None:
    enc = build_text_encoder(str(tiny_text_dir), 2)
    assert enc.config.num_hidden_layers == 2 and len(enc.encoder.layer) == 2
    assert enc.config.layer_norm_eps == 1e-5
    assert enc.embeddings.LayerNorm.eps == 1e-5
    assert enc.config.pad_token_id == 1


def test_loads_roberta_prefixed_weights(tiny_text_dir, tmp_path) -> None:
    folder = tmp_path / "xlmr"
    shutil.copytree(tiny_text_dir, folder)
    source = build_text_encoder(str(folder), 4)  # the folder's config has 4 layers
    weights = {f"roberta.{k}": torch.randn_like(v) for k, v in source.state_dict().items()}
    weights["lm_head.bias"] = torch.zeros(10)
    save_file(weights, str(folder / "model.safetensors"))
    enc = build_text_encoder(str(folder), 2)
    for key, value in enc.state_dict().items():
        assert torch.equal(value, weights[f"roberta.{key}"]), key


def test_tokenizer_special_ids_and_padding_mask(tiny_text_dir) -> None:
    tok = build_tokenizer(str(tiny_text_dir))
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1
    enc = build_text_encoder(str(tiny_text_dir), 2).eval()
    batch = tok(["a man wearing a red shirt", "a bag"], padding=True, return_tensors="pt")
    out = enc(batch["input_ids"], batch["attention_mask"])
    alone = tok(["a bag"], return_tensors="pt")
    n = alone["input_ids"].shape[1]
    torch.testing.assert_close(out[1, :n], enc(alone["input_ids"], alone["attention_mask"])[0], atol=1e-5, rtol=1e-5)
    # bidirectional: the first token sees the last one
    ids = batch["input_ids"][:1].clone()
    changed = ids.clone()
    changed[0, -2] = 5 if int(ids[0, -2]) != 5 else 6
    mask = batch["attention_mask"][:1]
    assert not torch.allclose(enc(ids, mask)[0, 0], enc(changed, mask)[0, 0])


def _json_only_copy(text_dir, folder):
    """``text_dir``'s tokenizer saved by transformers: a folder with tokenizer.json and no SentencePiece model."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True).save_pretrained(str(folder))
    assert (folder / "tokenizer.json").is_file() and not (folder / "sentencepiece.bpe.model").exists()
    return folder


@pytest.mark.parametrize("layout", ["sentencepiece.bpe.model", "tokenizer.json"])
def test_tokenizer_matches_sentencepiece_on_every_bmp_code_point(tiny_text_dir, tmp_path, layout) -> None:
    """The released code's tokenizer: SentencePiece pieces, ids + 1 (fairseq offset), ``<unk>`` 3,
    ``<s>`` 0, ``</s>`` 2.

    Every BMP code point but the surrogates, alone, inside a word, between spaces, and in
    runs of 64 consecutive code points. U+0085 (NEL) is the one the fast tokenizer's
    default ``WhitespaceSplit`` got wrong (a word break instead of ``<unk>``).
    """
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tiny_text_dir / "sentencepiece.bpe.model"))
    folder = tiny_text_dir if layout == "sentencepiece.bpe.model" else _json_only_copy(tiny_text_dir, tmp_path / "json")
    tok = build_tokenizer(str(folder))
    code_points = [c for c in range(0x10000) if not 0xD800 <= c <= 0xDFFF]
    texts = [form.format(chr(c)) for form in ("{}", "a{}b", " {} ") for c in code_points]
    texts += ["".join(map(chr, code_points[i:i + 64])) for i in range(0, len(code_points), 64)]
    texts += ["a\x85b", "a \x85 b", "\x85", "a\x85\x85b", "  a\tb\u3000c  d  "]
    expected = [[0] + [3 if i == sp.unk_id() else i + 1 for i in ids] + [2] for ids in sp.encode(texts)]
    got = tok(texts)["input_ids"]
    differ = [t for t, g, e in zip(texts, got, expected) if g != e]
    assert not differ, f"{len(differ)} texts differ from SentencePiece, first {differ[:5]!r}"
    assert tok.unk_token_id in tok("a\x85b")["input_ids"]  # NEL is no word break
