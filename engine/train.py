"""Training loop: DDP over torchrun, AMP on CUDA, per-epoch evaluation, exact resume.

Outputs under ``model.saved_path``: ``config.yaml`` (resolved config), ``log.jsonl``
(logged steps and evaluations; mirrored to ``tb/`` with ``log.tensorboard``),
``checkpoint_last.pth`` (full training state, written atomically after every epoch
and, with ``schedule.save_every_steps`` N > 0, every N steps), ``best_<lang>.pth``
(weights of the best epoch per language) and ``metrics.json`` (test metrics per language).

``Trainer.train`` only sequences the parts, each a short method with one job (as
OpenCLIP splits ``train_one_epoch`` / ``evaluate``): :meth:`Trainer.train_one_epoch`
runs the batches, :meth:`Trainer.train_step` one optimizer step (engine.step.TrainStep,
the step every caller uses), :meth:`Trainer.end_epoch` evaluates and writes checkpoints,
:meth:`Trainer.save_last` / :meth:`Trainer.resume_from` write and read the training state.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from data.annotations import has_split, split_languages
from data.loader import build_eval_data, build_train_loader
from engine.evaluate import EvalResult, evaluate_language
from engine.explain import Explanation, explain
from engine.explain_figure import Explainer
from engine.report import write_reports
from engine.run_card import run_rows, write_card
from engine.step import build_train_step
from model import build_model, build_tokenizer, load_finetuned
from utils.checkpoint import (CheckpointError, atomic_write, checkpoint_dict, get_rng_state, read_checkpoint,
                              save_atomic, set_rng_state)
from utils.config import Config, projection_name, query_languages, save_config, uses_tl_proj
from utils.distributed import DistInfo, all_gather_object, all_reduce_mean, barrier
from utils.errors import TrainingError
from utils.logging import JsonlLog, format_table, info
from utils.tensorboard import TensorBoardLog


def languages(cfg: Config) -> list[tuple[str, bool]]:
    """(language, uses tl_text_proj) for every evaluated query language: the source, the
    target, then ``data.eval_languages`` (see utils.config.query_languages / uses_tl_proj)."""
    return [(lang, uses_tl_proj(cfg, lang)) for lang in query_languages(cfg)]


def final_checkpoint(cfg: Config, lang: str) -> str:
    """The best checkpoint that the final test evaluation of ``lang`` uses.

    Only the source and the target language select a checkpoint (``best_<lang>.pth``);
    another language is evaluated with the best checkpoint of the language whose
    projection it shares: the target's for ``data.tl_proj_languages``, else the source's.
    """
    d = cfg.data
    own = lang if lang in (d.source_language, d.target_language) else None
    return f"best_{own or (d.target_language if uses_tl_proj(cfg, lang) else d.source_language)}.pth"


def selection_split(cfg: Config) -> str:
    """Model selection uses val when the dataset has one (upstream selected on test)."""
    if has_split(cfg, "val"):
        return "val"
    warnings.warn("no val split: selecting the best epoch on the test split", stacklevel=2)
    return "test"


def evaluate_languages(model: nn.Module, cfg: Config, sets: dict[str, Any], device: torch.device) -> dict[str, EvalResult]:
    """Every language of ``sets``, in query-language order, each with its projection and open-set trials."""
    return {lang: evaluate_language(model, cfg, sets[lang], tl, device, open_set=True)
            for lang, tl in languages(cfg) if lang in sets}


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def load_model_weights(model: nn.Module, path: str, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load this project's checkpoint into ``model`` (every key must match); return the file."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    load_finetuned(model, path, ckpt)
    return ckpt


def set_deterministic(on: bool) -> None:
    """``misc.deterministic``: PyTorch's deterministic algorithms, so that two CUDA runs (a
    resumed one too) repeat bit for bit. Costs: kernels that reduce with atomics are
    replaced by slower ordered ones, cuDNN autotuning is off, cuBLAS uses a fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG``, set here unless the user set it), and an
    operation without a deterministic implementation stops the run with PyTorch's error.
    On the CPU, PyTorch's kernels are deterministic already; it changes nothing there."""
    if not on:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read at cuBLAS's first use, which comes later
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


@dataclass
class Position:
    """Where training stands: ``epoch`` epochs completed, ``batch`` batches of the next one
    done, ``step`` optimizer steps (scheduler iterations) in all."""
    epoch: int = 0
    batch: int = 0
    step: int = 0


