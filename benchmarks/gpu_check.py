"""The measuring parts of benchmarks/gpu_check.sh, one subcommand each, one process per case.

    python -m benchmarks.gpu_check step --amp fp16 --ckpt 0 --compile 0   # one JSON line
    python -m benchmarks.gpu_check eval                                   # one JSON line per precision
    python -m benchmarks.gpu_check nccl                                   # 1-process NCCL torchrun of main.py
    python -m benchmarks.gpu_check table RESULTS.jsonl                    # markdown for docs/benchmarks.md

Each case runs in its own process (the shell script starts them) so that an OOM, a
compile failure or a hang costs that case alone. Sizes are the published ones
(config/config.yaml: 224x224 images, batch 32 per process, text length 77, BEiT-v2 base and
an XLM-R-base-shaped text/fusion stack) with random weights and a tiny tokenizer, as in
benchmarks/train_step.py; the numbers are speed and memory, not accuracy.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import Subset, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
CUHK_IMAGES, CUHK_QUERIES = 3074, 6156  # CUHK-PEDES test split (one query language)


def emit(record: dict[str, Any]) -> None:
    """One result line on stdout: the shell script collects lines starting with '{"part"'."""
    print(json.dumps(record), flush=True)


def error_status(exc: BaseException) -> str:
    """A one-line status for a failed case; an OOM says so first."""
    text = (str(exc).strip().splitlines() or [""])[0][:100]
    kind = "OOM" if isinstance(exc, torch.cuda.OutOfMemoryError) else f"error: {type(exc).__name__}"
    return f"{kind}: {text}"


def published_config(folder: Path, overrides: list[str]):
    """config/config.yaml on CUDA with a tiny tokenizer and an XLM-R-base config.json written to ``folder``."""
    from tests.model_fixtures import write_text_config, write_tokenizer
    from utils.config import load_config

    write_tokenizer(folder)
    write_text_config(folder)
    return load_config(str(ROOT / "config" / "config.yaml"),
                       [f"text_encoder={folder}", "model.resume=", "device=cuda", *overrides])


def build_on_gpu(cfg):
    """The model on the GPU: initialised there (seconds instead of tens of seconds on the CPU),
    or on the CPU and moved if building under the CUDA default device fails."""
    from model import build_model

    try:
        with torch.device("cuda"):
            model, _ = build_model(cfg)
    except Exception:  # noqa: BLE001 - some init code may want CPU tensors: fall back to the plain build
        model, _ = build_model(cfg)
    return model.to("cuda")


def compiled_anything(model: torch.nn.Module) -> bool:
    """Whether any submodule was compiled in place (``nn.Module.compile``) or wrapped by ``torch.compile``."""
    return any(getattr(m, "_compiled_call_impl", None) is not None or type(m).__name__ == "OptimizedModule"
               for m in model.modules())


def case_label(args: argparse.Namespace) -> str:
    """The name of a part's case in the table (the shell script passes the same names)."""
    if args.command == "step":
        return f"{args.amp} ckpt={args.ckpt} compile={args.compile}"
    return "fp32, fp16" if args.command == "eval" else f"torchrun 1 process, {args.backend}"


