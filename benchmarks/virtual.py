"""Virtual processes: time and peak memory of one step, V=1 with batch 2B against V=2 with batch B.

    python -m benchmarks.virtual [--batch 32] [--steps 3] [--text-len 48] [--threads 1]

Both cases train on the same global batch of 2B samples (the demo model of
config/demo.yaml, random images and captions; a throw-away tokenizer and config.json of
the demo's text width), with every configured loss, in their own process so that each
peak is its own. A step is the trainer's own (engine.step.TrainStep): forward, backward
(for V=2: the no-grad feature pass, then one micro-batch at a time), AdamW step. Memory is
the resident set (VmRSS; VmHWM after a reset through /proc/self/clear_refs): "resident"
once the model is built, "step peak" over a warm-up step and the timed steps (so
"peak - resident" is the step's activations, gradients and AdamW state).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.model_size import random_batch, rss_gib
from engine.step import build_train_step
from model import build_model
from tests.model_fixtures import write_text_config, write_tokenizer
from utils.config import load_config


def run_case(virtual: int, batch: int, steps: int, text_len: int) -> dict[str, float]:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        write_text_config(Path(tmp), hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
                          intermediate_size=512, vocab_size=4000)
        cfg = load_config("config/demo.yaml", [f"text_encoder={tmp}", "model.resume=", "device=cpu",
                                               f"data.batch_size={batch}", f"distributed.virtual_processes={virtual}"])
        model, _ = build_model(cfg)
    inputs = random_batch(cfg, batch * virtual, text_len, 4000, 3999)
    train_step = build_train_step(cfg, model, torch.device("cpu"), steps_per_epoch=steps + 1)
    model.train()

    def step(i: int) -> None:
        train_step(inputs, i)

    resident, _ = rss_gib()
    Path("/proc/self/clear_refs").write_text("5")
    step(0)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(i + 1)
        times.append(time.perf_counter() - t)
    _, peak = rss_gib()
    return {"step_s": statistics.median(times), "resident_gib": resident, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="B: per-(virtual) process batch")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--text-len", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: "V:batch", run one case, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        v, b = map(int, args.case.split(":"))
        print(json.dumps(run_case(v, b, args.steps, args.text_len)))
        return
    print(f"demo model, global batch {2 * args.batch}, {args.steps} timed steps, {args.threads} thread(s)")
    print(f"{'case':<18}{'step s':>9}{'resident GiB':>14}{'step peak GiB':>15}{'peak - resident':>17}")
    rows = {}
    for v, b in ((1, 2 * args.batch), (2, args.batch)):
        out = subprocess.run([sys.executable, "-m", "benchmarks.virtual", "--case", f"{v}:{b}", "--steps",
                              str(args.steps), "--text-len", str(args.text_len), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        r = rows[v] = json.loads(out.strip().splitlines()[-1])
        print(f"{f'V={v} batch {b}':<18}{r['step_s']:>9.2f}{r['resident_gib']:>14.2f}{r['peak_gib']:>15.2f}"
              f"{r['peak_gib'] - r['resident_gib']:>17.2f}", flush=True)
    extra = (rows[1]["peak_gib"] - rows[1]["resident_gib"]) / max(rows[2]["peak_gib"] - rows[2]["resident_gib"], 1e-9)
    print(f"V=2 / V=1: time x{rows[2]['step_s'] / rows[1]['step_s']:.2f}, step memory above resident "
          f"x{1 / extra:.2f}")


if __name__ == "__main__":
    main()
