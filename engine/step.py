"""One training step: forward, backward and optimizer update, for every caller.

The trainer, virtual processes and the speed benchmarks all run :class:`TrainStep`. With
``distributed.virtual_processes: V`` each real process receives V consecutive
per-process batches of ``data.batch_size`` (the GlobalBatchSampler slice of a W x V run)
and the update equals that of W x V real processes (``world size`` W); V = 1 is the
plain step of one process:

* ITC / SDM need every virtual process's features. For V > 1 a no-grad pass computes the
  features of the V micro-batches (the same random numbers as the training pass: each
  (step, process) has its own seed, see :func:`seed_step`), and the objective computes
  the contrastive losses over the whole global batch and the gradient each micro-batch
  must carry back (``BiIRRALoss.contrast_grads``: the gradient-cache technique).
* ITM hard negatives, D-MIM masks (collate groups) and MLM masks are drawn per micro-batch,
  as per real process; MLM is normalised by the mean masked-token count over all W x V.
* Each micro-batch back-propagates its own loss, as a real process does (so under fp16 its
  activation gradients have a real process's magnitude and overflow exactly when a real
  process's would); gradients accumulate (DDP synchronises on the last micro-batch only)
  and are divided by V before the update: the mean over W x V processes.

Cost of V > 1: one extra no-grad pass of the image and text encoders per micro-batch;
memory: one micro-batch's activations plus the [W V B, E] features.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from engine.amp import autocast, grad_scaler, train_dtype
from engine.optim import build_optimizer, build_scheduler
from model.bi_irra import BiIRRA
from model.objective import BiIRRALoss, ContrastGrad, TrainingModule
from utils.config import Config, ConfigError
from utils.distributed import get_rank, get_world_size, is_dist

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
    if parts == 1:
        return [batch]
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


def check_finite(losses: dict[str, torch.Tensor]) -> str | None:
    """Name of the first non-finite loss term on any process, or None."""
    bad = torch.tensor([0.0 if torch.isfinite(v).all() else 1.0 for v in losses.values()],
                       device=next(iter(losses.values())).device)
    if is_dist():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    names = [n for n, b in zip(losses, bad.tolist()) if b]
    return names[0] if names else None


@dataclass
class StepResult:
    """The losses to log (contrastive ones over the global batch, the others averaged over
    micro-batches) and the first non-finite term, if any (then nothing was updated).
    ``overflow``: fp16 gradients overflowed, so the GradScaler skipped the optimizer step and
    halved its scale (the schedule still moved, as upstream's does)."""
    losses: dict[str, torch.Tensor]
    bad: str | None = None
    overflow: bool = False


class TrainStep:
    """Forward, backward and update of one optimizer step over V (virtual) processes."""

    def __init__(self, cfg: Config, model: BiIRRA, objective: BiIRRALoss, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                 dtype: torch.dtype | None, device: torch.device) -> None:
        self.cfg, self.model, self.objective = cfg, model, objective
        self.optimizer, self.scheduler, self.scaler, self.dtype = optimizer, scheduler, scaler, dtype
        self.device = device
        self.v = cfg.distributed.virtual_processes
        module = TrainingModule(model, objective)
        self.module: nn.Module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None) \
            if is_dist() else module

    def process(self, v: int) -> int:
        """Index of virtual process ``v`` among all W x V: the rank a real W x V run would give it."""
        return get_rank() * self.v + v

    @torch.no_grad()
    def features(self, micros: list[dict[str, torch.Tensor]], step: int) -> list[torch.Tensor]:
        """Normalised image, source and target features of every micro-batch, as the training pass will compute them."""
        parts = []
        for v, micro in enumerate(micros):
            seed_step(self.cfg.misc.seed, step, self.process(v))
            with autocast(self.device, self.dtype):
                parts.append(self.model.encode_batch(micro).features())
        return [torch.cat([p[i] for p in parts]).float() for i in range(3)]

    def contrast_grads(self, micros: list[dict[str, torch.Tensor]], step: int
                       ) -> tuple[list[ContrastGrad] | None, dict[str, torch.Tensor], bool]:
        """For V > 1 with ``model.use_gather``: each micro-batch's contrastive gradient, the
        global contrastive losses and whether the (fp16, scaled) gradient overflowed;
        otherwise the micro-batches compute their own."""
        if self.v == 1 or not self.cfg.model.use_gather:
            return None, {}, False
        pids = torch.cat([m["pids"] for m in micros])
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        return self.objective.contrast_grads(self.model, self.features(micros, step), pids, self.v,
                                             autocast(self.device, self.dtype), scale)

    def forward_backward(self, batch: dict[str, torch.Tensor], step: int) -> StepResult:
        """Accumulate the step's gradients (nothing more is back-propagated after a non-finite term)."""
        micros = split_micro(batch, self.v)
        counts = mlm_counts(micros) if self.v > 1 else None
        grads, logged, overflow = self.contrast_grads(micros, step)
        bad = check_finite(logged) if logged else None
        if bad is None and overflow and not self.scaler.is_enabled():
            bad = "itc"  # a non-finite contrastive gradient with no loss scaling to absorb it
        if bad is not None:
            return StepResult(logged, bad)
        totals: dict[str, torch.Tensor] = {}
        for v, micro in enumerate(micros):
            seed_step(self.cfg.misc.seed, step, self.process(v))
            sync = v == self.v - 1 or not is_dist()
            with contextlib.nullcontext() if sync else self.module.no_sync():
                with autocast(self.device, self.dtype):
                    losses = self.module(micro, contrast=None if grads is None else grads[v], mlm_counts=counts)
                bad = check_finite(losses)
                if bad is not None:
                    return StepResult(losses, bad)
                self.scaler.scale(sum(losses.values())).backward()
            for k, val in losses.items():
                totals[k] = totals.get(k, 0.0) + val.detach() / self.v
        if self.v > 1:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            for g in grads:
                g.div_(self.v)
            if overflow:  # what the real processes' gradients would hold: the scaler skips the step
                grads[0].fill_(float("inf"))
        return StepResult({**totals, **logged})

    def __call__(self, batch: dict[str, torch.Tensor], step: int) -> StepResult:
        """Gradients, clipping (``schedule.grad_clip``), optimizer and scheduler step. After a
        non-finite term nothing is updated: the caller stops or calls :meth:`skip`."""
        optimizer, scaler = self.optimizer, self.scaler
        optimizer.zero_grad(set_to_none=True)
        result = self.forward_backward(batch, step)
        if result.bad is not None:
            return result
        if self.cfg.schedule.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.schedule.grad_clip)
        scale = scaler.get_scale() if scaler.is_enabled() else 0.0
        scaler.step(optimizer)
        scaler.update()
        self.scheduler.step()
        result.overflow = scaler.is_enabled() and scaler.get_scale() < scale
        return result

    def skip(self) -> None:
        """Drop a step's gradients but keep the schedule moving (``schedule.skip_nonfinite``)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()


def check_compile(cfg: Config, device_type: str, backend: str = "inductor") -> None:
    """``model.compile`` refused with one line where torch.compile cannot work: no TorchDynamo
    for this Python, or no C++ compiler for inductor's CPU code (training and ``--check`` call it)."""
    if not cfg.model.compile:
        return
    where = f"{cfg.source}: key 'model.compile' is true but"
    if cfg.distributed.virtual_processes > 1:  # the gradient cache needs both passes to draw the same dropout
        raise ConfigError(f"{where} distributed.virtual_processes is {cfg.distributed.virtual_processes}: compiled "
                          "graphs need not draw the no-grad feature pass's dropout in the training pass, which the "
                          "gradient cache relies on; set one of them off")
    if not torch._dynamo.is_dynamo_supported():
        raise ConfigError(f"{where} torch.compile does not support this Python ({sys.version.split()[0]}); "
                          "set model.compile=false")
    cxx = os.environ.get("CXX", "g++")
    if backend == "inductor" and device_type == "cpu" and not shutil.which(cxx):
        raise ConfigError(f"{where} no C++ compiler ({cxx}) is on the PATH for the CPU backend; install one "
                          "(Debian: apt-get install g++) or set model.compile=false")


def compile_model(model: BiIRRA, backend: str = "inductor") -> None:
    """Compile the encoders and the fusion layers in place: ``nn.Module.compile`` keeps the
    parameter names, so checkpoints do not change. The first steps are slow (compilation)."""
    for part in (model.vision_encoder, model.text_encoder, model.cross_encoder):
        part.compile(backend=backend)


def build_train_step(cfg: Config, model: BiIRRA, device: torch.device, steps_per_epoch: int) -> TrainStep:
    """The objective of ``cfg`` (its unused parts frozen first, so the optimizer and DDP never
    see them), AdamW with its parameter groups, the lr schedule, the AMP scaler, and the step;
    with ``model.compile`` the model is compiled first."""
    if cfg.model.compile:
        check_compile(cfg, device.type)
        compile_model(model)
    objective = BiIRRALoss(cfg)
    objective.freeze_unused(model)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps_per_epoch)
    dtype = train_dtype(cfg, device)
    return TrainStep(cfg, model, objective, optimizer, scheduler, grad_scaler(device, dtype), dtype, device)


__all__ = ["TrainStep", "StepResult", "build_train_step", "check_compile", "compile_model", "seed_step",
           "split_micro", "mlm_counts", "check_finite"]
