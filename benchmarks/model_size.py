"""Parameter count, CPU memory and time of one full-size Bi-IRRA training step (batch 2).

    python -m benchmarks.model_size [--batch 2] [--text-len 77]

Builds the published architecture from config/config.yaml with an xlm-roberta-base-shaped
config.json and a tiny tokenizer written to a temporary folder (no weights are needed),
then runs forward + backward + AdamW step on random inputs with every published loss on.
Memory is the process's resident set size from /proc/self/status (VmRSS now, VmHWM peak).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model import build_model
from model.vision import BlockMaskGenerator
from tests.model_fixtures import write_text_config, write_tokenizer
from utils.config import load_config


def rss_gib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in GiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 2**20
    return fields["VmRSS"], fields["VmHWM"]


def random_batch(cfg, batch: int, text_len: int, vocab: int, mask_id: int) -> dict[str, torch.Tensor]:
    h, w = cfg.experiment.input_resolution
    grid = (h // cfg.patch_size, w // cfg.patch_size)
    rng = np.random.default_rng(0)
    masker = BlockMaskGenerator(grid, cfg.mim.mask_ratio)
    out = {"images": torch.randn(batch, 3, h, w),
           "image_mask": torch.from_numpy(np.stack([masker(rng).reshape(-1) for _ in range(batch)])),
           "pids": torch.arange(batch)}
    for lang in ("src", "tgt"):
        ids = torch.randint(5, vocab - 1, (batch, text_len))
        ids[:, 0], ids[:, -1] = 0, 2
        labels = torch.full_like(ids, -100)
        mlm_ids = ids.clone()
        labels[:, 1:13] = ids[:, 1:13]
        mlm_ids[:, 1:13] = mask_id
        out.update({f"{lang}_ids": ids, f"{lang}_mask": torch.ones_like(ids), f"{lang}_mlm_ids": mlm_ids,
                    f"{lang}_mlm_labels": labels})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--text-len", type=int, default=77)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_tokenizer(folder)
        write_text_config(folder)
        cfg = load_config("config/config.yaml", [f"text_encoder={folder}", "model.resume=", "device=cpu"])
        t0 = time.perf_counter()
        model, _ = build_model(cfg)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}")
    for name, child in model.named_children():
        print(f"  {name:<16}{sum(p.numel() for p in child.parameters()):>14,}")
    print(f"build: {build_s:.1f} s, RSS after build {rss_gib()[0]:.2f} GiB")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.02)
    batch = random_batch(cfg, args.batch, args.text_len, model.text_encoder.config.vocab_size,
                         model.text_encoder.config.vocab_size - 1)
    model.train()
    times = []
    for _ in range(2):  # the first step allocates AdamW state; the second is the steady one
        t0 = time.perf_counter()
        losses = model(batch)
        sum(losses.values()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    now, peak = rss_gib()
    print("losses: " + ", ".join(f"{k}={v.item():.3f}" for k, v in losses.items()))
    print(f"step times: first {times[0]:.1f} s, second {times[1]:.1f} s "
          f"(batch {args.batch}, {cfg.experiment.input_resolution[0]}x{cfg.experiment.input_resolution[1]}, "
          f"text length {args.text_len}, {torch.get_num_threads()} threads)")
    print(f"RSS after steps {now:.2f} GiB, peak {peak:.2f} GiB")


if __name__ == "__main__":
    main()
