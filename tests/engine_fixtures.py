"""A tiny synthetic dataset and tiny-model configs for end-to-end engine tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """12 train / 4 val / 6 test identities x 3 views at 32x16, text width 32, no dropout."""
    from data.synthetic import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, seed=3, train_ids=12, val_ids=4, test_ids=6, images_per_id=3, size=(32, 16), hidden_size=32,
             processes=1)
    cfg_path = out / "text_encoder" / "config.json"
    text_cfg = json.loads(cfg_path.read_text())
    text_cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, intermediate_size=64)
    cfg_path.write_text(json.dumps(text_cfg))
    (out / "vision.json").write_text(json.dumps({"vision_width": 32, "patch_size": 8, "depth": 1, "num_heads": 2,
                                                 "mlp_ratio": 2.0, "drop_path_rate": 0.0}))
    return out


def tiny_config(data_dir: Path, out: Path, name: str = "config.yaml", **sections: dict[str, Any]) -> Path:
    """Write a YAML config for a 1+1-layer model on ``data``; ``sections`` update its sections."""
    raw: dict[str, Any] = {
        "device": "cpu",
        "misc": {"seed": 5},
        "experiment": {"input_resolution": [32, 16], "text_length": 24},
        "schedule": {"lr": 1e-3, "epoch": 2, "epoch_warmup": 1, "lr_start": 1e-4, "lr_end": 1e-4},
        "model": {"saved_path": str(out), "embed_dim": 16, "k_test": 4},
        "itm": {"weight": 1.0}, "mim": {"weight": 1.0},
        "vision_config": str(data_dir / "vision.json"), "image_res": 32, "patch_size": 8,
        "text_encoder": str(data_dir / "text_encoder"), "text_num_hidden_layers": 2, "text_fusion_start_at": 1,
        "log": {"print_period": 1},
        "data": {"batch_size": 8, "test_batch_size": 16, "num_workers": 0},
        "distributed": {"backend": "gloo"},
        "anno_dir": str(data_dir / "annos"), "image_dir": str(data_dir / "imgs"),
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}_{name}"
    path.write_text(yaml.safe_dump(raw))
    return path


def edit_annos(data: Path, split: str, lang: str, fn) -> Path:
    """Apply ``fn`` to the entries of one annotation file of ``data`` (a test's private copy)."""
    path = data / "annos" / f"{split}_reid_{lang}.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    fn(entries)
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def main_cmd(*args: str, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "main.py", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "main.py", *args]


def run_main(*args: str, nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(main_cmd(*args, nproc=nproc), cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=timeout)
    return r


def kill_when(args: list[str], log: Path, predicate, timeout: float = 300) -> int:
    """Start main.py, SIGKILL it as soon as ``predicate(records)`` holds for its JSONL log."""
    proc = subprocess.Popen(main_cmd(*args), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.is_file():
                records = [json.loads(line) for line in log.read_text().splitlines() if line.strip().endswith("}")]
                if predicate(records):
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and time.time() >= deadline:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.wait()


def load_weights(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["model"]