class Trainer:
    def __init__(self, cfg: Config, dist: DistInfo):
        self.cfg, self.dist, self.device = cfg, dist, dist.device
        self.out = Path(cfg.model.saved_path)
        self.log = JsonlLog(self.out / "log.jsonl", TensorBoardLog(self.out / "tb") if cfg.log.tensorboard else None)
        set_deterministic(cfg.misc.deterministic)
        torch.manual_seed(cfg.misc.seed + dist.rank)  # seeds the CPU and every CUDA generator
        self.loader = None
        self.num_ids = 0
        self.card: dict[str, Any] | None = None  # the run card (rank 0), summarised atop report.md
        self.loaded: str | None = None  # name of the checkpoint whose weights the model holds (final evaluation)

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
        """The evaluation sets of ``split`` per query language (see data.annotations.split_languages)."""
        langs = split_languages(self.cfg, split)
        absent = [lang for lang in query_languages(self.cfg) if lang not in langs]
        if absent:
            info(f"no {split} file for {', '.join(absent)}: evaluated on test at the end only")
        return {lang: build_eval_data(self.cfg, split, lang, self.tokenizer) for lang in langs}

    def finish(self, results: dict[str, EvalResult], sets: dict[str, Any], split: str,
               checkpoints: dict[str, str]) -> dict[str, dict[str, float]]:
        """metrics.json, the reports, the console table and the log's final record; ``checkpoints``
        names the weights each language was evaluated with."""
        cfg = self.cfg
        metrics = {lang: r.metrics for lang, r in results.items()}
        trained = (cfg.data.source_language, cfg.data.target_language)
        notes = {lang: {"role": "source" if lang == trained[0] else "target" if lang == trained[1] else "zero-shot",
                        "projection": projection_name(cfg, lang),
                        "checkpoint": checkpoints[lang]} for lang in results}
        if self.dist.is_main:
            atomic_write(self.out / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
            write_reports(self.out, results, sets, split, notes, reference_dir=cfg.anno_dir, card=self.card,
                          explain=self.explainer(checkpoints))
            print(f"{split} results ({cfg.model.saved_path}):")
            print(format_table(metrics), flush=True)
        self.log.write("final", split=split, metrics=metrics, languages=notes)
        return metrics

    def explainer(self, checkpoints: dict[str, str]) -> Explainer:
        """The final report's ``explain`` (engine/explain.py): each language is explained with the
        weights it was evaluated with, ``checkpoints[lang]`` under the output folder, loaded when
        the model holds another checkpoint's."""
        def run(caption: str, lang: str, paths: list[str]) -> list[Explanation]:
            if checkpoints[lang] != self.loaded:
                load_model_weights(self.model, str(self.out / checkpoints[lang]))
                self.loaded = checkpoints[lang]
            return explain(self.model, self.tokenizer, self.cfg, caption, lang, paths, self.device)
        return run

    def evaluate_checkpoint(self, path: str) -> dict[str, dict[str, float]]:
        ckpt = read_checkpoint(path)
        self.num_ids = int(ckpt.get("num_ids", 0))
        self.setup_model(for_training=False)
        load_model_weights(self.model, path, ckpt)
        self.loaded = Path(path).name
        sets = self.eval_sets("test")
        if self.dist.is_main:
            self.write_card(sets, "test", weights=path)
        return self.finish(evaluate_languages(self.model, self.cfg, sets, self.device), sets, "test",
                           {lang: Path(path).name for lang in sets})

    def write_card(self, sets: dict[str, Any], split: str, weights: str | None = None) -> None:
        """run_card.md / run_card.json (rank 0, once every input has loaded), so a run's numbers
        can be traced to its batch formation, precision, code, data and checkpoint."""
        rows = run_rows(self.cfg, self.loader.dataset if self.loader is not None else None, sets, split)
        self.card = write_card(self.out, self.cfg, self.dist.world_size, self.device.type, rows,
                               getattr(self.model, "load_report", None), weights)

    # ------------------------------------------------------------------ training
    def train(self, resume: str | None = None) -> dict[str, dict[str, float]]:
        """Train (from ``resume``'s state when given), select the best epoch per language, test it."""
        self.setup_model(for_training=True)
        self.setup_optimization()
        rng = self.resume_from(resume) if resume else None
        split = selection_split(self.cfg)
        sets = self.eval_sets(split)
        if self.dist.is_main:  # only now that every input has loaded, so a bad input leaves nothing behind
            save_config(self.cfg, self.out / "config.yaml")
            self.write_card(sets, split)
        for epoch in range(self.pos.epoch, self.cfg.schedule.epoch):
            self.train_one_epoch(epoch, rng)
            rng = None
            self.end_epoch(epoch, sets, split)
        if self.skipped:
            info(f"skipped {self.skipped} step(s) with a non-finite loss")
        return self.test_best(sets, split)

    def setup_optimization(self) -> None:
        """Objective, optimizer, learning-rate schedule, AMP scaler, the training step (DDP
        inside) and a fresh position."""
        self.steps_per_epoch = len(self.loader.batch_sampler)
        self.step = build_train_step(self.cfg, self.model, self.device, self.steps_per_epoch)
        self.optimizer, self.scheduler, self.scaler = self.step.optimizer, self.step.scheduler, self.step.scaler
        self.pos, self.best, self.skipped = Position(), {}, 0

    def train_one_epoch(self, epoch: int, rng: dict[str, torch.Tensor] | None) -> None:
        """The batches of ``epoch`` from ``self.pos.batch`` on. ``rng`` (a mid-epoch resume):
        generator states to restore once the epoch's loader iterator exists, since creating
        it draws a seed from the CPU generator, as it did in the interrupted run."""
        cfg = self.cfg
        self.loader.batch_sampler.set_epoch(epoch, self.pos.batch)
        self.loader.dataset.set_epoch(epoch)
        self.model.train()
        batches = iter(self.loader)
        if rng is not None:
            set_rng_state(rng, self.device)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.schedule.epoch}", disable=not self.dist.is_main,
                   dynamic_ncols=True, leave=True, initial=self.pos.batch, total=self.steps_per_epoch)
        t_last = time.perf_counter()
        for batch in bar:
            losses = self.train_step(batch, epoch)
            if losses is not None:
                now = time.perf_counter()
                rate = len(batch["pids"]) * self.dist.world_size / max(now - t_last, 1e-9)
                t_last = now
                self.log_step(losses, epoch, rate, bar)
            every = cfg.schedule.save_every_steps
            if every and self.pos.step % every == 0:
                self.save_last()
        bar.close()

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int) -> dict[str, torch.Tensor] | None:
        """Forward, backward and optimizer step on one batch, then ``self.pos`` advances; None
        when the step was skipped for a non-finite loss (``schedule.skip_nonfinite``: no
        update, but the schedule and the position advance, and the skip is logged)."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        result = self.step(batch, self.pos.step)
        if result.bad is not None:
            if not self.cfg.schedule.skip_nonfinite:
                raise TrainingError(f"non-finite loss '{result.bad}' at epoch {epoch + 1}, step {self.pos.step} "
                                    "(no weights written for this step; set schedule.skip_nonfinite=true to skip such steps)")
            self.step.skip()
            self.advance()
            self.skipped += 1
            self.log.write("skip", step=self.pos.step, epoch=epoch + 1, term=result.bad)
            return None
        self.advance()
        if result.overflow:  # fp16: the GradScaler skipped this update and lowered its scale
            self.log.write("skip", step=self.pos.step, epoch=epoch + 1, term="grad_overflow",
                           scale=self.scaler.get_scale())
        return result.losses

    def advance(self) -> None:
        """One batch and one scheduler iteration done."""
        self.pos.batch += 1
        self.pos.step += 1

    def log_step(self, losses: dict[str, torch.Tensor], epoch: int, rate: float, bar: tqdm) -> None:
        """Every ``log.print_period`` steps (and the first): losses averaged over processes, to the bar and log.jsonl."""
        step = self.pos.step
        if step % self.cfg.log.print_period and step != 1:
            return
        vals = {k: float(all_reduce_mean(v.detach())) for k, v in losses.items()}
        lr = self.optimizer.param_groups[0]["lr"]
        bar.set_postfix({**{k: f"{v:.3f}" for k, v in vals.items()}, "lr": f"{lr:.2e}", "samples/s": f"{rate:.1f}"})
        self.log.write("step", epoch=epoch + 1, step=step, lr=lr, samples_per_s=round(rate, 2),
                       loss=sum(vals.values()), **vals)

    def end_epoch(self, epoch: int, sets: dict[str, Any], split: str) -> None:
        """Evaluate on the selection split, report, keep the best weights per language, write checkpoint_last.pth."""
        cfg, dev = self.cfg, self.device
        bad_images = self.loader.dataset.skipped
        if bad_images:
            info(f"epoch {epoch + 1}: skipped {bad_images} unreadable image(s) so far")
        results = evaluate_languages(self.model, cfg, sets, dev)
        metrics = {lang: r.metrics for lang, r in results.items()}
        itc = {lang: r.itc_metrics for lang, r in results.items() if r.itc_metrics is not None}
        self.log.write("eval", epoch=epoch + 1, step=self.pos.step, split=split, metrics=metrics,
                       **({"itc_metrics": itc} if itc else {}))
        info(f"epoch {epoch + 1} {split}:\n{format_table(metrics)}")
        if self.dist.is_main:
            write_reports(self.out, results, sets, split, reference_dir=self.cfg.anno_dir, card=self.card)
        improved = self.update_best(metrics, epoch)
        self.pos.epoch, self.pos.batch = epoch + 1, 0
        state = model_state(self.model)
        if self.dist.is_main:
            for lang in improved:
                save_atomic(checkpoint_dict(state, cfg.to_dict(), self.num_ids, epoch=epoch + 1,
                                            metrics=metrics[lang], split=split), self.out / f"best_{lang}.pth")
        self.save_last(state)
        barrier()

    def update_best(self, metrics: dict[str, dict[str, float]], epoch: int) -> list[str]:
        """The source and target languages whose (R1, mAP) improved this epoch (they alone
        select checkpoints; see final_checkpoint); their entry in ``self.best`` is updated."""
        best, selecting = self.best, (self.cfg.data.source_language, self.cfg.data.target_language)
        improved = [lang for lang, m in metrics.items() if lang in selecting
                    and (lang not in best or (m["R1"], m["mAP"]) > (best[lang]["R1"], best[lang]["mAP"]))]
        for lang in improved:
            best[lang] = {**metrics[lang], "epoch": epoch + 1}
        return improved

    def save_last(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """checkpoint_last.pth: everything a resumed run needs to continue bit for bit from
        ``self.pos``, including every process's generator states (a collective call)."""
        rng = all_gather_object(get_rng_state(self.device))
        if not self.dist.is_main:
            return
        save_atomic(checkpoint_dict(
            model_state(self.model) if state is None else state, self.cfg.to_dict(), self.num_ids,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), epoch=self.pos.epoch, batch=self.pos.batch, step=self.pos.step,
            steps_per_epoch=self.steps_per_epoch, best=self.best, skipped=self.skipped, rng=rng),
            self.out / "checkpoint_last.pth")

    def resume_from(self, path: str) -> dict[str, torch.Tensor] | None:
        """Load the training state of ``path``. This process's generator states are restored
        now when the checkpoint is at an epoch boundary; mid-epoch they are returned, to be
        restored by :meth:`train_one_epoch` at the point where they were saved."""
        ckpt = load_model_weights(self.model, path)
        if "optimizer" not in ckpt:
            raise CheckpointError(f"{path}: holds weights only, no training state; use it with --eval-only")
        pos = Position(ckpt["epoch"], ckpt.get("batch", 0), ckpt["step"])
        if pos.batch and ckpt["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(f"{path}: saved at batch {pos.batch} of {ckpt['steps_per_epoch']} in epoch "
                                  f"{pos.epoch + 1}, but this run has {self.steps_per_epoch} batches per epoch; "
                                  "resume with the same data.batch_size and number of processes")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        else:  # saved without loss scaling (fp32, bf16 or CPU), resumed with fp16
            info(f"{path} was saved without fp16 loss scaling: the GradScaler starts from its initial scale")
        self.pos, self.best, self.skipped = pos, ckpt["best"], ckpt.get("skipped", 0)
        states = ckpt["rng"]
        if len(states) != self.dist.world_size:
            info(f"{path} was written by {len(states)} process(es), this run has {self.dist.world_size}: "
                 "random streams differ from an uninterrupted run")
        rng = states[self.dist.rank % len(states)]
        rng = {"cpu": rng} if isinstance(rng, torch.Tensor) else rng  # written before CUDA states were saved
        info(f"resumed from {path}: epoch {pos.epoch + 1 if pos.batch else pos.epoch}, "
             f"batch {pos.batch}, step {pos.step}")
        if pos.batch:
            return rng
        set_rng_state(rng, self.device)
        return None

    def test_best(self, sets: dict[str, Any], split: str) -> dict[str, dict[str, float]]:
        """Every query language on the test split with its best checkpoint (final_checkpoint)."""
        cfg, dev = self.cfg, self.device
        test_sets = sets if split == "test" else self.eval_sets("test")
        used = {lang: final_checkpoint(cfg, lang) for lang, _ in languages(cfg)}
        results = {}
        for name in dict.fromkeys(used.values()):  # each checkpoint loaded once
            load_model_weights(self.model, str(self.out / name))
            self.loaded = name
            results.update({lang: evaluate_language(self.model, cfg, test_sets[lang], tl, dev, open_set=True)
                            for lang, tl in languages(cfg) if used[lang] == name})
        return self.finish({lang: results[lang] for lang in used}, test_sets, "test", used)
