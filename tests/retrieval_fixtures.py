"""One briefly trained tiny model shared by the retrieval, search CLI and report tests.

``main.py`` trains it (in a subprocess, as a user would) on a synthetic dataset of 12
training identities x 3 images, then evaluates it on 6 test identities, which also
writes metrics.json, report.md, cmc.png, examples.png and explain.png. A few hundred steps
on a CPU do not make a tiny model generalise to new people, so the search tests query the training
images with their training captions: retrieval must then work, since that is what the
model was fit to. The recipe that makes it fit in about 30 s (one thread): ITM weighted 4
(as published) and two fusion layers so that the re-ranker learns too (with one, or with a
higher learning rate, the ITM head stays at chance within this budget and re-ranking
shuffles the top k), MLM and D-MIM off, and no dropout. It puts the right person in the
top 4 for every training caption, in both languages, with re-ranking (R1 about 80%).

The ``trained_run`` fixture (conftest.py) trains it once per session with ``train``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.engine_fixtures import ROOT, env
from tests.model_fixtures import tiny_config_file


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


def train(data: Path, out: Path) -> TrainedRun:
    """Train on the synthetic dataset ``data`` (its "retrieval" variant) into ``out`` with main.py."""
    config = tiny_config_file(
        data, out, resolution=(64, 32), width=64, depth=2, misc={"seed": 1}, experiment={"text_length": 48},
        schedule={"lr": 2e-3, "epoch": 60, "grad_clip": 5.0}, model={"embed_dim": 32, "k_test": 8},
        itm={"weight": 4.0, "use_mask": False}, mim={"use_mim": False, "weight": 4.0}, mlm={"is_mlm": False},
        text_num_hidden_layers=3, log={"print_period": 2}, data={"batch_size": 16, "test_batch_size": 32})
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "main.py", "--config", str(config)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=env())
    seconds = time.perf_counter() - start
    assert r.returncode == 0, r.stderr[-3000:]
    return TrainedRun(data, out, out / "checkpoint_last.pth", seconds)
