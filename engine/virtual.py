"""Virtual processes: one real process runs V processes' shares of a step, one after another.

With ``distributed.virtual_processes: V`` each real process receives V consecutive
per-process batches of ``data.batch_size`` (the GlobalBatchSampler slice of a W x V run)
and the optimizer step equals that of W x V real processes (``world size`` W):

* ITC / SDM need every virtual process's features. A no-grad pass computes the features
  of the V micro-batches (the same random numbers as the training pass: each (step,
  process) has its own seed, see :func:`seed_step`), they are gathered over the real
  processes, and the contrastive losses and their gradients with respect to this
  process's features and the temperature are computed once, over the whole global batch.
  Each micro-batch's training pass then back-propagates ``<features, gradient>`` instead
  of the contrastive losses (the gradient-cache technique). The gradient follows
  ``model.gather_with_grad``: upstream's local slice (each virtual process back-propagates
  dL/dx of its own rows, as each upstream process does) or the summed gradient (W V times
  that, as W x V processes summing their contributions would).
* ITM hard negatives, D-MIM masks (collate groups) and MLM masks are drawn per micro-batch,
  as per real process; MLM is normalised by the mean masked-token count over all W x V.
* Every other loss of a micro-batch is scaled by 1/V; gradients accumulate (DDP
  synchronises on the last micro-batch only).

Cost: one extra no-grad pass of the image and text encoders per micro-batch; memory: one
micro-batch's activations plus the [W V B, E] features.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

from engine.amp import autocast
from model.bi_irra import BiIRRA, ContrastGrad
from utils.config import Config
from utils.distributed import all_gather_local_grad, all_gather_no_grad, get_rank, get_world_size, is_dist

CAPTION_KEYS = {"src": ("src_ids", "src_mask", "src_mlm_ids", "src_mlm_labels"),
                "tgt": ("tgt_ids", "tgt_mask", "tgt_mlm_ids", "tgt_mlm_labels")}


def seed_step(seed: int, step: int, process: int) -> None:
    """Seed torch's generators (CPU and CUDA) for one (step, process).

    Dropout and hard-negative draws then depend only on (misc.seed, step, process), so a
    virtual process draws what the real process of the same index draws, and a resumed
    run draws what the uninterrupted run drew.
    """
    torch.manual_seed(int(np.random.SeedSequence([seed, step, process]).generate_state(1, np.uint64)[0] >> 1))


def split_micro(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """``parts`` consecutive equal slices of a batch; captions trimmed to each slice's longest,
    so a slice has exactly the shapes the collate function gives a real process's batch."""
    size = batch["pids"].shape[0] // parts
    micros = []
    for v in range(parts):
        micro = {k: t[v * size:(v + 1) * size] for k, t in batch.items()}
        for lang, keys in CAPTION_KEYS.items():
            length = int(micro[f"{lang}_mask"].sum(1).max())
            for key in keys:
                if key in micro:
                    micro[key] = micro[key][:, :length]
        micros.append(micro)
    return micros


def mlm_counts(micros: list[dict[str, torch.Tensor]]) -> tuple[float, float] | None:
    """Mean masked-token counts (source, target) per process over all W x V processes."""
    if "src_mlm_labels" not in micros[0]:
        return None
    counts = torch.tensor([[float((m[f"{lang}_mlm_labels"] != -100).sum()) for lang in ("src", "tgt")]
                           for m in micros], device=micros[0]["pids"].device).sum(0)
    if is_dist():
        torch.distributed.all_reduce(counts)
    mean = counts / (get_world_size() * len(micros))
    return float(mean[0]), float(mean[1])


class VirtualProcesses:
    """Forward and backward of one training step over V virtual processes."""

    def __init__(self, cfg: Config, model: BiIRRA, ddp: nn.Module, dtype: torch.dtype | None) -> None:
        self.cfg, self.model, self.ddp, self.dtype = cfg, model, ddp, dtype
        self.v = cfg.distributed.virtual_processes

    def process(self, v: int) -> int:
        """Index of virtual process ``v`` among all W x V: the rank a real W x V run would give it."""
        return get_rank() * self.v + v

    @torch.no_grad()
    def features(self, micros: list[dict[str, torch.Tensor]], step: int) -> list[torch.Tensor]:
        """Normalised image, source and target features of every micro-batch, as the training pass will compute them."""
        parts = []
        for v, micro in enumerate(micros):
            seed_step(self.cfg.misc.seed, step, self.process(v))
            with autocast(self.dtype):
                parts.append(self.model.encode_batch(micro).features())
        return [torch.cat([p[i] for p in parts]).float() for i in range(3)]

    def contrast_grads(self, micros: list[dict[str, torch.Tensor]], step: int
                       ) -> tuple[list[ContrastGrad], dict[str, torch.Tensor]]:
        """The contrastive losses over the global batch (values to log) and, per micro-batch,
        the gradient its training pass must carry back."""
        local = [f.requires_grad_(True) for f in self.features(micros, step)]
        pids = torch.cat([m["pids"] for m in micros])
        n = local[0].shape[0]
        full = [all_gather_local_grad(f) for f in local]  # the other processes' features are constants here
        temp = self.model.temperature().detach().requires_grad_(True)
        with autocast(self.dtype):
            values = self.model.contrastive_losses(*full, all_gather_no_grad(pids), temp, use_gather=False)
        grads = torch.autograd.grad(sum(values.values()), [*local, temp])
        # per virtual process, before the 1/V that every micro-batch loss gets: upstream's local
        # slice is dL/dx itself; the summed gradient of W x V processes is W V dL/dx
        scale = float(get_world_size() * self.v) if self.cfg.model.gather_with_grad else 1.0
        size = n // self.v
        out = [ContrastGrad(*(g[v * size:(v + 1) * size] for g in grads[:3]), temp=grads[3], scale=scale)
               for v in range(self.v)]
        return out, {k: val.detach() for k, val in values.items()}

    def forward_backward(self, batch: dict[str, torch.Tensor], step: int, scaler: torch.amp.GradScaler,
                         check_finite) -> tuple[dict[str, torch.Tensor], str | None]:
        """Accumulate the step's gradients; returns the losses to log (contrastive ones over the
        global batch, the others averaged over micro-batches) and the first non-finite term
        (then nothing more is back-propagated and the caller drops the gradients)."""
        micros = split_micro(batch, self.v)
        counts = mlm_counts(micros)
        grads, logged = (None, {}) if not self.cfg.model.use_gather else self.contrast_grads(micros, step)
        totals: dict[str, torch.Tensor] = {}
        for v, micro in enumerate(micros):
            seed_step(self.cfg.misc.seed, step, self.process(v))
            sync = v == self.v - 1 or not is_dist()
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast(self.dtype):
                    losses = self.ddp(micro, contrast=None if grads is None else grads[v], mlm_counts=counts)
                bad = check_finite(losses)
                if bad is not None:
                    return losses, bad
                scaler.scale(sum(losses.values()) / self.v).backward()
            for k, val in losses.items():
                totals[k] = totals.get(k, 0.0) + val.detach() / self.v
        return {**totals, **logged}, None


__all__ = ["VirtualProcesses", "seed_step", "split_micro", "mlm_counts"]
