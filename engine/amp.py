"""Mixed precision of training (``schedule.amp``) and evaluation (``model.eval_amp``).

Upstream trains under ``torch.autocast('cuda')`` (fp16) with a GradScaler and evaluates
in fp32; both are the defaults on CUDA. On the CPU everything runs in fp32 unless
``schedule.cpu_amp`` asks for the same mechanism there (``torch.autocast('cpu')`` and
``torch.amp.GradScaler('cpu')``), to check a configuration's mixed-precision path
without a GPU; it is slower than fp32 on most CPUs.
"""
from __future__ import annotations

import contextlib

import torch

from utils.config import Config

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def train_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the training step: ``schedule.amp`` on CUDA (and on the CPU with
    ``schedule.cpu_amp``), else None (fp32)."""
    return DTYPES[cfg.schedule.amp] if device.type == "cuda" or cfg.schedule.cpu_amp else None


def eval_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of evaluation: None (fp32, upstream) unless ``model.eval_amp``."""
    return train_dtype(cfg, device) if cfg.model.eval_amp else None


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return dtype == torch.float16


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The loss scaler of ``device``'s type, enabled for fp16 only (a disabled one is a no-op)."""
    return torch.amp.GradScaler(device.type, enabled=needs_grad_scaler(dtype))


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast(device.type, dtype)``, or nothing when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
