"""main.py in a subprocess for the end-to-end engine tests, and what they read back.

They train on the ``tiny_data`` fixture (conftest.py) with configs of
``tests.model_fixtures.tiny_config_file``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
