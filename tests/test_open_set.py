"""engine.open_set: thresholds at a false-match rate, and the open-set trials against brute force."""
from __future__ import annotations

import pytest
import torch

from engine.open_set import (Reranked, extra_candidates, impostor_candidates, open_set_chunk, open_set_summary,
                             open_set_table, rates, threshold_at)


def test_threshold_leaves_the_stated_share_of_impostors_above_it():
    impostor = torch.randperm(200).float()
    for fmr, above in ((0.01, 2), (0.05, 10), (0.10, 20), (0.333, 66)):
        t = threshold_at(impostor, fmr)
        assert int((impostor > t).sum()) == above
    assert threshold_at(impostor, 0.999) == 0.0  # all but the lowest above it
    stats = {"cosine_best": torch.tensor([0.9, 0.8, 0.3]), "cosine_right": torch.tensor([True, False, True]),
             "cosine_absent": torch.tensor([0.5, 0.85, 0.1])}
    assert rates(stats, "cosine", 0.7) == pytest.approx((100 / 3, 100 / 3))  # only query 0 is right and above


def test_extra_candidates_are_the_impostor_top_k_images_not_yet_scored():
    g_pids = torch.tensor([0, 1, 2, 0, 3, 4, 5, 6, 7, 8])
    sim = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.6, 0.0, 0.0, 0.0, 0.0, 0.0],
                        [0.0, 0.9, 0.8, 0.0, 0.7, 0.0, 0.0, 0.0, 0.0, 0.0]])
    q_pids = torch.tensor([0, 8])  # query 0: its person is image 0 (and 3); query 1: not in the top 3
    topk = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :3]
    extra, valid = extra_candidates(sim, g_pids[None, :] == q_pids[:, None], topk)
    assert extra.shape == (2, 1) and extra[0, 0] == 4 and valid.tolist() == [[True], [False]]


def test_a_gallery_left_smaller_than_k_adds_none_of_the_persons_images():
    g_pids = torch.tensor([7, 9, 8, 7])
    sim = torch.tensor([[0.1, 0.9, 0.8, 0.2]])
    same = g_pids[None, :] == torch.tensor([[7]])
    topk = torch.tensor([[1, 2, 3]])
    extra, valid = extra_candidates(sim, same, topk)
    assert not (valid & same.gather(1, extra)).any()  # image 0 (person 7) is no impostor
    scores = torch.tensor([[-1.0, -2.0, 5.0]])  # the person's own image 3 scores highest
    got = open_set_chunk(sim, g_pids, torch.tensor([7]), Reranked(topk, scores, extra, torch.full(extra.shape, 6.0),
                                                                    valid))
    assert got["itm_absent"].tolist() == [-1.0] and got["itm_best"].tolist() == [5.0]
    alone = open_set_chunk(torch.tensor([[0.3, 0.4]]), torch.tensor([7, 7]), torch.tensor([7]), None)
    assert alone["cosine_absent"].tolist() == [float("-inf")]  # nobody else: no false match possible


def brute_force(sim, table, g_pids, q_pids, k):
    """The trials by definition: rank, re-rank the top k by ``table``, once with and once without the person."""
    out = {key: [] for key in ("cosine_best", "cosine_right", "cosine_absent", "itm_best", "itm_right", "itm_absent")}
    for q in range(sim.shape[0]):
        for absent in (False, True):
            keep = [g for g in range(sim.shape[1]) if not (absent and g_pids[g] == q_pids[q])]
            by_cos = sorted(keep, key=lambda g: (-float(sim[q, g]), g))
            top = by_cos[:k]
            by_itm = sorted(range(len(top)), key=lambda j: (-float(table[q, top[j]]), j))
            first_cos, first_itm = by_cos[0], top[by_itm[0]]
            if absent:
                out["cosine_absent"].append(float(sim[q, first_cos]))
                out["itm_absent"].append(float(table[q, first_itm]))
            else:
                out["cosine_best"].append(float(sim[q, first_cos]))
                out["cosine_right"].append(bool(g_pids[first_cos] == q_pids[q]))
                out["itm_best"].append(float(table[q, first_itm]))
                out["itm_right"].append(bool(g_pids[first_itm] == q_pids[q]))
    return out


@pytest.mark.parametrize("k", [1, 3, 6, 10, 12])
def test_open_set_chunk_equals_brute_force(k):
    g = torch.Generator().manual_seed(k)
    g_pids = torch.arange(12) // 3  # 4 people x 3 images
    q_pids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    sim = torch.randn(10, 12, generator=g)
    sim[torch.arange(10), q_pids * 3] += 1.5  # the person often near the top, so the impostor top k needs extras
    table = torch.randn(10, 12, generator=g)  # stands in for the ITM head
    topk = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k]
    scores = table.gather(1, topk)
    for chunk in (3, 10):  # the padding of impostor_candidates across chunks changes nothing
        extra, valid = impostor_candidates(sim, torch.eye(12), g_pids, q_pids, topk, range(0, 10, chunk), chunk)
        got = open_set_chunk(sim, g_pids, q_pids, Reranked(topk, scores, extra, table.gather(1, extra), valid))
        want = brute_force(sim, table, g_pids, q_pids, k)
        for key, values in want.items():
            assert got[key].tolist() == pytest.approx(values), key
    assert set(open_set_chunk(sim, g_pids, q_pids, None)) == {"cosine_best", "cosine_right", "cosine_absent"}


def test_summary_and_table():
    g = torch.Generator().manual_seed(0)
    n = 400
    stats = {"cosine_best": torch.rand(n, generator=g) + 0.5, "cosine_right": torch.rand(n, generator=g) < 0.8,
             "cosine_absent": torch.rand(n, generator=g)}
    summary = open_set_summary(stats)
    assert [r["target_fmr"] for r in summary["cosine"]] == [1.0, 5.0, 10.0]
    for row in summary["cosine"]:
        assert row["fmr"] <= row["target_fmr"] and row["fmr"] > row["target_fmr"] - 100 / n
        assert row["tmr"] == pytest.approx(rates(stats, "cosine", row["threshold"])[0])
    assert "itm" not in summary
    lines = open_set_table({"en": summary, "ch": {}})
    assert lines[2] == "| language | score | TMR @ 1% FMR (T) | TMR @ 5% FMR (T) | TMR @ 10% FMR (T) |"
    row = summary["cosine"][1]
    assert f"{row['tmr']:.2f} ({row['threshold']:.3f})" in lines[4] and lines[4].startswith("| en | cosine |")
    assert open_set_table({"en": {}}) == []
