"""Fusion encoder: BERT-style layers with bidirectional self-attention and cross-attention.

Parameter names follow BERT/X2-VLM (``attention.self.query``, ``crossattention.output.LayerNorm``,
``intermediate.dense``, ``output.LayerNorm`` ...), so pretrained fusion layers load by name.
Queries can be text tokens (image as context: ITM, MLM, re-ranking) or image tokens (text
as context: D-MIM). The cross-attention keys/values of every layer depend only on the
context, so they can be computed once per image with :meth:`FusionEncoder.cross_kv` and
reused for many captions; the result is identical to passing the context itself.

The layers attend with ``F.scaled_dot_product_attention``, which returns no weights; for
explanations (engine/explain.py), :meth:`FusionEncoder.cross_attention_maps` runs the same
layers in eval mode and also returns each layer's cross-attention probabilities, written
out with a matmul and a softmax beside the unchanged SDPA path.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from transformers import XLMRobertaConfig

KV = tuple[torch.Tensor, torch.Tensor]


def padding_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] (1/True = token) -> boolean SDPA mask [B, 1, 1, L] (True = attend)."""
    if mask is None:
        return None
    return mask.bool()[:, None, None, :]


class AttentionProjections(nn.Module):
    """query/key/value projections and the multi-head attention itself."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def kv(self, context: torch.Tensor) -> KV:
        """Keys and values [B, heads, Lk, head_dim] of ``context``."""
        return self._split(self.key(context)), self._split(self.value(context))

    def forward(self, x: torch.Tensor, kv: KV, attn_mask: torch.Tensor | None) -> torch.Tensor:
        q = self._split(self.query(x))
        k, v = kv
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        b, h, n, dh = out.shape
        return out.transpose(1, 2).reshape(b, n, h * dh)

    def probabilities(self, x: torch.Tensor, kv: KV, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """The attention weights [B, heads, Lq, Lk] that ``forward`` applies without dropout:
        softmax(Q K^T / sqrt(head_dim)), masked positions (False in ``attn_mask``) at 0.

        Written out because SDPA returns no weights; ``forward`` itself stays on SDPA so
        training and evaluation numbers do not change.
        """
        q = self._split(self.query(x))
        k, _ = kv
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        return scores.softmax(dim=-1)


class AddNorm(nn.Module):
    """Post-LN residual: LayerNorm(x + dropout(dense(y)))."""

    def __init__(self, d_in: int, hidden: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(y)))


class Attention(nn.Module):
    """BERT attention block: ``self`` (projections + attention) and ``output`` (dense + LN)."""

    def __init__(self, config: XLMRobertaConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.self = AttentionProjections(h, config.num_attention_heads, config.attention_probs_dropout_prob)
        self.output = AddNorm(h, h, config.hidden_dropout_prob, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, kv: KV, attn_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, kv, attn_mask), x)


class Intermediate(nn.Module):
    def __init__(self, config: XLMRobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class FusionLayer(nn.Module):
    """Self-attention over the queries, cross-attention to the context, feed-forward."""

    def __init__(self, config: XLMRobertaConfig) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.crossattention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = AddNorm(config.intermediate_size, config.hidden_size,
                              config.hidden_dropout_prob, config.layer_norm_eps)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor | None, cross_kv: KV,
                cross_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, self.attention.self.kv(x), self_mask)
        x = self.crossattention(x, cross_kv, cross_mask)
        return self.output(self.intermediate(x), x)

    def forward_with_cross_attention(self, x: torch.Tensor, self_mask: torch.Tensor | None, cross_kv: KV,
                                     cross_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s output and its cross-attention probabilities [B, heads, Lq, Lk] (eval mode)."""
        x = self.attention(x, self.attention.self.kv(x), self_mask)
        probs = self.crossattention.self.probabilities(x, cross_kv, cross_mask)
        x = self.crossattention(x, cross_kv, cross_mask)
        return self.output(self.intermediate(x), x), probs


