"""Training diagnostic: does a config leave the contrastive plateau, and which tower holds it back?

    python -m benchmarks.diagnose --steps 300 --every 50 [--text initializer_range=0.1 ...]
        [--vision depth=2 ...] [--tower image=trivial] [--itc-only] [key.sub=value ...]

Trains ``--steps`` steps of a config (default config/demo.yaml) as the training loop does
(same loader, model, losses, optimizer, schedule; one process, fp32, ``data.num_workers=0``)
and prints, every ``--every`` steps:
each loss term (mean over those steps), the mean pairwise cosine of the L2-normalised
image and source-text features of the current batch (1.0 = all identical, the collapsed
start), the temperature, and val R1 for the source and target language from the ITC
similarities (no re-ranking, so it is cheap and shows what the two towers learned).

Variants without editing files: ``--text`` / ``--vision`` set fields of the text
encoder's config.json / the vision json in a temporary copy; trailing ``key=value``
override the YAML config. Controls: ``--itc-only`` trains ITC alone (the fusion encoder
idle; plus the ID loss with ``id.use_id=true``); ``--tower image=trivial`` (or ``text=trivial``) swaps one tower for a trivial one
(image: mean colour of a 8 x 4 grid -> linear; text: mean of word embeddings -> linear),
to tell which tower is the bottleneck; ``--tower image=trivial --tower text=trivial``
gives the pace of an easy learner under the same loss and batches. ``--save PATH`` writes the trained
weights in this project's checkpoint format (``tools.export_cclm`` turns them into a
``model.resume`` file); ``--val-rerank K`` prints val R1 before and after re-ranking
the top K at the end; ``--test`` prints the test metrics at the end, before and after
re-ranking.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from data.loader import build_eval_data, build_train_loader
from engine.evaluate import evaluate
from engine.optim import build_optimizer, build_scheduler
from model import build_model, build_tokenizer
from model.losses import itc_loss
from utils.checkpoint import CHECKPOINT_FORMAT
from utils.config import Config, load_config


def _value(text: str) -> object:
    """A JSON value (number, bool, ...) or, failing that, the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def write_patched(src: Path, dst: Path, pairs: list[str]) -> None:
    """``dst``: the JSON object of ``src`` with ``pairs`` (key=value) applied."""
    data = json.loads(src.read_text())
    for pair in pairs:
        key, _, value = pair.partition("=")
        data[key] = _value(value)
    dst.write_text(json.dumps(data, indent=2))


def patched_folder(folder: str, pairs: list[str], tmp: Path) -> str:
    """Copy of the text encoder folder whose config.json has ``pairs`` (key=value) applied."""
    out = tmp / "text_encoder"
    shutil.copytree(folder, out)
    write_patched(out / "config.json", out / "config.json", pairs)
    return str(out)


def patched_json(path: str, pairs: list[str], tmp: Path) -> str:
    """Copy of the vision json with ``pairs`` (key=value) applied."""
    write_patched(Path(path), tmp / "vision.json", pairs)
    return str(tmp / "vision.json")


class TrivialImage(nn.Module):
    """Mean colour of each cell of an 8 x 4 grid -> linear: a tower with nothing to learn but a projection."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(3 * 8 * 4, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(F.adaptive_avg_pool2d(images, (8, 4)).flatten(1)), dim=-1)


class TrivialText(nn.Module):
    """Mean of word embeddings over the caption -> linear (bag of words)."""

    def __init__(self, vocab: int, dim: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.proj = nn.Linear(dim, dim)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, 1, D]: one pooled token, shaped like an encoder output."""
        m = mask.unsqueeze(-1).float()
        return ((self.emb(ids) * m).sum(1) / m.sum(1)).unsqueeze(1)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(embeds[:, 0]), dim=-1)