def step_case(args: argparse.Namespace) -> dict[str, Any]:
    """Training-step time and peak GPU memory of one (amp, checkpointing, compile) case."""
    from benchmarks.model_size import random_batch
    from engine.step import build_train_step
    from utils.config import ConfigError

    record: dict[str, Any] = {"part": "step", "case": case_label(args), "batch": args.batch}
    overrides = [f"schedule.amp={args.amp}", f"model.grad_checkpointing={'true' if args.ckpt else 'false'}"]
    if args.compile:
        overrides.append("model.compile=true")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = published_config(Path(tmp), overrides)
        except ConfigError as e:
            if args.compile and "model.compile" in str(e):
                return {**record, "status": "n/a: key not available"}
            raise
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = build_on_gpu(cfg).train()
    vocab = model.text_encoder.config.vocab_size
    batch = random_batch(cfg, args.batch, cfg.experiment.text_length, vocab, vocab - 1)
    batch = {k: v.cuda() for k, v in batch.items()}
    step = build_train_step(cfg, model, torch.device("cuda"), steps_per_epoch=args.warmup + args.steps + 1)
    note = " (but nothing was compiled)" if args.compile and not compiled_anything(model) else ""
    record["build_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        result = step(batch, i)
    torch.cuda.synchronize()
    record["warmup_s"] = round(time.perf_counter() - t0, 1)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        result = step(batch, args.warmup + i)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    record.update(step_ms=round(1000 * median, 1), min_ms=round(1000 * min(times), 1),
                  samples_per_s=round(args.batch / median, 1),
                  peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                  losses={k: round(float(v), 4) for k, v in result.losses.items()},
                  status=("ok" if result.bad is None else f"non-finite {result.bad}") + note)
    return record


def timed(fn, *a, **kw) -> tuple[Any, float]:
    """``fn(*a, **kw)`` and its wall time with the GPU synchronised on both sides."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def synthetic_queries(n: int, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of ``n`` captions of 20..60 tokens (CUHK-PEDES-like), padded to ``length``."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 61, (n,), generator=g).clamp(max=length)
    ids = torch.randint(5, vocab - 1, (n, length), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids[:, 0], ids[mask == 0] = 0, 1
    return ids, mask


def rerank_timed(model, text, topk: torch.Tensor, g_embeds: torch.Tensor, batch: int,
                 dtype: torch.dtype | None) -> tuple[float, float, int]:
    """(k/v build seconds, per-query fusion seconds, images in k/v) of ``rerank_fast``'s two stages."""
    from engine.rerank import kv_blocks, score_block

    device = torch.device("cuda")
    scores = torch.empty(topk.shape, device=device)
    blocks = kv_blocks(model, g_embeds, topk, None, batch, device, dtype)
    kv_s = score_s = 0.0
    images = 0
    while True:
        item, s = timed(next, blocks, None)
        kv_s += s
        if item is None:
            return kv_s, score_s, images
        ids, kv = item
        images += len(ids)
        _, s = timed(score_block, model, text, topk, ids, kv, scores, chunk=256, batch_size=batch, device=device,
                     dtype=dtype)
        score_s += s
        del item, kv


def eval_precision(model, cfg, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, rerank_queries: int,
                   dtype) -> dict[str, Any]:
    """Gallery images/s, ITC-only queries/s (encode, rank, statistics), re-ranking queries/s, one precision."""
    from engine.evaluate import encode_gallery, encode_queries, pad_batches, similarity_order
    from utils.metrics import per_query_stats

    device, batch, k = torch.device("cuda"), cfg.data.test_batch_size, cfg.model.k_test
    data = SimpleNamespace(gallery=TensorDataset(images, torch.arange(len(images))))
    with torch.no_grad():
        warm = SimpleNamespace(gallery=Subset(data.gallery, range(min(batch, len(images)))))
        encode_gallery(model, warm, batch, 0, device, dtype)  # warm-up
        (g_embeds, g_feats), gallery_s = timed(encode_gallery, model, data, batch, 0, device, dtype)
        g_pids = torch.arange(len(images), device=device) % 1000
        q_pids = torch.arange(len(ids), device=device) % 1000

        def itc() -> torch.Tensor:
            q_feats = encode_queries(model, ids, mask, False, batch, device, dtype)[1]
            for s in range(0, len(ids), 256):
                order = similarity_order(q_feats[s:s + 256] @ g_feats.t())
                per_query_stats(g_pids[order] == q_pids[s:s + 256, None])
            return q_feats

        q_feats, itc_s = timed(itc)
        topk = similarity_order(q_feats[:rerank_queries] @ g_feats.t())[:, :k]

        def text(start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
            return pad_batches(encode_queries(model, ids[start:stop], mask[start:stop], False, batch, device, dtype)[0])

        rerank_timed(model, text, topk[:2], g_embeds, batch, dtype)  # warm-up
        kv_s, score_s, kv_images = rerank_timed(model, text, topk, g_embeds, batch, dtype)
    out = {"gallery_img_s": len(images) / gallery_s, "itc_q_s": len(ids) / itc_s,
           "rerank_q_s": rerank_queries / score_s, "kv_img_s": kv_images / kv_s}
    out["cuhk_test_s"] = (CUHK_IMAGES / out["gallery_img_s"] + CUHK_QUERIES / out["itc_q_s"]
                          + CUHK_IMAGES / out["kv_img_s"] + CUHK_QUERIES / out["rerank_q_s"])
    return {key: round(v, 1) for key, v in out.items()}


def eval_case(args: argparse.Namespace) -> None:
    """Evaluation throughput in fp32 and under fp16 eval autocast; one JSON line each."""
    from engine.amp import eval_dtype

    with tempfile.TemporaryDirectory() as tmp:
        cfg = published_config(Path(tmp), ["schedule.amp=fp16", "model.eval_amp=true"])
        torch.manual_seed(0)
        model = build_on_gpu(cfg).eval()
    h, w = cfg.experiment.input_resolution
    images = torch.randn(args.gallery, 3, h, w)
    ids, mask = synthetic_queries(args.queries, cfg.experiment.text_length, model.text_encoder.config.vocab_size)
    for label, dtype in (("fp32", None), ("fp16 eval autocast", eval_dtype(cfg, torch.device("cuda")))):
        record = {"part": "eval", "case": label, "gallery": args.gallery, "queries": args.queries,
                  "rerank_queries": args.rerank_queries, "k": cfg.model.k_test}
        try:
            record.update(eval_precision(model, cfg, images, ids, mask, args.rerank_queries, dtype), status="ok")
        except Exception as e:  # noqa: BLE001 - report this precision, go on with the next
            record["status"] = error_status(e)
        torch.cuda.empty_cache()
        emit(record)


# A 1-process torchrun of main.py starts no process group (utils/distributed.py), so this probe
# is what runs an NCCL collective.
NCCL_PROBE = """import os, torch, torch.distributed as dist
dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl", device_id=dev)
t = torch.ones(1, device=dev)
dist.all_reduce(t)
assert t.item() == dist.get_world_size()
dist.destroy_process_group()
"""


def torchrun(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def main_run(tmp: Path, args: argparse.Namespace, env: dict[str, str]) -> tuple[str | None, int]:
    """main.py trains the tiny model 3 steps and evaluates it: (failure or None, steps logged)."""
    from tests.model_fixtures import tiny_config_file

    data, run = tmp / "data", tmp / "run"
    subprocess.run([sys.executable, "-m", "synthetic", "--out", str(data), "--train-ids", "8", "--val-ids", "2",
                    "--test-ids", "2", "--size", "64x32", "--hidden-size", "32"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=args.timeout)
    config = tiny_config_file(data, run, f"distributed.backend={args.backend}", f"device={args.device}",
                              "schedule.epoch=1", "schedule.epoch_warmup=0", "schedule.steps_per_epoch=3",
                              resolution=(64, 32))
    r = torchrun(["main.py", "--config", str(config)], env, args.timeout)
    log = run / "log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    steps = sum(json.loads(line).get("kind") == "step" for line in lines if line.strip().endswith("}"))
    if args.device == "cuda" and "CUDA is not available" in r.stderr:
        return "main.py fell back to the CPU", steps
    if r.returncode or steps < 3:
        return f"main.py exit {r.returncode}: {(r.stderr.strip().splitlines() or [''])[-1][:120]}", steps
    return None, steps


def nccl_case(args: argparse.Namespace) -> dict[str, Any]:
    """A tiny end-to-end main.py training (3 steps, then evaluation) under a 1-process torchrun
    on the GPU, then an NCCL all_reduce under another (with ``--backend nccl``)."""
    record: dict[str, Any] = {"part": "nccl", "case": case_label(args)}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        failure, steps = main_run(Path(tmp), args, env)
        record.update(main_s=round(time.perf_counter() - t0, 1), steps=steps)
        if failure is None and args.backend == "nccl":
            (Path(tmp) / "probe.py").write_text(NCCL_PROBE)
            r = torchrun([str(Path(tmp) / "probe.py")], env, args.timeout)
            if r.returncode:
                failure = f"NCCL all_reduce failed: {(r.stderr.strip().splitlines() or [''])[-1][:120]}"
    record.update(time_s=round(time.perf_counter() - t0, 1), status=f"fail: {failure}" if failure else "pass")
    return record


def read_records(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.startswith('{"part"')]


def environment() -> list[str]:
    """GPU name, torch / CUDA / cuDNN versions, TF32 setting and the date (each guarded: the table must print)."""
    def ask(fn, default: str = "?") -> str:
        try:
            return str(fn())
        except Exception:  # noqa: BLE001
            return default

    gpu = ask(torch.cuda.get_device_name, "no CUDA device")
    tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
    return [f"### GPU check: {gpu}, {datetime.date.today().isoformat()}", "",
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {ask(torch.backends.cudnn.version)}, "
            f"Python {sys.version.split()[0]}; fp32 matmuls use TF32: {tf32}"]


STEP_COLUMNS = {"case": "case", "step_ms": "step time ms", "samples_per_s": "samples/s", "peak_gib": "peak GiB",
                "status": "status"}
EVAL_COLUMNS = {"case": "evaluation", "gallery_img_s": "gallery images/s", "itc_q_s": "ITC-only queries/s",
                "rerank_q_s": "re-rank queries/s", "kv_img_s": "k/v images/s", "cuhk_test_s": "CUHK-PEDES test est. s",
                "status": "status"}


def md_table(columns: dict[str, str], records: list[dict[str, Any]]) -> list[str]:
    """Markdown rows: one per record, numbers right-aligned, missing values blank."""
    align = ["---" if key in ("case", "status") else "---:" for key in columns]
    rows = ["| " + " | ".join(columns.values()) + " |", "| " + " | ".join(align) + " |"]
    return rows + ["| " + " | ".join(str(r.get(key, "")) for key in columns) + " |" for r in records]


def passed(record: dict[str, Any]) -> bool:
    """A part that ran as meant: tests passed, a case measured (or its key not yet available), the run passed."""
    if record["part"] == "tests":
        return "passed" in record["status"] and not record["status"].startswith("FAILED")
    return record["status"].startswith(("ok", "pass", "n/a"))


def table(args: argparse.Namespace) -> int:
    """The markdown block for docs/benchmarks.md from the collected records."""
    records = read_records(Path(args.results))
    by_part = {part: [r for r in records if r["part"] == part] for part in ("tests", "step", "eval", "nccl")}
    out = [*environment(), f"set-up {args.setup}; measuring parts {args.parts_s} s", ""]
    out += [f"CUDA tests (`python -m pytest -q -m cuda`): {r['status']}" for r in by_part["tests"]] + [""]
    first = next((r for r in by_part["step"] if "batch" in r), {})
    out += [f"Training step at the published size (batch {first.get('batch', 32)} per process, 224x224, text "
            "length 77, random weights; median of the timed steps after warm-up; peak = "
            "torch.cuda.max_memory_allocated over the timed steps):", "", *md_table(STEP_COLUMNS, by_part["step"]), ""]
    first = next((r for r in by_part["eval"] if "gallery" in r), {})
    out += [f"Evaluation on random tensors: gallery {first.get('gallery', '?')} images, ITC-only over "
            f"{first.get('queries', '?')} queries, re-ranking of the top {first.get('k', '?')} for "
            f"{first.get('rerank_queries', '?')} queries (k/v: the one-off cross-attention keys/values per image; "
            f"est.: one CUHK-PEDES test language, {CUHK_IMAGES:,} images x {CUHK_QUERIES:,} queries):", "",
            *md_table(EVAL_COLUMNS, by_part["eval"]), ""]
    for r in by_part["nccl"]:
        main = f" in {r['main_s']} s" if "main_s" in r else ""
        out.append(f"NCCL ({r['case']}): main.py trains a tiny model 3 steps and evaluates it{main}, then an "
                   f"NCCL all_reduce: {r['status']}" + (f", {r['time_s']} s in all" if "time_s" in r else ""))
    print("\n".join(out))
    return 0 if records and all(passed(r) for r in records) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("step", help="training-step time and peak GPU memory of one case (one JSON line)")
    s.add_argument("--amp", choices=("fp16", "bf16", "fp32"), default="fp16")
    s.add_argument("--ckpt", type=int, choices=(0, 1), default=0, help="model.grad_checkpointing")
    s.add_argument("--compile", type=int, choices=(0, 1), default=0, help="model.compile")
    s.add_argument("--batch", type=int, default=32, help="per-process batch (published: 32)")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--steps", type=int, default=5)
    e = sub.add_parser("eval", help="evaluation queries/s, fp32 and fp16 eval autocast (one JSON line each)")
    e.add_argument("--gallery", type=int, default=CUHK_IMAGES)
    e.add_argument("--queries", type=int, default=CUHK_QUERIES, help="queries ranked by ITC alone")
    e.add_argument("--rerank-queries", type=int, default=64, help="queries re-ranked (top k_test each)")
    n = sub.add_parser("nccl", help="1-process torchrun of main.py on tiny synthetic data (one JSON line)")
    n.add_argument("--backend", default="nccl")
    n.add_argument("--device", default="cuda")
    n.add_argument("--timeout", type=int, default=55)
    t = sub.add_parser("table", help="markdown for docs/benchmarks.md from collected JSON lines")
    t.add_argument("results")
    t.add_argument("--setup", default="?", help="set-up time and interpreter, as the shell measured them")
    t.add_argument("--parts-s", default="?")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "table":
        return table(args)
    run = {"step": step_case, "nccl": nccl_case, "eval": eval_case}[args.command]
    try:
        record = run(args)
    except Exception as e:  # noqa: BLE001 - one line for the table, the traceback for the log
        import traceback

        traceback.print_exc()
        record = {"part": args.command, "case": case_label(args), "status": error_status(e)}
    if record is not None:
        emit(record)
    return 0 if record is None or record["status"].startswith(("ok", "pass")) else 1


if __name__ == "__main__":
    sys.exit(main())
