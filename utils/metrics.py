"""Retrieval metrics (Rank-k, mAP, mINP) computed from ranked relevance, vectorised.

Definitions (docs/design.md): for one query and its full ranking of the gallery,
Rank-k = 1 if a relevant image is among the first k; AP = mean over relevant positions
p of (relevant images in the first p) / p; INP = (#relevant) / (position of the last
relevant image). Positions are 1-based. Queries with no relevant gallery image are
excluded (and counted). Results are percentages averaged over queries.
"""
from __future__ import annotations

import torch

RANKS = (1, 5, 10)


def per_query_stats(matches: torch.Tensor) -> dict[str, torch.Tensor]:
    """``matches[q, i]`` is True when the i-th ranked image of query q is relevant.

    Returns, per query: ``first`` (1-based position of the first hit; 0 if none),
    ``ap``, ``inp`` and ``valid`` (has at least one relevant image).
    """
    m = matches.bool()
    mf = m.float()
    n_rel = mf.sum(1)
    valid = n_rel > 0
    pos = torch.arange(1, m.shape[1] + 1, device=m.device, dtype=torch.float32)
    cum = mf.cumsum(1)
    ap = (cum / pos * mf).sum(1) / n_rel.clamp(min=1)
    last = torch.where(m, pos, torch.zeros_like(pos)).amax(1)
    inp = n_rel / last.clamp(min=1)
    first = torch.where(valid, m.float().argmax(1) + 1, torch.zeros_like(n_rel, dtype=torch.long))
    return {"first": first.long(), "ap": ap, "inp": inp, "valid": valid}


def summarize(stats: dict[str, torch.Tensor], ranks: tuple[int, ...] = RANKS) -> dict[str, float]:
    """Average per-query stats over valid queries into percentages."""
    valid = stats["valid"]
    n = int(valid.sum())
    if n == 0:
        raise ValueError("no query has a relevant gallery image")
    first = stats["first"][valid]
    out = {f"R{k}": float((first <= k).float().mean() * 100) for k in ranks}
    out["mAP"] = float(stats["ap"][valid].mean() * 100)
    out["mINP"] = float(stats["inp"][valid].mean() * 100)
    out["num_queries"] = n
    skipped = int((~valid).sum())
    if skipped:
        out["skipped_queries"] = skipped
    return out


def cmc_curve(stats: dict[str, torch.Tensor], max_rank: int = 20) -> list[float]:
    """Rank-k in percent for k = 1..max_rank (cumulative matching characteristic)."""
    first = stats["first"][stats["valid"]]
    return [float((first <= k).float().mean() * 100) for k in range(1, max_rank + 1)]


def concat_stats(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}
