"""The synthetic datasets of the tests and raw annotation files.

``SYNTHETIC`` lists the variants; conftest.py's ``synthetic`` fixture generates each once
per session (``synthetic_root`` and ``tiny_data`` are two of them), and ``make_synthetic``
writes a fresh one where a test needs its own folder or other arguments.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthetic.generate import generate

SIZE = (32, 16)  # H x W of the tiny images; patch 8 -> a 4 x 2 grid

# variant -> generate() arguments, and "text": changes to the generated text_encoder/config.json
SYNTHETIC: dict[str, dict[str, Any]] = {
    # data tests (synthetic_root): 4 train / 1 val / 3 test people x 2 views
    "small": {"seed": 0, "train_ids": 4, "val_ids": 1, "test_ids": 3, "images_per_id": 2, "size": SIZE,
              "hidden_size": 32},
    # main.py in the engine tests (tiny_data): 12 / 4 / 6 people x 3 views, a narrower text feed-forward
    "engine": {"seed": 3, "train_ids": 12, "val_ids": 4, "test_ids": 6, "images_per_id": 3, "size": SIZE,
               "hidden_size": 32, "text": {"intermediate_size": 64}},
    # the briefly trained retrieval model (trained_run): 12 train / 6 test people x 3 views at 64x32
    "retrieval": {"seed": 0, "train_ids": 12, "val_ids": 0, "test_ids": 6, "images_per_id": 3, "size": (64, 32),
                  "hidden_size": 64},
}


def make_synthetic(root: Path, variant: str = "small", **changes: Any) -> Path:
    """Generate variant ``variant`` of ``SYNTHETIC`` (its arguments updated by ``changes``) into ``root``."""
    kw = {**SYNTHETIC[variant], **changes}
    text = kw.pop("text", {})
    generate(root, processes=1, **kw)
    if text:
        path = root / "text_encoder" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **text}, indent=2) + "\n")
    return root


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path
