"""Retrieval evaluation: encode, rank by cosine similarity, re-rank the top k with ITM.

Under torchrun the gallery and the queries are split across processes: each process
encodes only its share of the gallery (the shares are then gathered, since every query
may need every image) and ranks only its share of the queries; per-query statistics
are gathered at the end, so the result equals a single-process run.

Memory stays bounded for large galleries: similarities exist for ``chunk`` queries at a
time, and re-ranking (engine/rerank.py) caches image keys/values within a byte budget.
Three passes over the local queries: (1) encode them, keep their global features and
top-k candidates; (2) re-rank all (query, candidate) pairs; (3) rebuild each chunk's
similarity order, apply the re-ranking, compute statistics. Pass 3 recomputes the
similarities of pass 1 (same inputs, same result) rather than keeping a Q x G order.

With re-ranking of the top k > 1, pass 3 also counts the queries re-ranking decides
(:func:`split_query_counts`); each process counts its own queries and the counts are
summed across processes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset

from engine.amp import autocast, eval_dtype
from engine.open_set import Reranked, impostor_candidates, open_set_chunk
from engine.rerank import rerank_fast
from utils.config import Config
from utils.distributed import all_gather_no_grad, get_rank, get_world_size
from utils.metrics import concat_stats, per_query_stats, summarize

TOP_KEEP = 10  # ranked gallery indices kept per query for reports and examples


@dataclass
class EvalResult:
    metrics: dict[str, float]
    stats: dict[str, torch.Tensor]  # per query: first, ap, inp, valid, top (indices [Q, TOP_KEEP])
    itc_metrics: dict[str, float] | None = None  # the same metrics before re-ranking (None when not re-ranked)
    rerank_pairs: dict[str, float | int | None] | None = None  # see rerank_pair_summary (None unless top k > 1 re-ranked)
    open_set: dict[str, torch.Tensor] | None = None  # per-query open-set trials (engine/open_set.py) when asked for


def split_query_counts(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """[split queries, ITC right first, ITM right first] (long) from the relevance of each
    query's top k: ``before[q, j]`` in ITC similarity order, ``after[q, j]`` after re-ranking
    (the same k images, re-ordered by ITM score).

    A split query has exactly one image of the right person among its top k by ITC; ITC
    is right on it when that image is first by similarity, the ITM re-ranking when it is
    first after re-ranking. On these queries re-ranking moves R1 by (ITM - ITC) right firsts
    (for k = 2 the only queries where it can; deeper, queries with several right images in
    the top k can also lose or keep their right first).
    """
    split = before.sum(1) == 1
    return torch.stack([split.sum(), (split & before[:, 0]).sum(), (split & after[:, 0]).sum()]).long()


def rerank_pair_summary(counts: torch.Tensor, k: int, queries: int) -> dict[str, float | int | None]:
    """``counts`` of :func:`split_query_counts` (summed over all queries) as a dict: ``k``, ``queries``
    (evaluated queries), ``split_queries``, ``itc_right_first`` / ``itm_right_first`` (counts) and
    ``itc_first_rate`` / ``itm_first_rate`` (percent of the split queries; None when there are none)."""
    split, itc, itm = (int(c) for c in counts.tolist())
    rate = (lambda n: 100.0 * n / split) if split else (lambda n: None)
    return {"k": k, "queries": queries, "split_queries": split, "itc_right_first": itc, "itm_right_first": itm,
            "itc_first_rate": rate(itc), "itm_first_rate": rate(itm)}


def shard(n: int, rank: int, world: int) -> range:
    """Contiguous share of ``range(n)`` for ``rank``; shares differ in size by at most one."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


