"""The fast re-ranker and evaluate() against the straightforward computation (fp32, CPU)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from engine.evaluate import apply_rerank, evaluate, rerank_pair_summary, similarity_order, split_query_counts
from engine.rerank import kv_bytes_per_image, rerank_fast, rerank_reference
from model.bi_irra import BiIRRA
from tests.model_fixtures import tiny_config
from utils.metrics import per_query_stats, summarize

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(text_dir, tmp_path, fusion_layers: int = 2) -> BiIRRA:
    torch.manual_seed(0)
    cfg = tiny_config(text_dir, tmp_path, f"text_num_hidden_layers={2 + fusion_layers}")
    model = BiIRRA.from_config(cfg).eval()
    # larger-than-init weights so ITM scores are well separated (ranking comparisons are then exact)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    return model


def captions(model: BiIRRA, lengths: list[int], padded: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings [Q, padded, D] and mask of captions with the given token counts."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.text_encoder.config.vocab_size
    ids = torch.randint(3, vocab, (len(lengths), padded), generator=g)
    mask = (torch.arange(padded)[None] < torch.tensor(lengths)[:, None]).long()
    ids[:, 0] = 0
    ids[mask == 0] = 1
    with torch.no_grad():
        return model.encode_text(ids, mask), mask


def source(embeds: torch.Tensor, mask: torch.Tensor):
    return lambda start, stop: (embeds[start:stop], mask[start:stop])


@pytest.mark.parametrize("fusion_layers", [1, 3])
def test_fast_scores_equal_reference(tiny_text_dir, tmp_path, fusion_layers) -> None:
    model = tiny_model(tiny_text_dir, tmp_path, fusion_layers)
    lengths = [3, 9, 5, 12, 3, 7, 1]  # different lengths; padded to 12 for the reference
    embeds, mask = captions(model, lengths, padded=12)
    g = torch.Generator().manual_seed(1)
    gallery = torch.randn(10, 9, 32, generator=g)
    topk = torch.stack([torch.randperm(10, generator=g)[:6] for _ in lengths])
    topk[0, 1] = topk[0, 0]  # the same image twice in one query's candidates
    topk[2] = topk[1]  # two queries with the same candidates
    want = rerank_reference(model, embeds, mask, topk, gallery, batch_size=4, device=torch.device("cpu"))
    for chunk, batch, budget in [(256, 64, None), (3, 5, None), (2, 7, 1)]:  # budget 1 byte: one image per block
        got = rerank_fast(model, source(embeds, mask), topk, gallery, chunk=chunk, batch_size=batch,
                          device=torch.device("cpu"), kv_budget=budget)
        assert (got - want).abs().max() <= TOL, (chunk, batch, budget)
    assert abs(float(got[0, 0] - got[0, 1])) <= TOL and abs(float(want[0, 0] - want[0, 1])) <= TOL


def test_kv_budget_blocks_compute_each_image_once(tiny_text_dir, tmp_path, monkeypatch) -> None:
    model = tiny_model(tiny_text_dir, tmp_path)
    embeds, mask = captions(model, [4, 6, 2], padded=6)
    gallery = torch.randn(8, 9, 32)
    topk = torch.tensor([[0, 1, 2], [2, 3, 4], [4, 5, 0]])
    calls: list[int] = []
    original = BiIRRA.image_kv
    monkeypatch.setattr(BiIRRA, "image_kv", lambda self, e: calls.append(len(e)) or original(self, e))
    text_calls: list[tuple[int, int]] = []

    def text(start: int, stop: int):
        text_calls.append((start, stop))
        return embeds[start:stop], mask[start:stop]

    per_image = kv_bytes_per_image(model, 9, torch.float32)
    assert per_image == 2 * 2 * 9 * 32 * 4  # layers * (k, v) * tokens * D * fp32
    rerank_fast(model, text, topk, gallery, chunk=2, batch_size=4, device=torch.device("cpu"),
                kv_budget=2 * per_image)
    assert sum(calls) == 6  # images 0..5 once each; 6 and 7 are nobody's candidates
    assert len(text_calls) > 2  # captions are encoded again per block instead


def fake_data(model: BiIRRA, n_gallery: int, lengths: list[int], padded: int, seed: int = 0) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    vocab = model.text_encoder.config.vocab_size
    ids = torch.randint(3, vocab, (len(lengths), padded), generator=g)
    mask = (torch.arange(padded)[None] < torch.tensor(lengths)[:, None]).long()
    ids[:, 0], ids[mask == 0] = 0, 1
    images = torch.randn(n_gallery, 3, 32, 16, generator=g)
    return SimpleNamespace(gallery=TensorDataset(images, torch.arange(n_gallery)),
                           gallery_pids=torch.arange(n_gallery) % 5,
                           query_pids=torch.randint(0, 5, (len(lengths),), generator=g), query_ids=ids, query_mask=mask)


@torch.no_grad()
def reference_evaluate(model: BiIRRA, data, k: int) -> tuple[dict[str, float], torch.Tensor]:
    """The straightforward evaluation: whole similarity matrix, upstream re-ranker, captions padded."""
    images = torch.stack([data.gallery[i][0] for i in range(len(data.gallery))])
    g_embeds = model.encode_image(images)
    t_embeds = model.encode_text(data.query_ids, data.query_mask)
    sim = model.text_feature(t_embeds, target=False) @ model.image_feature(g_embeds).t()
    order = similarity_order(sim)
    scores = rerank_reference(model, t_embeds, data.query_mask, order[:, :k], g_embeds, 8, torch.device("cpu"))
    order = apply_rerank(order, k, scores)
    return summarize(per_query_stats(data.gallery_pids[order] == data.query_pids[:, None])), order


@pytest.mark.parametrize("budget", [None, 1])
def test_evaluate_fast_path_equals_reference(tiny_text_dir, tmp_path, budget) -> None:
    model = tiny_model(tiny_text_dir, tmp_path)
    data = fake_data(model, n_gallery=12, lengths=[2, 9, 4, 11, 6, 3, 8, 5, 10], padded=14)
    want, order = reference_evaluate(model, data, k=6)
    got = evaluate(model, data, target=False, k_test=6, batch_size=4, chunk=4, kv_budget=budget)
    assert got.metrics == want
    assert torch.equal(got.stats["top"], order[:, :10])
    plain = evaluate(model, data, target=False, k_test=6, batch_size=4, chunk=4, rerank=False)
    assert not torch.equal(plain.stats["top"], got.stats["top"])  # re-ranking did change the order


@pytest.mark.parametrize("fusion_layers", [1, 3])
def test_benchmark_flop_formulas_match_counted_flops(tiny_text_dir, tmp_path, fusion_layers) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.rerank import fast_flops, reference_pair_flops
    from engine.rerank import cpu_max_tokens, image_kv_block, score_pairs

    model = tiny_model(tiny_text_dir, tmp_path, fusion_layers)
    embeds, mask = captions(model, [7], padded=12)
    gallery = torch.randn(10, 9, 32)
    cfg = model.text_encoder.config
    cpu = torch.device("cpu")
    kv = image_kv_block(model, gallery, torch.arange(10), 4, cpu)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fast:
        score_pairs(model, embeds, mask, torch.zeros(10, dtype=torch.long), torch.arange(10), kv, 4, cpu)
    assert fast.get_total_flops() == fast_flops([7], 10, 9, 32, cfg.intermediate_size, fusion_layers, 4,
                                                cpu_max_tokens(model))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as ref:
        rerank_reference(model, embeds, mask, torch.arange(10)[None], gallery, 4, cpu)
    assert ref.get_total_flops() == 10 * reference_pair_flops(12, 9, 32, cfg.intermediate_size, fusion_layers)


def test_pair_batches_respect_pair_and_token_caps() -> None:
    from engine.rerank import pair_batches

    lengths = [3] * 5 + [10] * 4 + [40]
    ranges = pair_batches(lengths, batch_size=4, max_tokens=20)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, in order
    for s, e in ranges:
        assert e - s <= 4 and ((e - s) * lengths[e - 1] <= 20 or e - s == 1)
    assert pair_batches(lengths, batch_size=4, max_tokens=None) == [(0, 4), (4, 8), (8, 10)]


def test_split_query_counts_by_hand() -> None:
    # top 3 by ITC of 7 queries (gallery indices), person of each gallery image, ITM scores of the top 3
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    query_pids = torch.tensor([0, 1, 2, 0, 3, 1, 2])
    order = torch.tensor([[0, 2, 4],   # right first by ITC and by ITM: split, both right
                          [0, 2, 4],   # right second; ITM lifts it: split, ITC wrong, ITM right
                          [0, 2, 4],   # right third; ITM lifts it: split, ITC wrong, ITM right
                          [0, 2, 4],   # right first; ITM drops it: split, ITC right, ITM wrong
                          [0, 2, 4],   # no right image in the top 3: not split
                          [2, 3, 0],   # two right images: not split
                          [6, 4, 0]])  # right second, ITM tie with the first: ITC order kept, split, both wrong
    itm = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 0.5], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0],
                        [0.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    full = torch.cat([order, torch.tensor([[1, 3, 5, 6]] * 5 + [[1, 4, 5, 6], [1, 2, 3, 5]])], dim=1)
    before = pids[full] == query_pids[:, None]
    after = pids[apply_rerank(full, 3, itm)] == query_pids[:, None]
    assert split_query_counts(before[:, :3], after[:, :3]).tolist() == [5, 2, 3]  # split: 0, 1, 2, 3, 6
    after_2 = pids[apply_rerank(full, 2, itm[:, :2])] == query_pids[:, None]
    assert split_query_counts(before[:, :2], after_2[:, :2]).tolist() == [4, 2, 2]  # top 2: split 0, 1, 3, 6
    # the case of the old benchmarks/rerank_pairs.py test, at depth 2 (its split pairs 3, ITC 1/3, ITM 1/3)
    correct = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    scores = torch.tensor([[0.0, 1.0, 2.0], [0.0, 1.0, 0.5], [3.0, 2.0, 1.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0]])
    reranked = correct[:, :2].gather(1, torch.sort(scores[:, :2], dim=1, descending=True, stable=True).indices)
    assert split_query_counts(correct[:, :2], reranked).tolist() == [3, 1, 1]
    summary = rerank_pair_summary(torch.tensor([4, 1, 3]), k=2, queries=10)
    assert summary == {"k": 2, "queries": 10, "split_queries": 4, "itc_right_first": 1, "itm_right_first": 3,
                       "itc_first_rate": 25.0, "itm_first_rate": 75.0}
    assert rerank_pair_summary(torch.tensor([0, 0, 0]), k=2, queries=3)["itm_first_rate"] is None


def test_evaluate_counts_the_split_queries_of_its_own_rankings(tiny_text_dir, tmp_path) -> None:
    """At depth 2, counted as benchmarks/rerank_pairs.py did (before its removal): split when exactly one of
    the top 2 by similarity is right; ITC right when that is the first; ITM right when its score of the
    first is at least that of the second exactly when the first is right."""
    model = tiny_model(tiny_text_dir, tmp_path)
    data = fake_data(model, n_gallery=12, lengths=[2, 9, 4, 11, 6, 3, 8, 5, 10, 7, 4, 6, 9, 3, 12, 5] * 2,
                     padded=14, seed=2)
    got = evaluate(model, data, target=False, k_test=2, batch_size=4, chunk=5)
    with torch.no_grad():
        images = torch.stack([data.gallery[i][0] for i in range(len(data.gallery))])
        g_embeds, t_embeds = model.encode_image(images), model.encode_text(data.query_ids, data.query_mask)
        top = similarity_order(model.text_feature(t_embeds, target=False) @ model.image_feature(g_embeds).t())[:, :2]
    itm = rerank_reference(model, t_embeds, data.query_mask, top, g_embeds, 8, torch.device("cpu"))
    correct = data.gallery_pids[top] == data.query_pids[:, None]
    split = correct[:, 0] ^ correct[:, 1]
    itc_right = int(correct[split, 0].sum())
    itm_right = int(((itm[split, 0] >= itm[split, 1]) == correct[split, 0]).sum())
    assert got.rerank_pairs["split_queries"] == int(split.sum()) == 14  # this seed: 14 split queries of 32,
    assert (got.rerank_pairs["itc_right_first"], got.rerank_pairs["itm_right_first"]) == (itc_right, itm_right) == (9, 7)
    assert got.rerank_pairs["k"] == 2 and got.rerank_pairs["queries"] == got.metrics["num_queries"] == 32
    assert got.itc_metrics["R1"] - got.metrics["R1"] == pytest.approx(100 * (9 - 7) / 32)  # k = 2: all of R1's change
    assert evaluate(model, data, target=False, k_test=1, batch_size=4).rerank_pairs is None  # nothing re-ranked
    assert evaluate(model, data, target=False, k_test=2, batch_size=4, rerank=False).rerank_pairs is None
