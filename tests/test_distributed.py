"""Process-group helpers: single-process no-ops and a real 2-process gloo job."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from utils.distributed import all_gather_no_grad, all_gather_with_grad, get_world_size, init_distributed

ROOT = Path(__file__).resolve().parents[1]


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_single_process_is_a_no_op(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = init_distributed("cuda", "nccl")  # no GPU here: falls back to the CPU, no group
    assert info.world_size == 1 and info.is_main and info.device.type in ("cpu", "cuda")
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x and torch.equal(all_gather_no_grad(x), x) and get_world_size() == 1


def test_two_process_gather_values_and_gradients_repeatedly():
    for attempt in range(3):  # the job must also exit 0 reliably
        r = torchrun(ROOT / "tests" / "dist_scripts" / "gather_check.py")
        assert r.returncode == 0, f"attempt {attempt}: rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
        assert "rank 0 ok" in r.stdout and "rank 1 ok" in r.stdout