@torch.no_grad()
def encode_gallery(model, data, batch_size: int, num_workers: int, device: torch.device,
                   dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings [G, 1+N, D] and global features [G, E] of the whole gallery.

    Embeddings are kept in the evaluation autocast ``dtype`` when there is one (``model.eval_amp``)
    (half the memory; the fusion encoder casts them to it anyway), in fp32 otherwise. A gallery with fewer images than
    processes cannot give each process a share: every process then encodes all of it.
    """
    shared = len(data.gallery) >= get_world_size()
    idx = shard(len(data.gallery), get_rank(), get_world_size()) if shared else range(len(data.gallery))
    loader = DataLoader(Subset(data.gallery, list(idx)), batch_size=batch_size, num_workers=num_workers,
                        shuffle=False, pin_memory=device.type == "cuda")
    store = dtype or torch.float32
    embeds, feats = [], []
    for images, _ in loader:
        with autocast(device, dtype):
            e = model.encode_image(images.to(device, non_blocking=True))
            f = model.image_feature(e)
        embeds.append(e.to(store))
        feats.append(f.float())
    embeds, feats = torch.cat(embeds), torch.cat(feats)
    return (all_gather_no_grad(embeds), all_gather_no_grad(feats)) if shared else (embeds, feats)


@torch.no_grad()
def encode_queries(model, ids: torch.Tensor, mask: torch.Tensor, target: bool, batch_size: int,
                   device: torch.device, dtype: torch.dtype | None = None
                   ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """(text embeddings, mask) per batch with padding trimmed to the batch's longest caption,
    and the global features of all queries."""
    embeds, feats = [], []
    for s in range(0, len(ids), batch_size):
        m = mask[s:s + batch_size]
        length = int(m.sum(1).max()) if len(m) else 1
        i, m = ids[s:s + batch_size, :length].to(device), m[:, :length].to(device)
        with autocast(device, dtype):
            e = model.encode_text(i, m)
            f = model.text_feature(e, target=target)
        embeds.append((e.float(), m))
        feats.append(f.float())
    return embeds, torch.cat(feats)


def pad_batches(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (embeddings [b, L_i, D], mask [b, L_i]) batches, zero-padding to the longest L_i."""
    length = max(e.shape[1] for e, _ in batches)
    embeds = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e, _ in batches])
    mask = torch.cat([torch.nn.functional.pad(m, (0, length - m.shape[1])) for _, m in batches])
    return embeds, mask


def similarity_order(sim: torch.Tensor) -> torch.Tensor:
    """Gallery indices by descending similarity; stable, so ties keep gallery order."""
    return torch.sort(sim, dim=1, descending=True, stable=True).indices


def apply_rerank(order: torch.Tensor, k: int, itm_scores: torch.Tensor) -> torch.Tensor:
    """Re-order the first k columns of ``order`` by ITM score; the rest stay as they are.

    Images outside the top k keep their similarity order (upstream gave them one constant
    score, which left their order, and mAP, arbitrary).
    """
    perm = torch.sort(itm_scores, dim=1, descending=True, stable=True).indices
    return torch.cat([order[:, :k].gather(1, perm), order[:, k:]], dim=1)


