"""Does the training input pipeline keep up with the model? config/demo.yaml over runs/synthetic.

    python -m benchmarks.data_pipeline [--data runs/synthetic] [--batches 12] [--workers 0 1 2] [--threads 1]
                                       [--resolution H W]

Measures, in one run:
1. one sample's preparation in this process (``TrainDataset[i]``: image decode, train
   transforms, block mask, MLM masking), per stage;
2. the loader alone (``data.loader.build_train_loader``, as training builds it) for each
   ``--workers`` count: time to the first batch (workers start every epoch) and the
   steady images/s after it;
3. the model's training step alone on one cached batch (forward, backward, clipping,
   AdamW), samples/s;
4. the two together, as training runs them (loader with the config's
   ``data.num_workers``, model in this process), samples/s.
The pipeline is the bottleneck when (4) falls clearly below (3).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from data.datasets import TrainDataset, open_image
from data.loader import build_train_loader
from engine.optim import build_optimizer
from model import build_model
from utils.config import load_config


def timed_batches(loader, n: int, work=None) -> tuple[float, float]:
    """(seconds to the first batch, images/s over the next ``n`` batches), running ``work(batch)`` on each."""
    t0 = time.perf_counter()
    it = iter(loader)
    batch = next(it)
    first = time.perf_counter() - t0
    if work:
        work(batch)
    t1, images = time.perf_counter(), 0
    for _ in range(n):
        batch = next(it)
        if work:
            work(batch)
        images += len(batch["pids"])
    return first, images / (time.perf_counter() - t1)


def sample_stages(ds: TrainDataset, n: int = 64) -> dict[str, float]:
    """Median milliseconds per sample of each preparation stage."""
    rng = np.random.default_rng(0)
    stages: dict[str, list[float]] = {"decode": [], "transform": [], "image mask": [], "MLM masks": [], "total": []}
    from data.text import mask_tokens

    for i in rng.integers(0, len(ds), n).tolist():
        t0 = time.perf_counter()
        img = open_image(ds.paths[ds.image_of[i]], ds.cfg.experiment.input_resolution)
        t1 = time.perf_counter()
        ds.transform(img)
        t2 = time.perf_counter()
        r = np.random.default_rng([0, i])
        ds.mask_gen(r)
        t3 = time.perf_counter()
        mask_tokens(ds.src[i], r, ds.cfg.mlm, ds.tokenizer)
        mask_tokens(ds.tgt[i], r, ds.cfg.mlm, ds.tokenizer)
        t4 = time.perf_counter()
        ds[i]
        t5 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            stages[name].append(dt * 1e3)
    return {name: statistics.median(v) for name, v in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="runs/synthetic")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="model threads (the loader workers are processes)")
    parser.add_argument("--resolution", type=int, nargs=2, metavar=("H", "W"),
                        help="input resolution instead of the config's (e.g. 384 128, as for CUHK-PEDES)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = [f"anno_dir={args.data}/annos", f"image_dir={args.data}/imgs", f"text_encoder={args.data}/text_encoder"]
    if args.resolution:
        base += [f"experiment.input_resolution=[{args.resolution[0]}, {args.resolution[1]}]", f"image_res={args.resolution[0]}"]
    cfg = load_config("config/demo.yaml", base)
    model, tokenizer = build_model(cfg)
    dataset = TrainDataset(cfg, tokenizer)
    b = cfg.data.batch_size
    print(f"config/demo.yaml over {args.data}: {len(dataset)} samples, batch {b}, "
          f"{cfg.experiment.input_resolution[0]}x{cfg.experiment.input_resolution[1]} images, "
          f"model threads {args.threads}")

    stages = sample_stages(dataset)
    print("one sample in this process (median ms): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
          + f" -> {1e3 / stages['total']:.0f} samples/s per process")

    for w in args.workers:
        loader = build_train_loader(load_config("config/demo.yaml", [*base, f"data.num_workers={w}"]), tokenizer,
                                    dataset=dataset)
        first, rate = timed_batches(loader, args.batches)
        print(f"loader alone, {w} worker(s): first batch after {first:.2f} s, then {rate:.0f} images/s")

    optimizer = build_optimizer(model, cfg)
    model.train()

    def step(batch: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        sum(model({k: v for k, v in batch.items() if k != "index"}).values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.schedule.grad_clip)
        optimizer.step()

    loader = build_train_loader(cfg, tokenizer, dataset=dataset)
    cached = next(iter(loader))
    step(cached)
    t = time.perf_counter()
    for _ in range(args.batches // 2):
        step(cached)
    alone = (args.batches // 2) * b / (time.perf_counter() - t)
    print(f"model step alone (cached batch): {alone:.1f} samples/s")
    first, together = timed_batches(loader, args.batches // 2, step)
    print(f"training (loader with {cfg.data.num_workers} workers + model step): {together:.1f} samples/s, "
          f"{together / alone:.0%} of the step alone; first batch after {first:.2f} s")
    verdict = "the input pipeline is the bottleneck" if together < 0.9 * alone else "the input pipeline keeps up"
    print(f"data {together:.1f} vs model {alone:.1f} samples/s: {verdict}")


if __name__ == "__main__":
    main()
