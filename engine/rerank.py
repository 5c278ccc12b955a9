"""Top-k re-ranking with the fusion encoder and the ITM head."""
from __future__ import annotations

import torch

from engine.amp import autocast_for


@torch.no_grad()
def rerank_topk(model, text_batches: list[tuple[torch.Tensor, torch.Tensor]], topk: torch.Tensor,
                gallery_embeds: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """ITM scores [Q, k] of each query against its k candidate images.

    ``text_batches`` holds (embeddings, mask) of consecutive query batches; ``topk[q]``
    are gallery indices into ``gallery_embeds``. Each query's caption is paired with its
    candidates in slices of ``batch_size`` pairs.
    """
    scores = torch.empty(topk.shape, device=device)
    q = 0
    for embeds, mask in text_batches:
        for e, m in zip(embeds, mask):
            cand = topk[q]
            for s in range(0, len(cand), batch_size):
                idx = cand[s:s + batch_size]
                n = len(idx)
                with autocast_for(device):
                    out = model.itm_score(e.expand(n, -1, -1), m.expand(n, -1), gallery_embeds[idx])
                scores[q, s:s + n] = out.float()
            q += 1
    return scores