@torch.no_grad()
def evaluate(model, data, *, target: bool, k_test: int, batch_size: int, num_workers: int = 0,
             device: torch.device = torch.device("cpu"), rerank: bool = True, chunk: int = 256,
             kv_budget: int | None = None, dtype: torch.dtype | None = None, score: str = "logit",
             gallery: tuple[torch.Tensor, torch.Tensor] | None = None, open_set: bool = False) -> EvalResult:
    """Rank-1/5/10, mAP and mINP of one language's queries against the gallery.

    ``dtype``: the autocast dtype of evaluation (None: fp32; ``engine.amp.eval_dtype``);
    ``score``: what orders the re-ranked candidates (``engine.rerank.rerank_score``).

    ``chunk`` queries share one similarity block; ``batch_size`` is the encoder batch and
    the number of (caption, image) pairs per re-ranking batch; ``kv_budget`` bounds the
    re-ranker's cached image keys/values in bytes (default: ``engine.rerank.default_kv_budget``).
    ``gallery``: the (embeddings, features) :func:`encode_gallery` gave for this gallery with the same
    model and ``dtype``, so that languages sharing one gallery encode it once (engine/transfer.py).
    ``open_set``: also record each query's open-set trials (``EvalResult.open_set``); under
    re-ranking this scores the few extra pairs of the trials without the query's person.
    """
    model.eval()
    g_embeds, g_feats = (encode_gallery(model, data, batch_size, num_workers, device, dtype) if gallery is None
                         else gallery)
    g_pids = data.gallery_pids.to(device)
    q_idx = shard(len(data.query_pids), get_rank(), get_world_size())
    q_ids, q_mask = data.query_ids[q_idx.start:q_idx.stop], data.query_mask[q_idx.start:q_idx.stop]
    q_pids = data.query_pids[q_idx.start:q_idx.stop].to(device)
    k = min(k_test, g_feats.shape[0])
    starts = range(0, len(q_ids), chunk)

    def text(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_batches(encode_queries(model, q_ids[start:stop], q_mask[start:stop], target, batch_size, device,
                                          dtype)[0])

    feats = [encode_queries(model, q_ids[s:s + chunk], q_mask[s:s + chunk], target, batch_size, device, dtype)[1]
             for s in starts]
    q_feats = torch.cat(feats) if feats else g_feats.new_zeros(0, g_feats.shape[1])
    scores = topk = None
    rerank_args = dict(chunk=chunk, batch_size=batch_size, device=device, kv_budget=kv_budget, dtype=dtype, score=score)
    if rerank and k > 0:
        topk = [similarity_order(q_feats[s:s + chunk] @ g_feats.t())[:, :k] for s in starts]
        topk = torch.cat(topk) if topk else torch.zeros(0, k, dtype=torch.long, device=device)
        scores = rerank_fast(model, text, topk, g_embeds, **rerank_args)
    parts, itc_parts, split_counts = rank_chunks(q_feats, g_feats, g_pids, q_pids, starts, chunk, k, scores, device)
    result = gather_result(parts, itc_parts, split_counts, scores is not None, k, g_feats.shape[0], device)
    if open_set:
        result.open_set = open_set_trials(q_feats, g_feats, g_pids, q_pids, starts, chunk, topk, scores,
                                          lambda idx: rerank_fast(model, text, idx, g_embeds, **rerank_args), device)
    return result


def open_set_trials(q_feats: torch.Tensor, g_feats: torch.Tensor, g_pids: torch.Tensor, q_pids: torch.Tensor,
                    starts: range, chunk: int, topk: torch.Tensor | None, scores: torch.Tensor | None,
                    rescore: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The open-set trials of the local queries (engine/open_set.py), gathered from every process.
    With re-ranking, ``rescore(indices [Q, m])`` scores the impostor trials' new candidates."""
    if scores is not None:
        extra, valid = impostor_candidates(q_feats, g_feats, g_pids, q_pids, topk, starts, chunk)
        extra_scores = rescore(extra)
    trials = []
    for s in starts:
        rows = slice(s, s + chunk)
        reranked = None if scores is None else Reranked(topk[rows], scores[rows], extra[rows], extra_scores[rows],
                                                        valid[rows])
        trials.append(open_set_chunk(q_feats[rows] @ g_feats.t(), g_pids, q_pids[rows], reranked))
    return gather_trials(trials, scores is not None, device)


def gather_trials(parts: list[dict[str, torch.Tensor]], reranked: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """The open-set trials of every process, concatenated in query order (a process without queries adds none)."""
    keys = [f"{s}_{f}" for s in (("cosine", "itm") if reranked else ("cosine",)) for f in ("best", "right", "absent")]
    local = concat_stats(parts) if parts else {
        key: torch.zeros(0, dtype=torch.bool if key.endswith("right") else torch.float32) for key in keys}
    return {key: all_gather_no_grad(local[key].to(device)).cpu() for key in keys}


def evaluate_language(model, cfg: Config, data, target: bool, device: torch.device,
                      gallery: tuple[torch.Tensor, torch.Tensor] | None = None, open_set: bool = False) -> EvalResult:
    """:func:`evaluate` with the run's protocol: ``model.k_test``, ``model.rerank_score``, the
    evaluation precision, ``data.test_batch_size`` and ``data.num_workers``; ``target``: the
    query projection (``utils.config.uses_tl_proj``); ``open_set``: also the open-set trials."""
    return evaluate(model, data, target=target, k_test=cfg.model.k_test, batch_size=cfg.data.test_batch_size,
                    num_workers=cfg.data.num_workers, device=device, dtype=eval_dtype(cfg, device),
                    score=cfg.model.rerank_score, gallery=gallery, open_set=open_set)


def rank_chunks(q_feats: torch.Tensor, g_feats: torch.Tensor, g_pids: torch.Tensor, q_pids: torch.Tensor,
                starts: range, chunk: int, k: int, scores: torch.Tensor | None, device: torch.device
                ) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], torch.Tensor]:
    """Pass 3 over the local queries: per chunk, its statistics (on the CPU) after re-ranking and,
    when re-ranked, before it (ITC), plus the split-query counts (top k > 1 only).

    Each chunk's similarity order is recomputed here so that no Q x G order is ever kept.
    """
    parts, itc_parts = [], []
    split_counts = torch.zeros(3, dtype=torch.long, device=device)
    for s in starts:
        order = similarity_order(q_feats[s:s + chunk] @ g_feats.t())
        if scores is not None:
            itc_matches = g_pids[order] == q_pids[s:s + chunk, None]
            itc = per_query_stats(itc_matches)
            itc_parts.append({key: itc[key].cpu() for key in ("first", "ap", "inp", "valid")})
            order = apply_rerank(order, k, scores[s:s + chunk])
        matches = g_pids[order] == q_pids[s:s + chunk, None]
        if scores is not None and k > 1:
            split_counts += split_query_counts(itc_matches[:, :k], matches[:, :k])
        st = per_query_stats(matches)
        st["top"] = order[:, :TOP_KEEP]
        parts.append({key: v.cpu() for key, v in st.items()})
    return parts, itc_parts, split_counts


def gather_result(parts: list[dict[str, torch.Tensor]], itc_parts: list[dict[str, torch.Tensor]],
                  split_counts: torch.Tensor, reranked: bool, k: int, gallery_size: int,
                  device: torch.device) -> EvalResult:
    """The statistics of :func:`rank_chunks` gathered from every process and summarized, so each
    process returns the result of a single-process run (a process without queries adds none)."""
    if parts:
        local = concat_stats(parts)
    else:
        local = {"first": torch.zeros(0, dtype=torch.long), "ap": torch.zeros(0), "inp": torch.zeros(0),
                 "valid": torch.zeros(0, dtype=torch.bool),
                 "top": torch.zeros(0, min(TOP_KEEP, gallery_size), dtype=torch.long)}
    stats = {key: all_gather_no_grad(v.to(device)).cpu() for key, v in local.items()}
    metrics = summarize(stats)
    itc_metrics = pairs = None
    if reranked:  # every process re-ranks or none does (same k), so the gathers match
        local_itc = concat_stats(itc_parts) if itc_parts else {key: local[key] for key in ("first", "ap", "inp", "valid")}
        itc_metrics = summarize({key: all_gather_no_grad(v.to(device)).cpu() for key, v in local_itc.items()})
        if k > 1:  # one row of counts per process, summed
            counts = all_gather_no_grad(split_counts[None]).sum(0).cpu()
            pairs = rerank_pair_summary(counts, k, metrics["num_queries"])
    return EvalResult(metrics, stats, itc_metrics, pairs)
