"""Fusion layers: equal to a plain-PyTorch reference, bidirectional, reusable cross k/v."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import XLMRobertaConfig

from model.bi_irra import BiIRRA
from model.fusion import FusionEncoder
from tests.model_fixtures import tiny_config

CONFIG = XLMRobertaConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, layer_norm_eps=1e-5)


def reference_attention(x, ctx, ctx_mask, q_lin, k_lin, v_lin, heads):
    """Multi-head attention written out with matmuls; ``ctx_mask`` [B, Lk] 1 = token."""
    b, lq, d = x.shape
    dh = d // heads

    def split(t):
        return t.view(b, -1, heads, dh).permute(0, 2, 1, 3)

    q, k, v = split(x @ q_lin.weight.T + q_lin.bias), split(ctx @ k_lin.weight.T + k_lin.bias), \
        split(ctx @ v_lin.weight.T + v_lin.bias)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    scores = scores.masked_fill(ctx_mask[:, None, None, :] == 0, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.permute(0, 2, 1, 3).reshape(b, lq, d)


def layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def reference_layer(layer, x, mask, ctx, ctx_mask, heads):
    s, c = layer.attention, layer.crossattention
    a = reference_attention(x, x, mask, s.self.query, s.self.key, s.self.value, heads)
    x = layer_norm(x + a @ s.output.dense.weight.T + s.output.dense.bias, s.output.LayerNorm)
    a = reference_attention(x, ctx, ctx_mask, c.self.query, c.self.key, c.self.value, heads)
    x = layer_norm(x + a @ c.output.dense.weight.T + c.output.dense.bias, c.output.LayerNorm)
    h = layer.intermediate.dense(x)
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return layer_norm(x + h @ layer.output.dense.weight.T + layer.output.dense.bias, layer.output.LayerNorm)


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 32, generator=g)
    ctx = torch.randn(3, 5, 32, generator=g)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    ctx_mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [1] * 5])
    return x, mask, ctx, ctx_mask


def test_matches_plain_reference() -> None:
    torch.manual_seed(0)
    enc = FusionEncoder(CONFIG, 2).eval()
    x, mask, ctx, ctx_mask = inputs()
    out = enc(x, mask, context=ctx, context_mask=ctx_mask)
    ref = x
    for layer in enc.layer:
        ref = reference_layer(layer, ref, mask, ctx, ctx_mask, CONFIG.num_attention_heads)
    valid = mask.bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_self_attention_is_bidirectional_and_ignores_padding() -> None:
    torch.manual_seed(0)
    enc = FusionEncoder(CONFIG, 2).eval()
    x, mask, ctx, ctx_mask = inputs()
    out = enc(x, mask, context=ctx, context_mask=ctx_mask)
    later = x.clone()
    later[0, 6] += 1.0  # last real token of sample 0
    assert not torch.allclose(enc(later, mask, context=ctx, context_mask=ctx_mask)[0, 0], out[0, 0])
    padded = x.clone()
    padded[1, 5] += 1.0  # a padding position of sample 1
    padded_ctx = ctx.clone()
    padded_ctx[1, 4] += 1.0  # a padding position of sample 1's context
    out2 = enc(padded, mask, context=padded_ctx, context_mask=ctx_mask)
    torch.testing.assert_close(out2[1, :4], out[1, :4], atol=1e-6, rtol=0)


def test_image_tokens_as_queries_without_mask() -> None:
    torch.manual_seed(0)
    enc = FusionEncoder(CONFIG, 1).eval()
    image = torch.randn(2, 9, 32)
    text, text_mask = torch.randn(2, 4, 32), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    out = enc(image, None, context=text, context_mask=text_mask)
    ref = reference_layer(enc.layer[0], image, torch.ones(2, 9), text, text_mask, CONFIG.num_attention_heads)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_precomputed_cross_kv_equals_the_plain_reference() -> None:
    """Keys/values from ``cross_kv``, passed in place of the context, give what the written-out
    reference computes from the context itself, for each of two contexts (so they are used,
    not ignored); and the same as passing the context."""
    torch.manual_seed(0)
    enc = FusionEncoder(CONFIG, 2).eval()
    x, mask, ctx, _ = inputs()
    every_token = torch.ones(ctx.shape[:2])
    valid = mask.bool()
    outputs = []
    for context in (ctx, torch.randn_like(ctx)):
        kv = enc.cross_kv(context)
        assert len(kv) == 2 and all(k.shape == v.shape == (3, 4, 5, 8) for k, v in kv)  # [B, heads, Lk, head_dim]
        got = enc(x, mask, cross_kv=kv)
        ref = x
        for layer in enc.layer:
            ref = reference_layer(layer, ref, mask, context, every_token, CONFIG.num_attention_heads)
        torch.testing.assert_close(got[valid], ref[valid], atol=1e-5, rtol=1e-5)
        assert torch.equal(got, enc(x, mask, context=context))
        outputs.append(got)
    assert not torch.allclose(outputs[0][valid], outputs[1][valid])
    with pytest.raises(ValueError):
        enc(x, mask)
    with pytest.raises(ValueError):
        enc(x, mask, context=ctx, cross_kv=enc.cross_kv(ctx))


def test_itm_logits_with_image_kv_are_identical(tiny_text_dir, tmp_path) -> None:
    torch.manual_seed(0)
    model = BiIRRA.from_config(tiny_config(tiny_text_dir, tmp_path)).eval()
    with torch.no_grad():
        image = model.encode_image(torch.randn(2, 3, 32, 16))
        ids = torch.tensor([[0, 5, 9, 7, 2], [0, 8, 2, 1, 1]])
        mask = (ids != 1).long()
        text = model.encode_text(ids, mask)
        direct = model.itm_logits(text, mask, image_embeds=image)
        kv = model.image_kv(image)
        cached = model.itm_logits(text, mask, image_kv=kv)
        # one image's cached k/v reused for both captions (re-ranking pattern)
        one = model.itm_logits(text, mask, image_kv=[(k[:1].expand(2, -1, -1, -1), v[:1].expand(2, -1, -1, -1))
                                                    for k, v in kv])
        one_direct = model.itm_logits(text, mask, image_embeds=image[:1].expand(2, -1, -1))
    assert direct.shape == (2, 2)
    assert torch.equal(direct, cached)
    torch.testing.assert_close(one, one_direct, atol=0, rtol=0)
