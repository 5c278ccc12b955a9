"""Small heads on top of the encoders (ITM / MIM MLPs, the MLM head)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp_head(dim: int, out: int) -> nn.Sequential:
    """X2-VLM head d -> 2d -> LayerNorm -> GELU -> out (keys ``0.*``, ``1.*``, ``3.*`` as upstream)."""
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(), nn.Linear(2 * dim, out))


class MLMTransform(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MLMPredictions(nn.Module):
    def __init__(self, hidden: int, vocab: int, eps: float) -> None:
        super().__init__()
        self.transform = MLMTransform(hidden, eps)
        self.decoder = nn.Linear(hidden, vocab, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x)) + self.bias


class MLMHead(nn.Module):
    """BERT MLM head; names ``predictions.transform.dense``/``LayerNorm``, ``decoder``, ``bias``.

    The decoder may share its weight with the word embeddings (see :meth:`tie`).
    """

    def __init__(self, hidden: int, vocab: int, eps: float) -> None:
        super().__init__()
        self.predictions = MLMPredictions(hidden, vocab, eps)

    def tie(self, word_embeddings: nn.Embedding) -> None:
        self.predictions.decoder.weight = word_embeddings.weight

    def untie(self) -> None:
        self.predictions.decoder.weight = nn.Parameter(self.predictions.decoder.weight.detach().clone())

    def is_tied_to(self, word_embeddings: nn.Embedding) -> bool:
        return self.predictions.decoder.weight is word_embeddings.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


__all__ = ["mlp_head", "MLMHead"]
