"""Top-k re-ranking with the fusion encoder and the ITM head.

Two implementations with the same scores:

* :func:`rerank_reference`: the straightforward (upstream) way. Each query's caption is
  repeated for its k candidates and run through the whole fusion encoder, so every
  candidate image's cross-attention keys/values are recomputed for every query, and the
  caption keeps whatever padding it was given. Kept as the reference for tests and
  benchmarks/rerank.py.
* :func:`rerank_fast`: what evaluation uses. Keys/values depend only on the image, so
  they are computed once per gallery image and fusion layer and gathered per pair; pairs
  are batched across queries sorted by caption length and trimmed to the longest caption
  of the batch; the first layer's self-attention runs once per caption and the last layer
  only for token 0 (``BiIRRA.itm_logits_pairs``); fp32 unless ``model.eval_amp``.

Every function takes the evaluation's autocast ``dtype`` (None: fp32) and the ``score``
that orders the candidates (:func:`rerank_score`, ``model.rerank_score``).

Memory: the cached keys/values take ``layers * 2 * (1 + N) * D * bytes`` per image
(:func:`kv_bytes_per_image`). The images needed (the union of all candidates) are cached
in blocks that fit ``kv_budget`` bytes (by default this process's share of the node's
memory, :func:`default_kv_budget`); with more than one block, the captions are encoded
again per block (about 1% of the re-ranking work per extra block at full size) instead of
recomputing image keys/values, so every image's keys/values are computed exactly once.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from engine.amp import autocast
from model.fusion import KV

KV_BUDGET_CAP = 16 * 2**30  # bytes; default cap on the cached image keys/values of one node (CPU) or GPU

TextSource = Callable[[int, int], tuple[torch.Tensor, torch.Tensor]]
"""``text(start, stop)`` -> (embeddings [n, L, D], mask [n, L]) of queries start..stop-1."""


def rerank_score(logits: torch.Tensor, score: str = "logit") -> torch.Tensor:
    """Re-ranking score [B] from ITM logits [B, 2] (class 1 = match).

    Upstream ranks by the raw match logit ``logits[:, 1]``; ``model.rerank_score:
    log_odds`` uses the match minus the non-match logit (the log-odds of a match).
    """
    if score == "log_odds":
        return logits[:, 1] - logits[:, 0]
    return logits[:, 1]


@torch.no_grad()
def rerank_reference(model, text_embeds: torch.Tensor, text_mask: torch.Tensor, topk: torch.Tensor,
                     gallery_embeds: torch.Tensor, batch_size: int, device: torch.device, *,
                     dtype: torch.dtype | None = None, score: str = "logit") -> torch.Tensor:
    """ITM scores [Q, k]: per query, its caption against its k candidates in slices of ``batch_size``.

    ``text_embeds`` [Q, L, D] and ``text_mask`` [Q, L] are used as given (upstream pads
    to ``text_length``); ``topk[q]`` indexes ``gallery_embeds`` [G, 1 + N, D].
    """
    scores = torch.empty(topk.shape, device=device)
    for q in range(topk.shape[0]):
        e, m = text_embeds[q].to(device), text_mask[q].to(device)
        for s in range(0, topk.shape[1], batch_size):
            idx = topk[q, s:s + batch_size]
            n = len(idx)
            images = gallery_embeds[idx.to(gallery_embeds.device)].to(device)
            with autocast(device, dtype):
                out = rerank_score(model.itm_logits(e.expand(n, -1, -1), m.expand(n, -1), images), score)
            scores[q, s:s + n] = out.float()
    return scores


def kv_dtype(dtype: torch.dtype | None, embeds_dtype: torch.dtype) -> torch.dtype:
    """Dtype of the cached keys/values: the evaluation autocast dtype if any, else the embeddings' dtype."""
    return dtype or embeds_dtype


def kv_bytes_per_image(model, tokens: int, dtype: torch.dtype) -> int:
    """Bytes of one image's cached keys/values: layers * 2 (k and v) * tokens * D * element size."""
    hidden = model.text_encoder.config.hidden_size
    return len(model.cross_encoder.layer) * 2 * tokens * hidden * torch.finfo(dtype).bits // 8


