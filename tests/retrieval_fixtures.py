"""One briefly trained tiny model shared by the retrieval, search CLI and report tests.

``main.py`` trains it (in a subprocess, as a user would) on a synthetic dataset of 12
training identities x 3 images, then evaluates it on 6 test identities, which also
writes metrics.json, report.md, cmc.png and examples.png. A few hundred steps on a CPU do
not make a tiny model generalise to new people, so the search tests query the training
images with their training captions: retrieval must then work, since that is what the
model was fit to. The recipe that makes it fit in about 30 s (one thread): ITM weighted 4
(as published) and two fusion layers so that the re-ranker learns too (with one, or with a
higher learning rate, the ITM head stays at chance within this budget and re-ranking
shuffles the top k), MLM and D-MIM off, and no dropout. It puts the right person in the
top 4 for every training caption, in both languages, with re-ranking (R1 about 80%).

Import the fixtures into a test module (``from tests.retrieval_fixtures import trained_run``; ``one_thread`` comes from conftest.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 32)  # image height x width; patch 8 -> a 8 x 4 grid


@dataclass(frozen=True)
class TrainedRun:
    data: Path  # synthetic dataset: imgs/, annos/, text_encoder/
    run: Path  # main.py's output folder
    checkpoint: Path  # the last epoch's weights (best_<lang>.pth are selected on unseen test ids)
    seconds: float  # wall time of main.py

    def train_entries(self, lang: str) -> list[dict]:
        return json.loads((self.data / "annos" / f"train_reid_{lang}.json").read_text(encoding="utf-8"))

    def easy_query(self) -> tuple[int, int]:
        """(entry index, caption index) of the query the tests search for: the first training caption."""
        return 0, 0


def write_config(data: Path, out: Path) -> Path:
    (data / "vision.json").write_text(json.dumps({"vision_width": 64, "patch_size": 8, "depth": 2, "num_heads": 2,
                                                  "mlp_ratio": 2.0, "drop_path_rate": 0.0}))
    text_cfg = data / "text_encoder" / "config.json"
    raw = json.loads(text_cfg.read_text())
    raw.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    text_cfg.write_text(json.dumps(raw, indent=2))
    cfg = {
        "device": "cpu",
        "misc": {"seed": 1},
        "experiment": {"input_resolution": list(SIZE), "text_length": 48},
        "schedule": {"lr": 2e-3, "epoch": 60, "epoch_warmup": 1, "lr_start": 1e-4, "lr_end": 1e-4, "grad_clip": 5.0},
        "model": {"resume": "", "saved_path": str(out), "embed_dim": 32, "k_test": 8},
        "itm": {"weight": 4.0, "use_mask": False},
        "mim": {"use_mim": False},
        "mlm": {"is_mlm": False},
        "vision_config": str(data / "vision.json"),
        "image_res": SIZE[0],
        "patch_size": 8,
        "text_encoder": str(data / "text_encoder"),
        "text_num_hidden_layers": 3,
        "text_fusion_start_at": 1,
        "log": {"print_period": 2},
        "data": {"batch_size": 16, "test_batch_size": 32, "num_workers": 0},
        "distributed": {"backend": "gloo"},
        "anno_dir": str(data / "annos"),
        "image_dir": str(data / "imgs"),
    }
    path = out.parent / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def subprocess_env() -> dict[str, str]:
    """One thread: on a CPU shared with other jobs, torch's threads wait on each other (10-100x slower)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def train(root: Path) -> TrainedRun:
    from data.synthetic import generate

    data, out = root / "data", root / "run"
    generate(data, seed=0, train_ids=12, val_ids=0, test_ids=6, images_per_id=3, size=SIZE, hidden_size=64,
             processes=1)
    config = write_config(data, out)
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "main.py", "--config", str(config)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=subprocess_env())
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stderr[-3000:]
    return TrainedRun(data, out, out / "checkpoint_last.pth", seconds)


_RUNS: dict[int, TrainedRun] = {}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """Trained once per session: each test module imports this function, and pytest keeps one
    session fixture per importing module, so the run itself is cached here."""
    key = id(tmp_path_factory)
    if key not in _RUNS:
        _RUNS[key] = train(tmp_path_factory.mktemp("retrieval"))
    return _RUNS[key]