class FusionEncoder(nn.Module):
    """``num_layers`` fusion layers (the top of the published 18-layer text stack)."""

    def __init__(self, config: XLMRobertaConfig, num_layers: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(FusionLayer(config) for _ in range(num_layers))
        self.grad_checkpointing = False
        self._init_std = config.initializer_range
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:
        """BERT initialisation, as the text layers get from Hugging Face."""
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=self._init_std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def cross_kv(self, context: torch.Tensor) -> list[KV]:
        """Per-layer cross-attention keys/values of ``context``; reusable across queries."""
        return [layer.crossattention.self.kv(context) for layer in self.layer]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None, cross_kv: list[KV] | None = None) -> torch.Tensor:
        """Fuse ``hidden`` [B, L, D] (padding ``mask`` [B, L] or None) with ``context``.

        Give either ``context`` [B, Lk, D] or its precomputed ``cross_kv``; ``context_mask``
        [B, Lk] (None = every context token is valid).
        """
        if (context is None) == (cross_kv is None):
            raise ValueError("pass exactly one of context and cross_kv")
        if cross_kv is None:
            cross_kv = self.cross_kv(context)
        self_mask, cross_mask = padding_mask(mask), padding_mask(context_mask)
        for layer, kv in zip(self.layer, cross_kv):
            if self.grad_checkpointing and self.training:
                hidden = torch.utils.checkpoint.checkpoint(layer, hidden, self_mask, kv, cross_mask,
                                                           use_reentrant=False)
            else:
                hidden = layer(hidden, self_mask, kv, cross_mask)
        return hidden

    @torch.no_grad()
    def cross_attention_maps(self, hidden: torch.Tensor, mask: torch.Tensor | None, context: torch.Tensor,
                             context_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Cross-attention probabilities [B, heads, L, Lk] of every layer, first layer first,
        when ``hidden`` (padding ``mask``) reads ``context`` (``context_mask``) as in ``forward``.

        Eval mode only: with dropout on, SDPA would not apply these weights.
        """
        if self.training:
            raise RuntimeError("cross_attention_maps needs eval mode (dropout changes the weights applied)")
        self_mask, cross_mask = padding_mask(mask), padding_mask(context_mask)
        maps = []
        for layer, kv in zip(self.layer, self.cross_kv(context)):
            hidden, probs = layer.forward_with_cross_attention(hidden, self_mask, kv, cross_mask)
            maps.append(probs)
        return maps

    def first_token_pairs(self, hidden: torch.Tensor, mask: torch.Tensor, pair_text: torch.Tensor,
                          pair_kv: Callable[[int], KV]) -> torch.Tensor:
        """Token 0 of the output [P, D] for P (text, context) pairs, without repeated work.

        Pair p fuses text ``hidden[pair_text[p]]`` ([U, L, D], padding ``mask`` [U, L]) with
        a context whose cross-attention keys/values for layer i are ``pair_kv(i)``
        ([P, heads, Lk, head_dim] each; a callable so the caller chooses how to gather them
        from a cache, and only one layer's copy is alive at a time). Equal to
        ``forward(hidden[pair_text], mask[pair_text], cross_kv=[pair_kv(i) ...])[:, 0]``, but
        cheaper for re-ranking, where one caption meets many images: the first layer's
        self-attention sees only the text, so it runs once per text, and the last layer
        computes only token 0, the only output the ITM head reads.
        """
        self_mask = None if bool(mask.all()) else padding_mask(mask)
        last = len(self.layer) - 1
        x = hidden
        for i, layer in enumerate(self.layer):
            queries = x[:, :1] if i == last else x
            x = layer.attention(queries, layer.attention.self.kv(x), self_mask)
            if i == 0:
                x = x[pair_text]
                self_mask = None if self_mask is None else self_mask[pair_text]
            x = layer.crossattention(x, pair_kv(i), None)
            x = layer.output(layer.intermediate(x), x)
        return x[:, 0]


__all__ = ["FusionEncoder", "FusionLayer", "padding_mask"]