class Towers(nn.Module):
    """Bi-IRRA's towers with either replaced by a trivial one; the interface ``evaluate`` needs, ITC only."""

    def __init__(self, model: nn.Module, trivial: set[str], vocab: int):
        super().__init__()
        dim = model.cfg.model.embed_dim
        self.model, self.cfg = model, model.cfg
        self.image = TrivialImage(dim) if "image" in trivial else None
        self.text = TrivialText(vocab, dim) if "text" in trivial else None

    def temperature(self) -> torch.Tensor:
        return self.model.temperature()

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images if self.image is not None else self.model.encode_image(images)

    def image_feature(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.image(embeds) if self.image is not None else self.model.image_feature(embeds)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.text.encode(ids, mask) if self.text is not None else self.model.encode_text(ids, mask)

    def text_feature(self, embeds: torch.Tensor, target: bool) -> torch.Tensor:
        return self.text(embeds) if self.text is not None else self.model.text_feature(embeds, target)

    def features(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img = self.image_feature(self.encode_image(batch["images"]))
        src = self.text_feature(self.encode_text(batch["src_ids"], batch["src_mask"]), False)
        tgt = self.text_feature(self.encode_text(batch["tgt_ids"], batch["tgt_mask"]), True)
        return img, src, tgt

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t, pids, m = self.temperature(), batch["pids"], self.model
        use_id = m.classifier is not None and self.image is None and self.text is None
        if use_id:  # the model's ID loss: on the projections before normalisation
            projs = (m.vision_proj(m.encode_image(batch["images"])[:, 0]),
                     m.text_proj(m.encode_text(batch["src_ids"], batch["src_mask"])[:, 0]),
                     m._text_proj(True)(m.encode_text(batch["tgt_ids"], batch["tgt_mask"])[:, 0]))
            img, src, tgt = (F.normalize(p, dim=-1) for p in projs)
        else:
            img, src, tgt = self.features(batch)
        losses = {"itc": 0.5 * (itc_loss(img, src, pids, t, False) + itc_loss(img, tgt, pids, t, False))}
        if use_id:
            losses["id"] = self.cfg.id.weight * sum(F.cross_entropy(m.classifier(p), pids) for p in projs) / 3
        return losses


def spread(feat: torch.Tensor) -> float:
    """Mean pairwise cosine of L2-normalised rows (diagonal excluded)."""
    n = feat.shape[0]
    sim = feat @ feat.t()
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def val_r1(model: nn.Module, cfg: Config, sets: dict[str, tuple[object, bool]]) -> dict[str, float]:
    out = {}
    for lang, (data, target) in sets.items():
        r = evaluate(model, data, target=target, k_test=0, batch_size=cfg.data.test_batch_size, rerank=False)
        out[lang] = round(r.metrics["R1"], 1)
    return out


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="diagnose_"))
    try:
        overrides = list(args.overrides) + ["data.num_workers=0"]
        cfg = load_config(args.config, overrides)
        if args.text:
            cfg.text_encoder = patched_folder(cfg.text_encoder, args.text, tmp)
        if args.vision:
            cfg.vision_config = patched_json(cfg.vision_config, args.vision, tmp)
        torch.manual_seed(cfg.misc.seed)
        tokenizer = build_tokenizer(cfg.text_encoder)
        loader = build_train_loader(cfg, tokenizer)
        model, _ = build_model(cfg, num_ids=loader.dataset.num_persons, tokenizer=tokenizer)
        trivial = {t.split("=")[0] for t in args.tower if t.endswith("=trivial")}
        net: nn.Module = Towers(model, trivial, len(tokenizer)) if (trivial or args.itc_only) else model
        if trivial:  # the replaced tower's parameters take no part
            for name in trivial:
                getattr(model, "vision_encoder" if name == "image" else "text_encoder").requires_grad_(False)
        optimizer = build_optimizer(net, cfg)
        scheduler = build_scheduler(optimizer, cfg.schedule, len(loader.batch_sampler))
        sets = {lang: (build_eval_data(cfg, "val", lang, tokenizer), target)
                for lang, target in ((cfg.data.source_language, False), (cfg.data.target_language, True))}
        rows, sums, step, epoch, t0 = [], {}, 0, 0, time.perf_counter()
        print(f"# {args.config} {' '.join(args.overrides)} text={args.text} vision={args.vision} "
              f"tower={args.tower} itc_only={args.itc_only}", flush=True)
        while step < args.steps:
            loader.batch_sampler.set_epoch(epoch)
            loader.dataset.set_epoch(epoch)
            for batch in loader:
                net.train()
                losses = net(batch)
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if cfg.schedule.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.schedule.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                if step % args.every == 0 or step == args.steps:
                    net.eval()
                    with torch.no_grad():
                        feats = (Towers(model, set(), 0) if net is model else net).features(batch)
                    n = args.every if step % args.every == 0 else step % args.every
                    row = {"step": step, **{k: round(v / n, 3) for k, v in sums.items()},
                           "cos_img": round(spread(feats[0]), 3), "cos_txt": round(spread(feats[1]), 3),
                           "temp": round(float(model.temperature()), 4), "lr": f"{scheduler.get_last_lr()[0]:.2e}",
                           "val_R1": val_r1(net, cfg, sets), "s_per_step": round((time.perf_counter() - t0) / step, 3)}
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    sums = {}
                if step >= args.steps:
                    break
            epoch += 1
        for k in args.val_rerank:  # does the ITM head help? val R1 before and after re-ranking the top k
            for lang, (data, target) in sets.items():
                r = evaluate(model, data, target=target, k_test=k, batch_size=cfg.data.test_batch_size)
                print(json.dumps({"val_rerank": k, "lang": lang, "itc_R1": round(r.itc_metrics["R1"], 2),
                                  "reranked_R1": round(r.metrics["R1"], 2)}), flush=True)
        if args.test:  # final figures only: nothing is selected on them
            for lang, target in ((cfg.data.source_language, False), (cfg.data.target_language, True)):
                r = evaluate(net, build_eval_data(cfg, "test", lang, tokenizer), target=target,
                             k_test=cfg.model.k_test, batch_size=cfg.data.test_batch_size, rerank=net is model)
                itc = r.itc_metrics or r.metrics
                print(json.dumps({"test": lang, "itc_only": {k: round(itc[k], 2) for k in ("R1", "R10", "mAP")},
                                  "reranked": {k: round(r.metrics[k], 2) for k in ("R1", "R10", "mAP")}}), flush=True)
        if args.save:
            torch.save({"format": CHECKPOINT_FORMAT, "model": {k: v.detach() for k, v in model.state_dict().items()},
                        "config": cfg.to_dict(), "num_ids": loader.dataset.num_persons}, args.save)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.diagnose", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--text", action="append", default=[], metavar="KEY=VALUE", help="text config.json field")
    ap.add_argument("--vision", action="append", default=[], metavar="KEY=VALUE", help="vision json field")
    ap.add_argument("--tower", action="append", default=[], metavar="image|text=trivial")
    ap.add_argument("--itc-only", action="store_true", help="train ITC alone (no ITM/MLM/D-MIM computed)")
    ap.add_argument("--save", default="", help="write the trained model weights here")
    ap.add_argument("--val-rerank", type=int, action="append", default=[], metavar="K",
                    help="at the end, val R1 before and after ITM re-ranking of the top K (repeatable)")
    ap.add_argument("--test", action="store_true", help="at the end, evaluate the test split (ITC only and re-ranked)")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
