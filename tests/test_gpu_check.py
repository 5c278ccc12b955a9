"""benchmarks/gpu_check: what a machine without CUDA can check (the rest runs on the first GPU
lent): the script stops at once with one line, and the markdown table is built from the
parts' records, its exit code saying whether every part passed."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs the whole check")
def test_no_cuda_is_one_line_and_non_zero() -> None:
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and lines[0].startswith("gpu_check: no CUDA device"), lines


def test_table_from_records(tmp_path, capsys) -> None:
    records = [{"part": "tests", "case": "cuda", "status": "3 passed"},
               {"part": "step", "case": "fp16", "batch": 32, "step_ms": 412.5, "samples_per_s": 77.6,
                "peak_gib": 31.2, "status": "ok"},
               {"part": "step", "case": "fp32 compile", "status": "timeout"},
               {"part": "nccl", "case": "1 process", "main_s": 41.0, "time_s": 44.2, "status": "pass"}]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records) + "not a record\n")
    args = gpu_check.parse_args(["table", str(results), "--setup", "12 s", "--parts-s", "300"])
    assert gpu_check.table(args) == 1  # the compile case timed out
    out = capsys.readouterr().out
    assert "CUDA tests (`python -m pytest -q -m cuda`): 3 passed" in out
    assert "| fp16 | 412.5 | 77.6 | 31.2 | ok |" in out and "| fp32 compile |  |  |  | timeout |" in out
    assert "NCCL (1 process): main.py trains a tiny model 3 steps and evaluates it in 41.0 s" in out
    results.write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    assert gpu_check.table(args) == 0
