"""TensorBoard mirror of the run log (``log.tensorboard``): every numeric field of the
``log.jsonl`` records becomes a scalar under ``model.saved_path/tb/``.

The ``tensorboard`` package is optional: it is imported only when the option is on, and
:func:`require_tensorboard` lets the config checks refuse the option up front, before any
training time is spent, instead of failing at the first logged step.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

TENSORBOARD_PIN = "tensorboard==2.21.0"  # as in requirements.txt
NOT_SCALARS = ("step", "epoch", "time")  # record fields that are positions, not measurements


def tensorboard_missing() -> bool:
    """True when the ``tensorboard`` package cannot be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("tensorboard") is None
    except (ImportError, ValueError):  # a broken or blocked install counts as missing
        return True


def flatten(prefix: str, value: Any) -> dict[str, float]:
    """``{"en": {"R1": 5.0}}`` under ``eval/val`` -> ``{"eval/val/en/R1": 5.0}``; numbers only
    (bools and strings are labels, not measurements)."""
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, sub in value.items():
            out.update(flatten(f"{prefix}/{key}", sub))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


def skip_tag(record: dict[str, Any]) -> str:
    """fp16 loss-scale overflows (routine: the GradScaler finding its scale) apart from steps
    skipped for a non-finite loss (``schedule.skip_nonfinite``)."""
    return "train/overflow_skipped" if record.get("term") == "grad_overflow" else "train/skipped"


def record_scalars(record: dict[str, Any], skipped: int) -> dict[str, float]:
    """The tags and values of one log record; ``skipped``: skip records of its kind (see
    :func:`skip_tag`) seen by this process so far, this one included.

    ``step`` -> ``train/<field>``; ``eval`` -> ``eval/<split>/<lang>/<metric>`` (other
    nested fields, e.g. ``itc_metrics``, keep their name after the split); ``final`` ->
    ``<split>/<lang>/<metric>``; ``skip`` -> ``train/skipped`` or ``train/overflow_skipped``
    (running count) and ``train/loss_scale`` when the record has one; any other kind ->
    ``<kind>/<field>``.
    """
    kind = record.get("kind", "")
    fields = {k: v for k, v in record.items() if k not in ("kind", *NOT_SCALARS)}
    if kind == "step":
        return flatten("train", fields)
    if kind == "skip":
        scale = fields.get("scale")
        return {skip_tag(record): float(skipped), **({"train/loss_scale": float(scale)} if scale is not None else {})}
    if kind in ("eval", "final"):
        split = str(fields.pop("split", "unknown"))
        prefix = f"eval/{split}" if kind == "eval" else split
        out = flatten(prefix, fields.pop("metrics", {}))
        fields.pop("languages", None)  # final: which checkpoint and projection each language used
        return {**out, **flatten(prefix, fields)}
    return flatten(kind, fields)


class TensorBoardLog:
    """Scalar sink for :class:`utils.logging.JsonlLog`. Only the main process writes, so
    other ranks leave no event files; the writer (which creates the folder) opens at the
    first record, so a run refused for bad input leaves no output folder behind. Each
    record is flushed, as ``log.jsonl`` is, so a killed run keeps what it logged."""

    def __init__(self, folder: str | os.PathLike):
        from utils.distributed import is_main_process  # here: utils.config imports this module, and it imports torch

        self.folder = Path(folder)
        self.enabled = is_main_process()
        self.writer: Any = None
        self.skipped: dict[str, int] = {}  # per skip_tag, counted by this process (from 0 after a resume)
        self.last_step = 0  # the final record has no step: it is drawn at the last one seen

    def write(self, record: dict[str, Any]) -> None:
        """Add the record's scalars at its ``step`` (the last step seen when it has none)."""
        if not self.enabled:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.folder))
        count = 0
        if record.get("kind") == "skip":
            count = self.skipped[skip_tag(record)] = self.skipped.get(skip_tag(record), 0) + 1
        step = int(record.get("step", self.last_step))
        self.last_step = step
        for tag, value in record_scalars(record, count).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (safe to call twice)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