def available_memory() -> int:
    """Bytes of host memory available now (MemAvailable), or twice the cap where that is unknown."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return KV_BUDGET_CAP * 2


def processes_sharing(device: torch.device) -> int:
    """Processes of this node that draw on ``device``'s memory: on the CPU all of them
    (torchrun's LOCAL_WORLD_SIZE); on CUDA one, since each process binds its own GPU."""
    return 1 if device.type == "cuda" else max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def default_kv_budget(device: torch.device) -> int:
    """This process's share of the key/value cache: half of the memory free now on ``device``,
    at most ``KV_BUDGET_CAP`` (16 GiB), divided among the processes that share that memory
    (:func:`processes_sharing`), so that a node's processes together stay within it."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else available_memory()
    return min(KV_BUDGET_CAP, free // 2) // processes_sharing(device)


@torch.no_grad()
def image_kv_block(model, gallery_embeds: torch.Tensor, ids: torch.Tensor, batch_size: int,
                   device: torch.device, dtype: torch.dtype | None = None) -> list[KV]:
    """Cross-attention keys/values [n, heads, 1 + N, head_dim] per fusion layer of images ``ids``.

    Written into preallocated tensors so the block's peak memory is the block itself; on
    the CPU, batches are capped so that each projection's output stays small (:func:`cpu_rows`).
    """
    if device.type != "cuda":
        batch_size = max(1, min(batch_size, cpu_rows(gallery_embeds.shape[2]) // gallery_embeds.shape[1]))
    store: list[KV] = []
    for s in range(0, len(ids), batch_size):
        idx = ids[s:s + batch_size]
        with autocast(device, dtype):
            kv = model.image_kv(gallery_embeds[idx.to(gallery_embeds.device)].to(device))
        if not store:
            store = [(k.new_empty((len(ids), *k.shape[1:])), v.new_empty((len(ids), *v.shape[1:]))) for k, v in kv]
        for (k_all, v_all), (k, v) in zip(store, kv):
            k_all[s:s + len(idx)] = k
            v_all[s:s + len(idx)] = v
    return store


class PairKV:
    """Per-layer keys/values of a batch's images, gathered from the cache just before use.

    On the CPU the gathered copy goes into two buffers reused by every layer and batch:
    a fresh allocation of that size (tens of MB) is a new memory mapping whose page faults
    cost several times the copy itself. On CUDA the caching allocator makes indexing cheap.
    """

    def __init__(self, kv: list[KV], batch_size: int) -> None:
        self.kv = kv
        k = kv[0][0]
        self.buffers = None if k.is_cuda else (k.new_empty((batch_size, *k.shape[1:])),
                                               k.new_empty((batch_size, *k.shape[1:])))
        self.rows = torch.zeros(0, dtype=torch.long, device=k.device)

    def select(self, rows: torch.Tensor) -> PairKV:
        """Use cache rows ``rows`` (one per pair) from now on."""
        self.rows = rows
        return self

    def __call__(self, layer: int) -> KV:
        k, v = self.kv[layer]
        if self.buffers is None:
            return k[self.rows], v[self.rows]
        n = len(self.rows)
        out_k, out_v = self.buffers[0][:n], self.buffers[1][:n]
        return torch.index_select(k, 0, self.rows, out=out_k), torch.index_select(v, 0, self.rows, out=out_v)


def pair_batches(lengths: list[int], batch_size: int, max_tokens: int | None) -> list[tuple[int, int]]:
    """[start, stop) ranges over pairs sorted by ascending caption length: at most ``batch_size``
    pairs and, when ``max_tokens`` is set, at most ``max_tokens`` padded caption tokens each."""
    ranges, s, n = [], 0, len(lengths)
    while s < n:
        e = min(s + batch_size, n)
        if max_tokens is not None:
            while e - s > 1 and (e - s) * lengths[e - 1] > max_tokens:
                e = max(s + 1, min(e - 1, s + max_tokens // lengths[e - 1]))
        ranges.append((s, e))
        s = e
    return ranges


def cpu_rows(width: int) -> int:
    """Rows of a [rows, width] fp32 activation that stay under 24 MiB. On the CPU, glibc
    serves blocks above 32 MiB with fresh memory mappings whose page faults cost more than
    the arithmetic on them; smaller blocks are reused."""
    return max(1, 24 * 2**20 // (4 * width))


def cpu_max_tokens(model) -> int:
    """Caption tokens per CPU batch: the feed-forward intermediate, the largest activation, stays small."""
    return cpu_rows(model.text_encoder.config.intermediate_size)


@torch.no_grad()
def score_pairs(model, embeds: torch.Tensor, mask: torch.Tensor, pair_query: torch.Tensor, pair_row: torch.Tensor,
                kv: list[KV], batch_size: int, device: torch.device, *, dtype: torch.dtype | None = None,
                score: str = "logit") -> torch.Tensor:
    """ITM scores [P] of pairs (caption ``pair_query[p]`` of ``embeds``, cached image ``pair_row[p]`` of ``kv``).

    Pairs are sorted by caption length (then caption) so a batch needs little padding and
    each caption's pairs stay together; a batch holds up to ``batch_size`` pairs (on the
    CPU also at most :func:`cpu_max_tokens` caption tokens).
    """
    lengths = mask.sum(1)
    order = torch.argsort(lengths[pair_query] * embeds.shape[0] + pair_query, stable=True)
    pair_len = lengths[pair_query[order]].tolist()
    max_tokens = None if device.type == "cuda" else cpu_max_tokens(model)
    out = torch.empty(len(pair_query), device=device)
    pair_kv = PairKV(kv, min(batch_size, len(pair_query)))
    for s, e in pair_batches(pair_len, batch_size, max_tokens):
        sel = order[s:e]
        texts, pair_text = torch.unique_consecutive(pair_query[sel], return_inverse=True)
        length = pair_len[e - 1]
        with autocast(device, dtype):
            scores = rerank_score(model.itm_logits_pairs(embeds[texts, :length], mask[texts, :length], pair_text,
                                                         pair_kv.select(pair_row[sel])), score)
        out[sel] = scores.float()
    return out


def kv_blocks(model, gallery_embeds: torch.Tensor, topk: torch.Tensor, kv_budget: int | None, batch_size: int,
              device: torch.device, dtype: torch.dtype | None = None) -> Iterator[tuple[torch.Tensor, list[KV]]]:
    """(gallery ids, their cached keys/values) for every image in ``topk``, in blocks of at
    most ``kv_budget`` bytes (default :func:`default_kv_budget`). Drop each block before
    asking for the next, so that only one is alive."""
    per_image = kv_bytes_per_image(model, gallery_embeds.shape[1], kv_dtype(dtype, gallery_embeds.dtype))
    budget = default_kv_budget(device) if kv_budget is None else kv_budget
    for ids in torch.unique(topk).split(max(1, budget // per_image)):
        yield ids, image_kv_block(model, gallery_embeds, ids, batch_size, device, dtype)


@torch.no_grad()
def score_block(model, text: TextSource, topk: torch.Tensor, ids: torch.Tensor, kv: list[KV], out: torch.Tensor, *,
                chunk: int, batch_size: int, device: torch.device, dtype: torch.dtype | None = None,
                score: str = "logit") -> None:
    """Write into ``out[q, j]`` the score of every candidate ``topk[q, j]`` among gallery ``ids`` (whose k/v is ``kv``).

    Queries are taken ``chunk`` at a time; a chunk with no candidate in the block is not
    encoded.
    """
    row = torch.full((int(max(topk.max(), ids.max())) + 1,), -1, dtype=torch.long, device=device)
    row[ids] = torch.arange(len(ids), device=device)
    for s in range(0, topk.shape[0], chunk):
        rows = row[topk[s:s + chunk]]
        pair_query, pair_col = (rows >= 0).nonzero(as_tuple=True)
        if len(pair_query) == 0:
            continue
        embeds, mask = text(s, min(s + chunk, topk.shape[0]))
        out[s + pair_query, pair_col] = score_pairs(model, embeds.to(device), mask.to(device), pair_query,
                                                    rows[pair_query, pair_col], kv, batch_size, device,
                                                    dtype=dtype, score=score)


@torch.no_grad()
def rerank_fast(model, text: TextSource, topk: torch.Tensor, gallery_embeds: torch.Tensor, *, chunk: int,
                batch_size: int, device: torch.device, kv_budget: int | None = None,
                dtype: torch.dtype | None = None, score: str = "logit") -> torch.Tensor:
    """ITM scores [Q, k] of each query against its candidates ``topk[q]`` (gallery indices).

    Equal to :func:`rerank_reference` up to float rounding. ``text`` delivers the captions
    in chunks of ``chunk`` queries; ``batch_size`` is the number of (caption, image) pairs
    per fusion batch; ``kv_budget`` bounds the cached keys/values in bytes (default
    :func:`default_kv_budget`).
    """
    topk = topk.to(device)
    scores = torch.empty(topk.shape, device=device)
    if topk.numel():
        for ids, kv in kv_blocks(model, gallery_embeds, topk, kv_budget, batch_size, device, dtype):
            score_block(model, text, topk, ids, kv, scores, chunk=chunk, batch_size=batch_size, device=device,
                        dtype=dtype, score=score)
            del kv  # free this block before the next one is built
    return scores


__all__ = ["KV_BUDGET_CAP", "PairKV", "TextSource", "rerank_score", "available_memory", "cpu_max_tokens",
           "cpu_rows", "default_kv_budget", "image_kv_block", "kv_blocks", "kv_bytes_per_image", "kv_dtype",
           "pair_batches", "processes_sharing", "rerank_fast", "rerank_reference", "score_block", "score_pairs"]
