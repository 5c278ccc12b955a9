"""Reference levels of report.md: chance and the reference rankers beside the model's metrics,
so that a reader can tell how much of a figure the model has learned.

Chance is computed from the relevance counts alone (:func:`chance_levels`); the reference
rankers' metrics come from ``reference_levels.json`` next to the annotations (the synthetic
generator writes one; :func:`read_levels`).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from data.annotations import REFERENCE_FILE  # written next to the annotations

if TYPE_CHECKING:
    from data.datasets import EvalData
    from engine.evaluate import EvalResult

SUMMARY_METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def chance_levels(gallery_pids: torch.Tensor, query_pids: torch.Tensor) -> dict[str, float]:
    """Expected metrics (percent) of a uniformly random ranking, from the relevance counts alone.

    A query with n of the G gallery images relevant: Rank-k = 1 - C(G-n, k) / C(G, k);
    AP = H_G / G + (n - 1)(G - H_G) / (G (G - 1)) (H_G the harmonic number; from
    E[rel_j rel_k] over pairs of positions); INP = sum over the last relevant position m of
    (n / m) C(m-1, n-1) / C(G, n). Averaged over the queries that have a relevant image.
    """
    g = len(gallery_pids)
    counts = [int(n) for n in (query_pids[:, None] == gallery_pids[None, :]).sum(1).tolist() if n > 0]
    if not counts:
        raise ValueError("no query has a relevant gallery image")
    harmonic = sum(1.0 / j for j in range(1, g + 1))

    def rank_k(n: int, k: int) -> float:
        return 1.0 - math.comb(g - n, min(k, g)) / math.comb(g, min(k, g))

    def ap(n: int) -> float:
        return harmonic / g + ((n - 1) * (g - harmonic) / (g * (g - 1)) if g > 1 else 0.0)

    def inp(n: int) -> float:
        return sum(n / m * math.comb(m - 1, n - 1) for m in range(n, g + 1)) / math.comb(g, n)

    per_n = {n: {"R1": rank_k(n, 1), "R5": rank_k(n, 5), "R10": rank_k(n, 10), "mAP": ap(n), "mINP": inp(n)}
             for n in set(counts)}
    return {key: 100.0 * sum(per_n[n][key] for n in counts) / len(counts) for key in SUMMARY_METRICS}


REFERENCE_NAMES = {  # key in reference_levels.json -> row name, in the order shown
    "colours_only": "colours only (ranker reading the stated colours, not what wears them)",
    "ceiling": "ceiling (attribute-perfect ranker)",
}


def read_levels(reference_dir: str | os.PathLike | None, split: str) -> dict[str, dict[str, float]]:
    """The reference rankers' metrics for ``split`` from ``reference_dir/reference_levels.json`` ({} if none)."""
    if reference_dir is None:
        return {}
    path = Path(reference_dir) / REFERENCE_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get(split, {})


def reference_table(results: dict[str, EvalResult], sets: dict[str, EvalData],
                    levels: dict[str, dict[str, float]] | None) -> list[str]:
    """Per language: chance, the reference rankers (when known), the model before (ITC only) and after re-ranking.

    Puts the model's figures on a scale: near the chance row the model has learned
    nothing; the colour-only row is what reading the colour words alone would give; the
    ceiling row is what reading every stated attribute correctly would give.
    """
    head = ["| language | ranking | " + " | ".join(SUMMARY_METRICS) + " |", "|" + "---|" * (2 + len(SUMMARY_METRICS))]
    known = [(name, levels[key]) for key, name in REFERENCE_NAMES.items() if levels and key in levels]
    rows = []
    for lang, r in results.items():
        rows_of = [("chance (random order)", chance_levels(sets[lang].gallery_pids, sets[lang].query_pids)), *known]
        if r.itc_metrics is not None:
            rows_of += [("model, ITC similarity only", r.itc_metrics), ("model, re-ranked (ITM)", r.metrics)]
        else:
            rows_of.append(("model", r.metrics))
        rows += [f"| {lang} | {name} | " + " | ".join(f"{m[k]:.2f}" for k in SUMMARY_METRICS) + " |"
                 for name, m in rows_of]
    return head + rows
