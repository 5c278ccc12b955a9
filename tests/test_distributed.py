"""Process-group helpers: single-process no-ops and a real 2-process gloo job."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.distributed import DistInfo, all_gather_no_grad, all_gather_with_grad, get_world_size, init_distributed

ROOT = Path(__file__).resolve().parents[1]


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(script), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_single_process_is_a_no_op(monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert init_distributed("cpu", "nccl") == DistInfo(0, 0, 1, torch.device("cpu"))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert init_distributed("cuda", "nccl") == DistInfo(0, 0, 1, torch.device("cpu"))  # no GPU: the CPU, and a warning
    assert capsys.readouterr().err == "warning: CUDA is not available; running on the CPU\n"
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x and torch.equal(all_gather_no_grad(x), x) and get_world_size() == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_single_process_uses_the_gpu(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert init_distributed("cuda", "nccl") == DistInfo(0, 0, 1, torch.device("cuda"))


@pytest.mark.slow
def test_two_process_gather_values_and_gradients_repeatedly():
    for attempt in range(3):  # the job must also exit 0 reliably
        r = torchrun(ROOT / "tests" / "dist_scripts" / "gather_check.py")
        assert r.returncode == 0, f"attempt {attempt}: rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
        assert "rank 0 ok" in r.stdout and "rank 1 ok" in r.stdout


@pytest.mark.slow
def test_evaluation_with_fewer_gallery_images_than_processes():
    r = torchrun(ROOT / "tests" / "dist_scripts" / "tiny_gallery.py")
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}"
    assert "rank 0 ok" in r.stdout and "rank 1 ok" in r.stdout
