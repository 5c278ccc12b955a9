"""Shared helpers of the data tests: a tiny synthetic dataset, configs pointing at it, raw files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.synthetic import generate
from utils.config import Config

SIZE = (32, 16)  # H x W of the tiny images; patch 8 -> a 4 x 2 grid


def make_synthetic(root: Path, seed: int = 0, **sizes) -> Path:
    """A tiny synthetic dataset (4 train ids, 1 val id, 3 test ids, 2 images each, 32x16)."""
    kw = {"train_ids": 4, "val_ids": 1, "test_ids": 3, "images_per_id": 2, "size": SIZE, "hidden_size": 32,
          "processes": 1}
    kw.update(sizes)
    generate(root, seed=seed, **kw)
    return root


def make_config(root: Path, **data) -> Config:
    """A Config for the dataset under ``root`` at the tiny resolution."""
    cfg = Config()
    cfg.anno_dir, cfg.image_dir, cfg.text_encoder = str(root / "annos"), str(root / "imgs"), str(root / "text_encoder")
    cfg.experiment.input_resolution = list(SIZE)
    cfg.experiment.text_length = 32
    cfg.patch_size = 8
    cfg.data.batch_size = 4
    cfg.data.num_workers = 0
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return cfg


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def tokenizer(synthetic_root):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(synthetic_root / "text_encoder"))
