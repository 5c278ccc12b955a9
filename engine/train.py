"""Training loop: DDP over torchrun, AMP on CUDA, per-epoch evaluation, exact resume.

Outputs under ``model.saved_path``: ``config.yaml`` (resolved config), ``log.jsonl``
(logged steps and evaluations), ``checkpoint_last.pth`` (full training state, written
atomically after every epoch), ``best_<lang>.pth`` (weights of the best epoch per
language) and ``metrics.json`` (test metrics per language).
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data.annotations import has_split
from data.loader import build_eval_data, build_train_loader
from engine.amp import amp_dtype, autocast_for
from engine.evaluate import EvalResult, evaluate
from engine.optim import build_optimizer, build_scheduler
from engine.report import write_reports
from model import build_model, build_tokenizer, load_finetuned
from utils.checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_write, read_checkpoint, save_atomic
from utils.config import Config, save_config
from utils.distributed import DistInfo, all_gather_object, all_reduce_mean, barrier, is_dist
from utils.errors import TrainingError
from utils.logging import JsonlLog, format_table, info

def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DDP) else model


def languages(cfg: Config) -> list[tuple[str, bool]]:
    """(language, is_target) for the source and the target language."""
    return [(cfg.data.source_language, False), (cfg.data.target_language, True)]


def selection_split(cfg: Config) -> str:
    """Model selection uses val when the dataset has one (upstream selected on test)."""
    if has_split(cfg, "val"):
        return "val"
    warnings.warn("no val split: selecting the best epoch on the test split", stacklevel=2)
    return "test"


def evaluate_language(model: nn.Module, cfg: Config, data: Any, target: bool, device: torch.device) -> EvalResult:
    return evaluate(unwrap(model), data, target=target, k_test=cfg.model.k_test,
                    batch_size=cfg.data.test_batch_size, num_workers=cfg.data.num_workers, device=device)


def evaluate_languages(model: nn.Module, cfg: Config, sets: dict[str, Any], device: torch.device) -> dict[str, EvalResult]:
    return {lang: evaluate_language(model, cfg, sets[lang], target, device) for lang, target in languages(cfg)}


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def load_model_weights(model: nn.Module, path: str, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load this project's checkpoint into ``model`` (every key must match); return the file."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    load_finetuned(unwrap(model), path, ckpt)
    return ckpt


def check_finite(losses: dict[str, torch.Tensor]) -> str | None:
    """Name of the first non-finite loss term on any process, or None."""
    bad = torch.tensor([0.0 if torch.isfinite(v).all() else 1.0 for v in losses.values()],
                       device=next(iter(losses.values())).device)
    if is_dist():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    names = [n for n, b in zip(losses, bad.tolist()) if b]
    return names[0] if names else None


class Trainer:
    def __init__(self, cfg: Config, dist: DistInfo):
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.out = Path(cfg.model.saved_path)
        self.log = JsonlLog(self.out / "log.jsonl")
        torch.manual_seed(cfg.misc.seed + dist.rank)
        self.loader = None
        self.num_ids = 0

    def setup_model(self, for_training: bool) -> None:
        """Tokenizer, then (for training) the loader, whose identity count sizes the ID head, then the model."""
        cfg = self.cfg
        self.tokenizer = build_tokenizer(cfg.text_encoder)
        if for_training:
            self.loader = build_train_loader(cfg, self.tokenizer, self.dist.rank, self.dist.world_size)
            self.num_ids = self.loader.dataset.num_persons
        self.model, _ = build_model(cfg, num_ids=self.num_ids, tokenizer=self.tokenizer)
        self.model.to(self.device)

    def eval_sets(self, split: str) -> dict[str, Any]:
        return {lang: build_eval_data(self.cfg, split, lang, self.tokenizer) for lang, _ in languages(self.cfg)}

    def finish(self, results: dict[str, EvalResult], sets: dict[str, Any], split: str) -> dict[str, dict[str, float]]:
        metrics = {lang: r.metrics for lang, r in results.items()}
        if self.dist.is_main:
            atomic_write(self.out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
            write_reports(self.out, results, sets, split)
            print(f"{split} results ({self.cfg.model.saved_path}):")
            print(format_table(metrics), flush=True)
        self.log.write("final", split=split, metrics=metrics)
        return metrics

    def evaluate_checkpoint(self, path: str) -> dict[str, dict[str, float]]:
        ckpt = read_checkpoint(path)
        self.num_ids = int(ckpt.get("num_ids", 0))
        self.setup_model(for_training=False)
        load_model_weights(self.model, path, ckpt)
        sets = self.eval_sets("test")
        return self.finish(evaluate_languages(self.model, self.cfg, sets, self.device), sets, "test")

    def train(self, resume: str | None = None) -> dict[str, dict[str, float]]:
        cfg, dev = self.cfg, self.device
        self.setup_model(for_training=True)
        model: nn.Module = self.model
        ddp = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None) if self.dist.distributed else model
        steps_per_epoch = len(self.loader.batch_sampler)
        optimizer = build_optimizer(model, cfg.schedule)
        scheduler = build_scheduler(optimizer, cfg.schedule, steps_per_epoch)
        dtype = amp_dtype(dev)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        start_epoch, step, best = 0, 0, {}
        if resume:
            ckpt = load_model_weights(model, resume)
            if "optimizer" not in ckpt:
                raise CheckpointError(f"{resume}: holds weights only, no training state; use it with --eval-only")
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            start_epoch, step, best = ckpt["epoch"], ckpt["step"], ckpt["best"]
            torch.set_rng_state(ckpt["rng"][self.dist.rank % len(ckpt["rng"])])
            info(f"resumed from {resume}: epoch {start_epoch}, step {step}")
        split = selection_split(cfg)
        sets = self.eval_sets(split)
        if self.dist.is_main:  # only now that every input has loaded, so a bad input leaves nothing behind
            save_config(cfg, self.out / "config.yaml")
        skipped = 0
        for epoch in range(start_epoch, cfg.schedule.epoch):
            self.loader.batch_sampler.set_epoch(epoch)
            self.loader.dataset.set_epoch(epoch)
            model.train()
            bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.schedule.epoch}", disable=not self.dist.is_main,
                       dynamic_ncols=True, leave=True)
            t_last = time.perf_counter()
            for batch in bar:
                batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
                with autocast_for(dev):
                    losses = ddp(batch)
                bad = check_finite(losses)
                if bad is not None:
                    if not cfg.schedule.skip_nonfinite:
                        raise TrainingError(f"non-finite loss '{bad}' at epoch {epoch + 1}, step {step} "
                                            "(no weights written for this step; set schedule.skip_nonfinite=true to skip such steps)")
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    step += 1
                    self.log.write("skip", step=step, epoch=epoch + 1, term=bad)
                    continue
                total = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                if cfg.schedule.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.schedule.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                now = time.perf_counter()
                rate = len(batch["pids"]) * self.dist.world_size / max(now - t_last, 1e-9)
                t_last = now
                if step % cfg.log.print_period == 0 or step == 1:
                    vals = {k: float(all_reduce_mean(v.detach())) for k, v in losses.items()}
                    lr = optimizer.param_groups[0]["lr"]
                    bar.set_postfix({**{k: f"{v:.3f}" for k, v in vals.items()}, "lr": f"{lr:.2e}", "samples/s": f"{rate:.1f}"})
                    self.log.write("step", epoch=epoch + 1, step=step, lr=lr, samples_per_s=round(rate, 2),
                                   loss=sum(vals.values()), **vals)
            bar.close()
            bad_images = self.loader.dataset.skipped
            if bad_images:
                info(f"epoch {epoch + 1}: skipped {bad_images} unreadable image(s) so far")
            results = evaluate_languages(model, cfg, sets, dev)
            metrics = {lang: r.metrics for lang, r in results.items()}
            self.log.write("eval", epoch=epoch + 1, step=step, split=split, metrics=metrics)
            info(f"epoch {epoch + 1} {split}:\n{format_table(metrics)}")
            if self.dist.is_main:
                write_reports(self.out, results, sets, split)
            improved = [lang for lang, m in metrics.items()
                        if lang not in best or (m["R1"], m["mAP"]) > (best[lang]["R1"], best[lang]["mAP"])]
            for lang in improved:
                best[lang] = {**metrics[lang], "epoch": epoch + 1}
            state = model_state(model)
            rng = all_gather_object(torch.get_rng_state())
            if self.dist.is_main:
                for lang in improved:
                    save_atomic({"format": CHECKPOINT_FORMAT, "model": state, "epoch": epoch + 1, "metrics": metrics[lang],
                                 "split": split, "num_ids": self.num_ids, "config": cfg.to_dict()},
                                self.out / f"best_{lang}.pth")
                save_atomic({"format": CHECKPOINT_FORMAT, "model": state, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                             "step": step, "best": best, "rng": rng, "num_ids": self.num_ids, "config": cfg.to_dict()},
                            self.out / "checkpoint_last.pth")
            barrier()
        if skipped:
            info(f"skipped {skipped} step(s) with a non-finite loss")
        test_sets = sets if split == "test" else self.eval_sets("test")
        results = {}
        for lang, target in languages(cfg):
            load_model_weights(model, str(self.out / f"best_{lang}.pth"))
            results[lang] = evaluate_language(model, cfg, test_sets[lang], target, dev)
        return self.finish(results, test_sets, "test")
