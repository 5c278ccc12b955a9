"""Retrieval evaluation: encode, rank by cosine similarity, re-rank the top k with ITM.

Under torchrun the gallery and the queries are split across processes: each process
encodes only its share of the gallery (the shares are then gathered, since every query
may need every image) and ranks only its share of the queries; per-query statistics
are gathered at the end, so the result equals a single-process run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset

from engine.amp import autocast_for
from engine.rerank import rerank_topk
from utils.distributed import all_gather_no_grad, get_rank, get_world_size
from utils.metrics import concat_stats, per_query_stats, summarize

TOP_KEEP = 10  # ranked gallery indices kept per query for reports and examples


@dataclass
class EvalResult:
    metrics: dict[str, float]
    stats: dict[str, torch.Tensor]  # per query: first, ap, inp, valid, top (indices [Q, TOP_KEEP])


def shard(n: int, rank: int, world: int) -> range:
    """Contiguous share of ``range(n)`` for ``rank``; shares differ in size by at most one."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


@torch.no_grad()
def encode_gallery(model, data, batch_size: int, num_workers: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings [G, 1+N, D] and global features [G, E] of the whole gallery."""
    if len(data.gallery) < get_world_size():
        raise ValueError(f"gallery of {len(data.gallery)} images is smaller than the {get_world_size()} processes")
    idx = shard(len(data.gallery), get_rank(), get_world_size())
    loader = DataLoader(Subset(data.gallery, list(idx)), batch_size=batch_size, num_workers=num_workers,
                        shuffle=False, pin_memory=device.type == "cuda")
    embeds, feats = [], []
    for images, _ in loader:
        with autocast_for(device):
            e = model.encode_image(images.to(device, non_blocking=True))
            f = model.image_feature(e)
        embeds.append(e.float())
        feats.append(f.float())
    return all_gather_no_grad(torch.cat(embeds)), all_gather_no_grad(torch.cat(feats))


@torch.no_grad()
def encode_queries(model, ids: torch.Tensor, mask: torch.Tensor, target: bool, batch_size: int,
                   device: torch.device) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """(text embeddings, mask) per batch with padding trimmed to the batch's longest caption,
    and the global features of all queries."""
    embeds, feats = [], []
    for s in range(0, len(ids), batch_size):
        m = mask[s:s + batch_size]
        length = int(m.sum(1).max()) if len(m) else 1
        i, m = ids[s:s + batch_size, :length].to(device), m[:, :length].to(device)
        with autocast_for(device):
            e = model.encode_text(i, m)
            f = model.text_feature(e, target=target)
        embeds.append((e.float(), m))
        feats.append(f.float())
    return embeds, torch.cat(feats)


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
             device: torch.device = torch.device("cpu"), rerank: bool = True, chunk: int = 256) -> EvalResult:
    """Rank-1/5/10, mAP and mINP of one language's queries against the gallery."""
    model.eval()
    g_embeds, g_feats = encode_gallery(model, data, batch_size, num_workers, device)
    g_pids = data.gallery_pids.to(device)
    q_idx = shard(len(data.query_pids), get_rank(), get_world_size())
    q_ids, q_mask = data.query_ids[q_idx.start:q_idx.stop], data.query_mask[q_idx.start:q_idx.stop]
    q_pids = data.query_pids[q_idx.start:q_idx.stop].to(device)
    k = min(k_test, g_feats.shape[0])
    parts = []
    for s in range(0, len(q_ids), chunk):
        t_embeds, t_feats = encode_queries(model, q_ids[s:s + chunk], q_mask[s:s + chunk], target, batch_size, device)
        order = similarity_order(t_feats @ g_feats.t())
        if rerank and k > 0:
            scores = rerank_topk(model, t_embeds, order[:, :k], g_embeds, batch_size, device)
            order = apply_rerank(order, k, scores)
        st = per_query_stats(g_pids[order] == q_pids[s:s + chunk, None])
        st["top"] = order[:, :TOP_KEEP]
        parts.append({key: v.cpu() for key, v in st.items()})
    if parts:
        local = concat_stats(parts)
    else:
        local = {"first": torch.zeros(0, dtype=torch.long), "ap": torch.zeros(0), "inp": torch.zeros(0),
                 "valid": torch.zeros(0, dtype=torch.bool),
                 "top": torch.zeros(0, min(TOP_KEEP, g_feats.shape[0]), dtype=torch.long)}
    stats = {key: all_gather_no_grad(v.to(device)).cpu() for key, v in local.items()}
    return EvalResult(summarize(stats), stats)
