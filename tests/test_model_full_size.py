"""The published architecture from config/config.yaml (xlm-roberta-base-shaped config, no weights)."""
from __future__ import annotations

import pytest
import torch

from model import build_model
from model.vision import BeitV2Encoder
from utils.config import load_config

D, FF, VOCAB = 768, 3072, 250002


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(i: int, o: int) -> int:
    return i * o + o


def bert_layer(cross: bool) -> int:
    attention = 3 * linear(D, D) + linear(D, D) + 2 * D
    return attention * (2 if cross else 1) + linear(D, FF) + linear(FF, D) + 2 * D


def beit_block(grid: tuple[int, int]) -> int:
    table = ((2 * grid[0] - 1) * (2 * grid[1] - 1) + 3) * 12
    # norm1, qkv (no bias), q_bias + v_bias, table, proj, norm2, fc1, fc2, gamma_1 + gamma_2
    return 2 * D + D * 3 * D + 2 * D + table + linear(D, D) + 2 * D + linear(D, FF) + linear(FF, D) + 2 * D


@pytest.fixture(scope="module")
def full_model(base_text_dir):
    torch.manual_seed(0)
    cfg = load_config("config/config.yaml", [f"text_encoder={base_text_dir}", "model.resume=", "device=cpu"])
    model, _ = build_model(cfg)
    return model


def test_parameter_counts_match_published_architecture(full_model) -> None:
    m = full_model
    patch_embed = 3 * 16 * 16 * D + D
    beit = patch_embed + D + 12 * beit_block((14, 14)) + 2 * D  # + cls_token, fc_norm
    assert beit == 85_761_984  # timm beitv2_base_patch16_224 with num_classes=0 (~86M)
    assert count(m.vision_encoder) == beit + D  # + mask_token

    embeddings = VOCAB * D + 514 * D + 1 * D + 2 * D
    xlmr = embeddings + 12 * bert_layer(cross=False)
    assert xlmr == 278_043_648 - linear(D, D)  # xlm-roberta-base's published 278M minus its pooler
    assert count(m.text_encoder) == xlmr

    assert len(m.cross_encoder.layer) == 6
    assert count(m.cross_encoder) == 6 * bert_layer(cross=True) == 56_710_656

    assert count(m.vision_proj) == count(m.text_proj) == count(m.tl_text_proj) == linear(D, 256)
    assert count(m.itm_head) == linear(D, 2 * D) + 2 * 2 * D + linear(2 * D, 2)
    assert count(m.mim_head) == linear(D, 2 * D) + 2 * 2 * D + linear(2 * D, D)
    assert m.mlm_head.is_tied_to(m.text_encoder.embeddings.word_embeddings)
    mlm_own = linear(D, D) + 2 * D + VOCAB
    heads = 3 * linear(D, 256) + count(m.itm_head) + count(m.mim_head) + mlm_own + 1  # + temp
    assert count(m) == beit + D + xlmr + 56_710_656 + heads == 424_911_189


def test_structure_matches_published_architecture(full_model) -> None:
    v = full_model.vision_encoder
    assert v.pos_embed is None and len(v.blocks) == 12 and v.grid_size == (14, 14)
    blk = v.blocks[0]
    assert blk.attn.relative_position_bias_table.shape == (27 * 27 + 3, 12)
    assert blk.attn.q_bias is not None and "blocks.0.attn.k_bias" not in dict(v.named_parameters())
    assert blk.gamma_1 is not None and blk.norm1.eps == 1e-6 and v.fc_norm.eps == 1e-6
    assert v.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    t = full_model.text_encoder
    assert t.config.layer_norm_eps == 1e-5 and len(t.encoder.layer) == 12
    assert t.embeddings.word_embeddings.weight.shape == (VOCAB, D)
    layer = full_model.cross_encoder.layer[0]
    assert layer.crossattention.output.LayerNorm.eps == 1e-5
    assert layer.attention.self.heads == 12
    names = set(full_model.state_dict())
    for key in ("cross_encoder.layer.5.crossattention.self.key.weight", "mlm_head.predictions.transform.dense.weight",
                "mlm_head.predictions.transform.LayerNorm.bias", "mlm_head.predictions.bias",
                "vision_encoder.blocks.11.attn.relative_position_bias_table", "temp", "itm_head.3.weight"):
        assert key in names, key


def test_person_reid_resolution_grid() -> None:
    sizes = {"vision_width": D, "patch_size": 16, "depth": 1, "num_heads": 12, "mlp_ratio": 4.0, "drop_path_rate": 0.1, "layer_scale_init": 1e-5}
    enc = BeitV2Encoder(sizes, (384, 128), use_mask_token=False)
    assert enc.grid_size == (24, 8)
    assert enc.blocks[0].attn.relative_position_bias_table.shape == (47 * 15 + 3, 12)
