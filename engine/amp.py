"""Mixed precision of training (``schedule.amp``) and evaluation (``model.eval_amp``).

Upstream trains under ``torch.autocast('cuda')`` (fp16) with a GradScaler and evaluates
in fp32; both are the defaults. On the CPU everything runs in fp32.
"""
from __future__ import annotations

import contextlib

import torch

from utils.config import Config

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def train_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the training step: ``schedule.amp`` on CUDA, None (fp32) on the CPU."""
    return DTYPES[cfg.schedule.amp] if device.type == "cuda" else None


def eval_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of evaluation: None (fp32, upstream) unless ``model.eval_amp``."""
    return train_dtype(cfg, device) if cfg.model.eval_amp else None


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return dtype == torch.float16


def autocast(dtype: torch.dtype | None):
    """``torch.autocast('cuda', dtype)``, or nothing when ``dtype`` is None."""
    return contextlib.nullcontext() if dtype is None else torch.autocast("cuda", dtype=dtype)
