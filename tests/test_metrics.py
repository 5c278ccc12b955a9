"""Metrics against brute-force implementations of the definitions (docs/design.md, evaluation)."""
from __future__ import annotations

import torch

from engine.evaluate import apply_rerank, similarity_order
from utils.metrics import per_query_stats, summarize


def brute_force(sim: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor) -> dict[str, float]:
    r1 = r5 = r10 = ap_sum = inp_sum = 0.0
    n = 0
    for q in range(sim.shape[0]):
        # ties broken by gallery index (stable descending sort)
        ranking = sorted(range(sim.shape[1]), key=lambda g: (-float(sim[q, g]), g))
        rel = [bool(g_pids[g] == q_pids[q]) for g in ranking]
        if not any(rel):
            continue
        n += 1
        first = rel.index(True) + 1
        r1 += first <= 1
        r5 += first <= 5
        r10 += first <= 10
        hits, precisions = 0, []
        for pos, r in enumerate(rel, start=1):
            if r:
                hits += 1
                precisions.append(hits / pos)
        ap_sum += sum(precisions) / len(precisions)
        last = max(i for i, r in enumerate(rel, start=1) if r)
        inp_sum += sum(rel) / last
    return {"R1": 100 * r1 / n, "R5": 100 * r5 / n, "R10": 100 * r10 / n, "mAP": 100 * ap_sum / n, "mINP": 100 * inp_sum / n}


def test_metrics_match_brute_force_with_ties_and_multiple_relevant():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        q, n_gal = 40, 60
        sim = torch.randint(0, 6, (q, n_gal), generator=g).float()  # many ties
        g_pids = torch.randint(0, 8, (n_gal,), generator=g)
        q_pids = torch.randint(0, 9, (q,), generator=g)  # id 8 has no gallery image: excluded
        order = similarity_order(sim)
        got = summarize(per_query_stats(g_pids[order] == q_pids[:, None]))
        want = brute_force(sim, q_pids, g_pids)
        for k, v in want.items():
            assert abs(got[k] - v) < 1e-4, (trial, k, got[k], v)
        assert got["num_queries"] == int((q_pids < 8).sum())


def test_perfect_and_worst_rankings():
    matches = torch.tensor([[True, True, False, False], [False, False, True, True]])
    st = per_query_stats(matches)
    assert torch.allclose(st["ap"], torch.tensor([1.0, (1 / 3 + 2 / 4) / 2]))
    assert torch.allclose(st["inp"], torch.tensor([1.0, 0.5]))
    assert st["first"].tolist() == [1, 3]


def test_rerank_changes_only_order_inside_top_k():
    g = torch.Generator().manual_seed(1)
    sim = torch.randn(30, 50, generator=g)
    order = similarity_order(sim)
    k = 7
    scores = torch.randn(30, k, generator=g)
    new = apply_rerank(order, k, scores)
    assert torch.equal(new[:, k:], order[:, k:])
    assert torch.equal(new[:, :k].sort(1).values, order[:, :k].sort(1).values)
    # inside the top k the order follows the ITM scores
    inv = {(q, int(i)): float(scores[q, j]) for q in range(30) for j, i in enumerate(order[q, :k])}
    for q in range(30):
        vals = [inv[(q, int(i))] for i in new[q, :k]]
        assert vals == sorted(vals, reverse=True)
