"""A fixed-seed CPU run pinned by a committed golden file (tests/golden/fixed_seed_run.json).

The demo model (config/demo.yaml: width 128, 3 vision layers, 2 text + 1 fusion layer)
trains from scratch with all four losses and upstream's hard ITM negatives for 2 epochs
of 3 steps on a small synthetic dataset, three ways: one process, a 2-process torchrun
(gloo), and one process with ``distributed.virtual_processes=2``; a fourth run is the
demo's ITC-only stage 1 (shell/demo.sh's overrides). Every step's logged loss
terms and every final weight are recorded, so a refactor that changes any number shows.

Record anew (only when a change is meant to alter the numbers, with the reason in the
commit): ``python -m tests.golden_run --record``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "fixed_seed_run.json"
STAGE1 = ["itm.weight=0", "mlm.is_mlm=false", "mim.use_mim=false", "schedule.lr=1e-3", "schedule.lr_end=3e-4"]
RUNS = {"single": (1, []), "torchrun2": (2, []), "virtual2": (1, ["distributed.virtual_processes=2"]),
        "stage1": (1, STAGE1)}


def make_data(out: Path) -> Path:
    from synthetic.generate import generate

    generate(out, seed=7, train_ids=12, val_ids=2, test_ids=2, images_per_id=2, size=(128, 64), hidden_size=128,
             processes=1)
    return out


def overrides(data: Path, out: Path) -> list[str]:
    return [f"model.saved_path={out}", "model.resume=", f"text_encoder={data / 'text_encoder'}",
            f"anno_dir={data / 'annos'}", f"image_dir={data / 'imgs'}", "itm.negatives=hard",
            "schedule.epoch=2", "schedule.steps_per_epoch=3", "schedule.epoch_warmup=1", "data.batch_size=8",
            "data.test_batch_size=8", "log.print_period=1", "misc.seed=11"]


def run(name: str, data: Path, out: Path) -> dict[str, Any]:
    """Train one way; the logged losses per step and a digest of every final weight."""
    nproc, extra = RUNS[name]
    args = ["main.py", "--config", "config/demo.yaml", *overrides(data, out), *extra]
    cmd = [sys.executable, *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"{name} run failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [{k: v for k, v in rec.items() if k not in ("kind", "time", "samples_per_s")}
             for rec in records if rec.get("kind") == "step"]
    return {"steps": steps, "weights": weight_digest(out / "checkpoint_last.pth")}


def weight_digest(path: Path) -> dict[str, list]:
    """Per tensor: float64 sum, sum of squares and the SHA-256 of its bytes."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    digest = {}
    for k, t in sorted(state.items()):
        a = t.detach().cpu().double().numpy()
        digest[k] = [float(a.sum()), float(np.square(a).sum()),
                     hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()]
    return digest


def run_all(tmp: Path) -> dict[str, Any]:
    data = make_data(tmp / "data")
    return {name: run(name, data, tmp / name) for name in RUNS}


def main(argv: list[str] | None = None) -> None:
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m tests.golden_run", description=__doc__.splitlines()[0])
    ap.add_argument("--record", action="store_true", help=f"write {GOLDEN.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run_all(Path(tmp))
    if args.record:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {GOLDEN}")
    else:
        print(json.dumps({k: v["steps"][-1] for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
