"""AdamW parameter groups and the per-iteration learning-rate schedule (SPEC §7)."""
from __future__ import annotations

import math

import torch
from torch import nn

from utils.config import Schedule

# Parameters that train at lr * ratio_factor: cross-attention and the heads that the
# pretrained checkpoint does not provide.
RATIO_KEYS = ("crossattention", "tl_text_proj", "mim_head", "mask_token", "classifier")


def no_decay(name: str, p: nn.Parameter) -> bool:
    return p.ndim <= 1 or name.endswith(".bias")


def build_optimizer(model: nn.Module, s: Schedule) -> torch.optim.AdamW:
    """AdamW with four groups: (decay or not) x (base lr or lr * ratio_factor).

    Each group keeps its own base ``lr``; the schedule multiplies every group by the same
    factor, so the ratio between groups holds throughout training.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (no_decay(name, p), any(k in name for k in RATIO_KEYS))
        groups.setdefault(key, []).append(p)
    param_groups = [{"params": ps, "weight_decay": 0.0 if nd else s.weight_decay,
                     "lr": s.lr * (s.ratio_factor if ratio else 1.0)}
                    for (nd, ratio), ps in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=s.lr, betas=tuple(s.betas), eps=s.eps)


def lr_at(step: int, s: Schedule, steps_per_epoch: int) -> float:
    """Learning rate at iteration ``step``: linear warm-up lr_start -> lr over
    ``epoch_warmup`` epochs, then cosine lr -> lr_end until the last iteration."""
    warm = s.epoch_warmup * steps_per_epoch
    total = s.epoch * steps_per_epoch
    if step < warm:
        return s.lr_start + (s.lr - s.lr_start) * step / warm
    span = max(1, total - warm)
    progress = min(1.0, (step - warm) / span)
    return s.lr_end + 0.5 * (s.lr - s.lr_end) * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, s: Schedule, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, s, steps_per_epoch) / s.lr)
