"""Training-step throughput, peak memory and model FLOPs utilisation (MFU), with and
without gradient checkpointing, for config/demo.yaml and the full-size model.

    python -m benchmarks.train_step [--sizes demo full] [--steps 3] [--full-batch 2] [--threads 1] [--compile]

Each case (size x ``model.grad_checkpointing``, and with ``--compile`` also ``model.compile``
without checkpointing) runs in its own process, so peak memory is
that case's alone. A case builds the model, runs one warm-up step (it allocates the AdamW
state), resets the peak-memory mark, times ``--steps`` steps (the trainer's own
engine.step.TrainStep: forward with every configured loss, backward, gradient clipping
when configured, AdamW and lr-schedule step), then counts
the FLOPs of one more step with ``torch.utils.flop_counter`` (attention through the
math kernel so that it is counted). MFU = model FLOPs per step (counted without
checkpointing, whose recomputation is overhead, not model work) / (median step time x
the best fp32 matmul rate measured in the same process).

Inputs: demo = one real batch of ``data.batch_size`` from the training loader over
``--data`` (runs/synthetic, made by ``python -m synthetic --out runs/synthetic``);
full = config/config.yaml with an xlm-roberta-base-shaped config.json and a tiny tokenizer
(random weights), ``--full-batch`` random 224x224 images and two 77-token captions each.
Memory is the process's resident set (VmRSS; VmHWM after a reset through
/proc/self/clear_refs).
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
from benchmarks.rerank import matmul_rate
from engine.step import build_train_step
from model import build_model
from tests.model_fixtures import write_text_config, write_tokenizer
from utils.config import load_config


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def options(checkpointing: bool, compiled: bool) -> list[str]:
    return [f"model.grad_checkpointing={str(checkpointing).lower()}", f"model.compile={str(compiled).lower()}"]


def demo_inputs(data: str, checkpointing: bool, compiled: bool):
    from data.loader import build_train_loader

    cfg = load_config("config/demo.yaml", [f"anno_dir={data}/annos", f"image_dir={data}/imgs",
                                           f"text_encoder={data}/text_encoder", "data.num_workers=0",
                                           *options(checkpointing, compiled)])
    model, tokenizer = build_model(cfg)
    batch = next(iter(build_train_loader(cfg, tokenizer)))
    return cfg, model, batch


def full_inputs(batch_size: int, checkpointing: bool, compiled: bool):
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        write_text_config(Path(tmp))
        cfg = load_config("config/config.yaml", [f"text_encoder={tmp}", "model.resume=", "device=cpu",
                                                 *options(checkpointing, compiled)])
        model, _ = build_model(cfg)
    vocab = model.text_encoder.config.vocab_size
    return cfg, model, random_batch(cfg, batch_size, 77, vocab, vocab - 1)


def run_case(size: str, checkpointing: bool, compiled: bool, steps: int, full_batch: int,
             data: str) -> dict[str, float]:
    """One case in this process; returns its figures (``first_s``: the warm-up step, which
    compiles when ``compiled``)."""
    torch.manual_seed(0)
    inputs = (data,) if size == "demo" else (full_batch,)
    cfg, model, batch = (demo_inputs if size == "demo" else full_inputs)(*inputs, checkpointing, compiled)
    batch = {k: v for k, v in batch.items() if k != "index"}
    train_step = build_train_step(cfg, model, torch.device("cpu"), steps_per_epoch=steps + 2)
    model.train()

    def step() -> None:
        train_step(batch, 0)

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    resident, _ = rss_gib()
    reset_peak()
    times, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    _, peak = rss_gib()
    flops = 0
    if not checkpointing and not compiled:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    n = len(batch["pids"])
    return {"batch": n, "step_s": statistics.median(times), "cpu_s": statistics.median(cpu),
            "samples_per_s": n / statistics.median(times), "resident_gib": resident, "peak_gib": peak,
            "flops": flops, "rate": matmul_rate(), "first_s": first}


def run_in_subprocess(args: argparse.Namespace, size: str, ckpt: bool, compiled: bool) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--case", f"{size}:{int(ckpt)}:{int(compiled)}",
                          "--steps", str(args.steps), "--full-batch", str(args.full_batch),
                          "--data", args.data, "--threads", str(args.threads)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def report_size(args: argparse.Namespace, size: str) -> None:
    """The cases of one model size, one row each, then what checkpointing and compiling change."""
    model_flops, rows = 0, {}
    cases = [(False, False), (True, False)] + ([(False, True)] if args.compile else [])
    for ckpt, compiled in cases:
        r = rows[ckpt, compiled] = run_in_subprocess(args, size, ckpt, compiled)
        model_flops = r["flops"] or model_flops
        mfu = model_flops / (r["step_s"] * r["rate"])
        name = f"{size} {'checkpointing' if ckpt else 'compiled' if compiled else 'eager'}"
        print(f"{name:<22}{r['batch']:>6}{r['step_s']:>9.2f}{r['cpu_s']:>8.2f}{r['samples_per_s']:>11.2f}"
              f"{model_flops / 1e9:>12.1f}{mfu:>7.1%}{r['resident_gib']:>14.2f}{r['peak_gib']:>15.2f}"
              f"{r['first_s']:>9.1f}   (matmul rate {r['rate'] / 1e9:.0f} GFLOP/s)", flush=True)
    eager = rows[False, False]
    print(f"{size}: gradient checkpointing lowers the step's peak resident memory by "
          f"{eager['peak_gib'] - rows[True, False]['peak_gib']:.2f} GiB")
    if args.compile:
        c = rows[False, True]
        print(f"{size}: model.compile step time / eager: {c['step_s'] / eager['step_s']:.2f} "
              f"(first step, compiling: {c['first_s']:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=("demo", "full"), default=["demo", "full"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--full-batch", type=int, default=2)
    parser.add_argument("--data", default="runs/synthetic", help="synthetic dataset for the demo config")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 keeps the figures stable when other jobs share the cores")
    parser.add_argument("--compile", action="store_true", help="also time model.compile (inductor) without checkpointing")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: "size:ckpt:compile", run one case, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        size, ckpt, compiled = args.case.split(":")
        print(json.dumps(run_case(size, ckpt == "1", compiled == "1", args.steps, args.full_batch, args.data)))
        return
    print(f"{args.threads} thread(s), {args.steps} timed steps per case")
    print(f"{'case':<22}{'batch':>6}{'step s':>9}{'CPU s':>8}{'samples/s':>11}{'GFLOP/step':>12}"
          f"{'MFU':>7}{'resident GiB':>14}{'step peak GiB':>15}{'first s':>9}")
    for size in args.sizes:
        report_size(args, size)


if __name__ == "__main__":
    main()
