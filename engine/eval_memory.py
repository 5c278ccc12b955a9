"""How much memory evaluation will take, per process, for the configured gallery (``main.py --check``).

The buffers are those of ``engine.evaluate.evaluate`` and ``engine.rerank`` (docs/benchmarks.md,
"Evaluation memory bound", measured against this formula); the model's weights and one
batch's activations come on top. With G gallery images of T = 1 + N tokens, width D, L
fusion layers, Q local queries, k = min(k_test, G) and b bytes per element (4 in fp32, 2
under ``model.eval_amp`` on CUDA):

* gallery embeddings (every process holds all of them): G T D b, and features: G E 4
* cached image keys/values: one block of at most the budget B alive at a time, P = L 2 T D b
  per image, U = min(G, Q k) images needed: min(U, floor(B / P)) P, in ceil(U / floor(B / P)) blocks
* the k/v build batch: n P (CPU: as many images as keep one projection under 24 MiB; CUDA:
  ``data.test_batch_size``)
* the keys/values gathered for one fusion batch: 2 x test_batch_size x T D b
* the similarities of one chunk of queries: chunk x G x 21 (fp32 scores, int64 order and ids, bool)
* top-k indices and ITM scores: Q k 12
* the open-set trials' membership test (engine/open_set.py) for one chunk of queries: chunk x k x k
  bools (the few extra candidates per query it finds are not counted)
"""
from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass

import torch

from data.annotations import has_split, read_entries
from engine.amp import eval_dtype
from engine.evaluate import evaluate
from engine.rerank import KV_BUDGET_CAP, available_memory, cpu_rows
from utils.config import Config, annotation_path, query_languages

GiB = 2**30
CHUNK = inspect.signature(evaluate).parameters["chunk"].default  # queries per similarity block


@dataclass(frozen=True)
class EvalMemory:
    """The estimate for the largest evaluated (split, language) set."""
    split: str
    lang: str
    gallery: int
    queries: int  # of this process
    processes: int
    budget: int  # bytes for the key/value cache of this process
    blocks: int
    buffers: dict[str, int]  # name -> bytes

    @property
    def total(self) -> int:
        return sum(self.buffers.values())


def eval_sets(cfg: Config) -> list[tuple[str, str, int, int]]:
    """(split, language, gallery images, queries) of every set that evaluation will read."""
    out = []
    for split in ("val", "test"):
        if split == "val" and not has_split(cfg, "val"):
            continue
        for lang in query_languages(cfg):
            path = annotation_path(cfg, split, lang)
            if path.is_file():
                entries = read_entries(path)
                out.append((split, lang, len(entries), sum(len(e.captions) for e in entries)))
    return out


def estimate(cfg: Config, processes: int | None = None, local_processes: int | None = None) -> EvalMemory:
    """Per-process bytes of each evaluation buffer for the largest set, with ``processes``
    processes in all and ``local_processes`` on this node (default: torchrun's WORLD_SIZE
    and LOCAL_WORLD_SIZE, else 1)."""
    processes = processes or int(os.environ.get("WORLD_SIZE", "1"))
    local_processes = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", str(processes)))
    cuda = cfg.device != "cpu"
    dtype = eval_dtype(cfg, torch.device("cuda" if cuda else "cpu")) or torch.float32
    b = torch.finfo(dtype).bits // 8
    h, w = cfg.experiment.input_resolution
    tokens = 1 + (h // cfg.patch_size) * (w // cfg.patch_size)
    width = cfg.vision_json()["vision_width"]
    layers = cfg.text_num_hidden_layers - cfg.text_fusion_start_at
    per_image = layers * 2 * tokens * width * b
    # the CUDA budget depends on the GPU's free memory at evaluation time: its cap is the bound
    budget = KV_BUDGET_CAP if cuda else min(KV_BUDGET_CAP, available_memory() // 2) // local_processes
    batch = cfg.data.test_batch_size
    build = batch if cuda else max(1, min(batch, cpu_rows(width) // tokens))
    best = None
    for split, lang, g, q in eval_sets(cfg):
        q_local = math.ceil(q / processes)
        k = min(cfg.model.k_test, g)
        needed = min(g, q_local * k)
        per_block = max(1, budget // per_image)
        block = min(needed, per_block)
        buffers = {
            "gallery embeddings": g * tokens * width * b,
            "gallery features": g * cfg.model.embed_dim * 4,
            "cached image keys/values (largest block)": block * per_image,
            "keys/values build batch": min(build, block) * per_image,
            "keys/values gathered for one fusion batch": 2 * batch * tokens * width * b,
            "similarities of one query chunk": min(CHUNK, q_local) * g * 21,
            "top-k indices and ITM scores": q_local * k * 12,
            "open-set membership test of one query chunk": min(CHUNK, q_local) * k * k,
        }
        est = EvalMemory(split, lang, g, q_local, processes, budget, math.ceil(needed / per_block), buffers)
        if best is None or est.total > best.total:
            best = est
    if best is None:
        raise ValueError("no evaluation annotation file found")
    return best


def size_text(size: int) -> str:
    return f"{size / GiB:.2f} GiB" if size >= GiB else f"{size / 2**20:.1f} MiB"


def report(cfg: Config) -> str:
    """The ``--check`` lines: the estimate, and a warning when it exceeds the memory available now (CPU)."""
    est = estimate(cfg)
    lines = [f"evaluation memory per process (estimate; largest set: {est.split} {est.lang}, {est.gallery:,} "
             f"gallery images, {est.queries:,} queries per process, {est.processes} process(es)):"]
    lines += [f"  {name:<44}{size_text(size):>12}" for name, size in est.buffers.items()]
    lines.append(f"  {'total':<44}{size_text(est.total):>12} (plus the model and one batch's activations)")
    lines.append(f"  key/value cache budget {size_text(est.budget)} per process, {est.blocks} block(s)")
    if cfg.device == "cpu" and est.total > available_memory():
        lines.append(f"warning: this is more than the {available_memory() / GiB:.1f} GiB of memory available now")
    return "\n".join(lines)


__all__ = ["EvalMemory", "estimate", "eval_sets", "report"]
