"""Text encoder built from a Hugging Face folder: config values, weights, tokenizer."""
from __future__ import annotations

import shutil

import torch
from safetensors.torch import save_file

from model.text import build_text_encoder, build_tokenizer
from tests.model_fixtures import tiny_text_dir  # noqa: F401 - fixture


def test_config_values_and_layer_count(tiny_text_dir) -> None:  # noqa: F811
    enc = build_text_encoder(str(tiny_text_dir), 2)
    assert enc.config.num_hidden_layers == 2 and len(enc.encoder.layer) == 2
    assert enc.config.layer_norm_eps == 1e-5
    assert enc.embeddings.LayerNorm.eps == 1e-5
    assert enc.config.pad_token_id == 1


def test_loads_roberta_prefixed_weights(tiny_text_dir, tmp_path) -> None:  # noqa: F811
    folder = tmp_path / "xlmr"
    shutil.copytree(tiny_text_dir, folder)
    source = build_text_encoder(str(folder), 4)  # the folder's config has 4 layers
    weights = {f"roberta.{k}": torch.randn_like(v) for k, v in source.state_dict().items()}
    weights["lm_head.bias"] = torch.zeros(10)
    save_file(weights, str(folder / "model.safetensors"))
    enc = build_text_encoder(str(folder), 2)
    for key, value in enc.state_dict().items():
        assert torch.equal(value, weights[f"roberta.{key}"]), key


def test_tokenizer_special_ids_and_padding_mask(tiny_text_dir) -> None:  # noqa: F811
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
