"""ITC / SDM values by hand, hard-negative sampling, and the multi-process ITC convention."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from model.losses import itc_loss, sample_negatives, sdm_loss

IMG = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
TXT = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]
PIDS = [0, 0, 1]
TEMP = 0.5


def hand_soft_ce(rows: list[list[float]], cols: list[list[float]]) -> float:
    total = 0.0
    for i, r in enumerate(rows):
        logits = [sum(a * b for a, b in zip(r, c)) / TEMP for c in cols]
        log_z = math.log(sum(math.exp(v) for v in logits))
        same = [j for j in range(len(cols)) if PIDS[j] == PIDS[i]]
        total += -sum((logits[j] - log_z) / len(same) for j in same)
    return total / len(rows)


def test_itc_equals_hand_computation_with_repeated_ids() -> None:
    expected = 0.5 * (hand_soft_ce(IMG, TXT) + hand_soft_ce(TXT, IMG))
    got = itc_loss(torch.tensor(IMG), torch.tensor(TXT), torch.tensor(PIDS), torch.tensor(TEMP))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.26752, abs=1e-5)  # the example's value, checked with numpy


def test_sdm_is_kl_to_identity_distribution() -> None:
    img, txt, pids = torch.tensor(IMG), torch.tensor(TXT), torch.tensor(PIDS)
    labels = (pids[:, None] == pids[None]).float()
    labels = labels / labels.sum(1, keepdim=True)
    expected = 0.0
    for logits in (img @ txt.T / TEMP, txt @ img.T / TEMP):
        p = logits.softmax(1)
        expected += (p * (p.log() - (labels + 1e-8).log())).sum(1).mean().item()
    assert sdm_loss(img, txt, pids, torch.tensor(TEMP)).item() == pytest.approx(expected, rel=1e-6)


def test_hard_negatives_never_same_person() -> None:
    torch.manual_seed(0)
    pids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    sim = torch.randn(8, 8)
    sim.fill_diagonal_(5.0)
    for _ in range(200):
        idx, valid = sample_negatives(sim, pids, pids, torch.tensor(0.07))
        assert valid.all()
        assert (pids[idx] != pids).all()


def test_hard_negatives_follow_similarity() -> None:
    pids = torch.tensor([0, 1, 2])
    sim = torch.tensor([[1.0, 0.9, -0.9], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    counts = torch.zeros(3)
    for _ in range(300):
        idx, _ = sample_negatives(sim, pids, pids, torch.tensor(0.07))
        counts[idx[0]] += 1
    assert counts[0] == 0 and counts[1] > 290


def test_hard_negative_weights_are_smoothed_as_upstream() -> None:
    """Upstream adds 1e-5 to softmax(sim / temp) before zeroing positives: two negatives whose
    own softmax weights underflow (1e-13, 1e-26) are then drawn about equally often."""
    torch.manual_seed(0)
    pids = torch.tensor([0, 1, 2])
    sim = torch.tensor([[0.0, -30.0, -60.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    draws = torch.stack([sample_negatives(sim, pids, pids, torch.tensor(1.0))[0][0] for _ in range(400)])
    assert set(draws.tolist()) == {1, 2}
    assert 150 < int((draws == 2).sum()) < 250


def test_rows_without_other_person_get_no_negative() -> None:
    same = torch.zeros(4, dtype=torch.long)
    idx, valid = sample_negatives(torch.randn(4, 4), same, same, torch.tensor(0.07))
    assert idx.numel() == 0 and not valid.any()
    pids = torch.tensor([0, 0, 0, 1])  # every row has someone else: row 3 must draw from 0-2
    idx, valid = sample_negatives(torch.randn(4, 4), pids, pids, torch.tensor(0.07))
    assert valid.all() and (pids[idx] != pids).all()


def test_underflowing_similarities_still_give_a_negative() -> None:
    pids = torch.tensor([0, 1])
    sim = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    idx, valid = sample_negatives(sim, pids, pids, torch.tensor(0.001))
    assert valid.all() and idx.tolist() == [1, 0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, img: torch.Tensor, txt: torch.Tensor, pids: torch.Tensor,
            with_grad: bool, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = img.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    i, t = img[sl].clone().requires_grad_(), txt[sl].clone().requires_grad_()
    loss = itc_loss(i, t, pids[sl], torch.tensor(0.1), gather_with_grad=with_grad)
    loss.backward()
    out[rank] = (loss.item(), i.grad.clone(), t.grad.clone())
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("with_grad", [False, True], ids=["upstream-local-slice", "gather_with_grad"])
def test_two_process_itc_against_single_process_on_concatenated_batch(with_grad: bool) -> None:
    """Upstream (default): each process computes the global loss and keeps only the local
    slice of its own gradient, i.e. exactly the single-process gradient of its rows, which
    DDP's averaging then scales by 1/2. gather_with_grad: local rows, summed gradient, so
    the DDP average (grad / 2) equals the single-process gradient."""
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=1), F.normalize(torch.randn(6, 8), dim=1)
    pids = torch.tensor([0, 1, 1, 2, 0, 3])
    i, t = img.clone().requires_grad_(), txt.clone().requires_grad_()
    single = itc_loss(i, t, pids, torch.tensor(0.1))
    single.backward()
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), img, txt, pids, with_grad, out), nprocs=2, join=True)
    scale = 2 if with_grad else 1
    if with_grad:
        assert (out[0][0] + out[1][0]) / 2 == pytest.approx(single.item(), rel=1e-5)
    else:
        assert out[0][0] == pytest.approx(single.item(), rel=1e-6) and out[1][0] == pytest.approx(single.item(), rel=1e-6)
    for rank in range(2):
        sl = slice(rank * 3, rank * 3 + 3)
        torch.testing.assert_close(out[rank][1] / scale, i.grad[sl], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out[rank][2] / scale, t.grad[sl], atol=1e-6, rtol=1e-5)
