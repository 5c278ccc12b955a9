"""Checkpoint files: atomic writes, safe (``weights_only``) reads, and the generator states they store."""
from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from utils.errors import InputError


CHECKPOINT_FORMAT = "bi-irra/1"  # the "format" entry of the checkpoints this project writes


class CheckpointError(InputError):
    """A checkpoint file that cannot be used; the message is one line naming the file."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it over ``path``.

    Readers never see a half-written file, and a crash (even SIGKILL) during the write
    leaves the previous file intact, since ``os.replace`` is atomic on POSIX file systems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def checkpoint_dict(weights: dict[str, torch.Tensor], config: dict[str, Any], num_ids: int,
                    **fields: Any) -> dict[str, Any]:
    """The layout of every checkpoint this project writes (``best_<lang>.pth``,
    ``checkpoint_last.pth``): format tag, weights, ``fields`` (training state, metrics...),
    the number of training identities (sizes the ID head) and the resolved config."""
    return {"format": CHECKPOINT_FORMAT, "model": weights, **fields, "num_ids": num_ids, "config": config}


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` atomically (see :func:`atomic_write`), fsynced so it survives a power cut."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)
    try:
        dir_fd = os.open(Path(path).parent, os.O_RDONLY)
        os.fsync(dir_fd)
        os.close(dir_fd)
    except OSError:
        pass


def load_safe(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, with one-line errors.

    Refuses pickles that would run code (``weights_only``), truncated files and files
    that are not torch checkpoints at all.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused to load (not a plain weights file; weights_only=True): {first}") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types (IndexError, EOFError, ...) for junk files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first})") from None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by this project's training (safe load), checked for its format."""
    ckpt = load_safe(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a Bi-IRRA fine-tuned checkpoint of this project "
                              "(pretrained X2-VLM checkpoints go in model.resume)")
    return ckpt


def get_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's generator states: the CPU one and, on CUDA, ``device``'s.

    A training step draws from both: dropout, drop path and the ITM hard negatives
    (``torch.multinomial``) use the generator of the device their tensors live on, and the
    DataLoader takes each epoch's worker seed from the CPU one. Data order and per-sample
    augmentation have their own seeded generators and need no state.
    """
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore what :func:`get_rng_state` returned. A checkpoint written on the CPU has no
    CUDA state: the CUDA generator then keeps its seed, and the run says so."""
    torch.set_rng_state(state["cpu"])
    if device.type != "cuda":
        return
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    else:
        print("warning: the checkpoint has no CUDA generator state (written on the CPU); "
              "random draws on the GPU differ from an uninterrupted run", file=sys.stderr)
