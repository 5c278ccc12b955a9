"""AdamW parameter groups and the per-iteration learning-rate schedule (upstream's rules; docs/fidelity.md)."""
from __future__ import annotations

import math

import torch
from torch import nn

from model.checkpoint import upstream_name
from utils.config import Config, Schedule

NO_DECAY_KEYS = ("bias", "ln", "bn")  # upstream: no weight decay for these names and for ndim < 2
RATIO_KEYS = ("cross", "classifier", "mlm_head")  # upstream: lr * ratio_factor for these names


def no_weight_decay(name: str, p: nn.Parameter) -> bool:
    """Upstream's rule on its parameter name (so ``relative_position_bias_table`` gets none)."""
    return p.ndim < 2 or any(k in name for k in NO_DECAY_KEYS)


def scaled_lr(name: str) -> bool:
    """Upstream's rule on its parameter name: cross-attention, the ID classifier, the MLM head."""
    return any(k in name for k in RATIO_KEYS)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW with up to four groups: (decay or not) x (base lr or lr * ratio_factor).

    The rules read the released code's parameter names (``upstream_name``: our fusion
    layers are its text layers ``text_fusion_start_at``...), so only cross-attention weights, not
    every fusion weight, get the lr ratio. Each group keeps its own base ``lr``; the
    schedule multiplies every group by the same factor, as upstream sets
    ``lr = schedule[it] * ratio`` per group.
    """
    s = cfg.schedule
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = upstream_name(name.removeprefix("module."), cfg.text_fusion_start_at)
        groups.setdefault((no_weight_decay(name, p), scaled_lr(name)), []).append(p)
    param_groups = [{"params": ps, "weight_decay": 0.0 if nd else s.weight_decay,
                     "lr": s.lr * (s.ratio_factor if ratio else 1.0)}
                    for (nd, ratio), ps in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=s.lr, betas=tuple(s.betas), eps=s.eps)


def lr_at(step: int, s: Schedule, steps_per_epoch: int) -> float:
    """Upstream's ``cosine_scheduler`` array at iteration ``step``.

    Warm-up: ``linspace(lr_start, lr, warm)`` over ``epoch_warmup`` epochs (reaches ``lr``
    on its last iteration); then ``lr_end + (lr - lr_end) (1 + cos(pi i / n)) / 2`` for
    i = 0..n-1 over the remaining n iterations. Steps past the end keep the last value.
    """
    warm = s.epoch_warmup * steps_per_epoch
    total = s.epoch * steps_per_epoch
    if step < warm:
        return s.lr_start + (s.lr - s.lr_start) * step / (warm - 1) if warm > 1 else s.lr_start
    n = max(1, total - warm)
    i = min(step - warm, n - 1)
    return s.lr_end + 0.5 * (s.lr - s.lr_end) * (1 + math.cos(math.pi * i / n))


def build_scheduler(optimizer: torch.optim.Optimizer, s: Schedule, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, s, steps_per_epoch) / s.lr)
