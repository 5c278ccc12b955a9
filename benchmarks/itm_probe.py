"""Is re-ranking limited by the steps ITM gets, or by what the fusion layers can tell apart?

    python -m benchmarks.itm_probe --checkpoint runs/demo/best_en.pth [--steps 1200] [--every 300]
        [--sharpness 1.0] [--lr 5e-4] [--split val] [key.sub=value ...]

A probe, as a linear probe is one: the image and text towers of a trained checkpoint are
frozen, and only the fusion layers and the ITM head train, on the ITM loss alone (source and
target captions against the unmasked image; per caption one negative image and per image
one negative caption, drawn from the batch among the other people with weights
softmax(sharpness x similarity / temperature): 1 is upstream's hard negatives, 0 draws
uniformly as ``itm.negatives: random`` does). Every step goes to ITM, at the cost of one
frozen forward pass of the towers.

Prints the mean ITM loss every 50 steps and, at step 0 and every ``--every`` steps, per
language the figures of ``benchmarks.rerank_pairs`` on ``--split``: R1 from ITC, R1 after
re-ranking the top 2 and the top 8, and ITC's and ITM's accuracy on the split pairs. The
towers do not change, so ITC's figures stay put and each row compares a better-trained ITM
head with the same ITC. A head that stays no more accurate than ITC on split pairs after
many such steps is limited by the features and the fusion layers, not by its training time.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.rerank_pairs import candidates, describe, pair_table
from data.loader import build_train_loader
from engine.retriever import Retriever

DEPTHS = [2, 8]


def freeze_towers(model: nn.Module) -> list[nn.Parameter]:
    """Freeze everything but the fusion layers and the ITM head; returns those (trainable) parameters."""
    model.requires_grad_(False)
    trainable = list(model.cross_encoder.parameters()) + list(model.itm_head.parameters())
    for p in trainable:
        p.requires_grad_(True)
    return trainable


def itm_loss(model: nn.Module, batch: dict[str, torch.Tensor], sharpness: float) -> torch.Tensor:
    """The ITM loss of a batch on frozen tower features, both caption languages, unmasked image.

    Negatives are weighed by softmax(sharpness x similarity / temperature), a uniform draw at
    sharpness 0 (the temperature becomes infinite); the model's ``cfg.itm.negatives`` must be
    "hard", or the similarities are ignored (``probe`` sets it).
    """
    with torch.no_grad():
        enc = model.encode_batch(batch)
        image_feat, src_feat, tgt_feat = enc.features()
        temp = model.temperature() / sharpness  # sharpness 0: inf, every other person equally likely
    kv = model.image_kv(enc.image)
    pids = batch["pids"]
    return 0.5 * (model._itm_loss(enc.src, batch["src_mask"], kv, image_feat, src_feat, pids, temp)
                  + model._itm_loss(enc.tgt, batch["tgt_mask"], kv, image_feat, tgt_feat, pids, temp))


def pair_figures(r: Retriever, split: str) -> dict[str, dict[str, float]]:
    """``rerank_pairs.pair_table`` of each of the config's two languages on ``split``.

    Draws no number from the global generator that training uses, so how often the probe
    evaluates does not change what it trains.
    """
    r.model.eval()
    out = {}
    with torch.random.fork_rng(devices=[]):
        for lang in (r.cfg.data.source_language, r.cfg.data.target_language):
            correct, itm, _ = candidates(r, split, lang, DEPTHS[-1])
            out[lang] = pair_table(correct, itm, DEPTHS)
    return out


def batches(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """The training batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch, 0)
        loader.dataset.set_epoch(epoch)
        yield from loader
        epoch += 1


def probe(r: Retriever, steps: int, every: int, sharpness: float, lr: float, split: str,
          log_every: int = 50) -> Iterator[dict]:
    """Rows ``{"step", "itm", "s_per_step"}`` (mean loss over the last ``log_every`` steps; wall
    seconds a step so far, evaluations included) and
    ``{"step", "pairs"}`` (``pair_figures``) as training goes; the model is trained in place."""
    model, cfg = r.model, r.cfg
    torch.manual_seed(cfg.misc.seed)
    cfg.itm.negatives = "hard"  # drawn as itm_loss says
    params = freeze_towers(model)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.schedule.weight_decay,
                                  betas=tuple(cfg.schedule.betas), eps=cfg.schedule.eps)
    yield {"step": 0, "pairs": pair_figures(r, split)}
    losses: list[float] = []
    start = time.perf_counter()
    for step, batch in enumerate(batches(build_train_loader(cfg, r.tokenizer)), start=1):
        model.eval()
        model.cross_encoder.train()
        model.itm_head.train()
        loss = itm_loss(model, batch, sharpness)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps:
            yield {"step": step, "itm": sum(losses) / len(losses), "s_per_step": (time.perf_counter() - start) / step}
            losses = []
        if step % every == 0 or step == steps:
            yield {"step": step, "pairs": pair_figures(r, split)}
        if step == steps:
            return


def format_pairs(step: int, pairs: dict[str, dict[str, float]]) -> str:
    return f"step {step} | " + " | ".join(f"{lang}: {describe(t, DEPTHS)}" for lang, t in pairs.items())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.itm_probe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--every", type=int, default=300, help="evaluate every N steps")
    ap.add_argument("--sharpness", type=float, default=1.0,
                    help="negatives drawn by softmax(sharpness x similarity / temperature); 0: uniformly")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.sharpness < 0:
        raise SystemExit("error: --steps and --every must be positive and --sharpness not negative")
    r = Retriever.from_checkpoint(args.checkpoint, overrides=["data.num_workers=0", *args.overrides])
    for row in probe(r, args.steps, args.every, args.sharpness, args.lr, args.split):
        if "pairs" in row:
            print(format_pairs(row["step"], row["pairs"]), flush=True)
        else:
            print(f"step {row['step']}: ITM loss {row['itm']:.3f} "
                  f"({row['s_per_step']:.3f} s/step, evaluations included)", flush=True)


if __name__ == "__main__":
    main()
