"""Mixed-precision context shared by training and evaluation."""
from __future__ import annotations

import contextlib

import torch


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA where supported, else fp16 on CUDA; None (full precision) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_for(device: torch.device):
    dtype = amp_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)
