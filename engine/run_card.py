"""Run card: the facts that decide a run's numbers, written into every run folder.

Retrieval numbers move with the number of processes and the per-process batch (ITC
contrasts against the gathered global batch, ITM draws hard negatives from each
process's own batch, D-MIM draws one block mask per process batch), with precision, and
with the code, libraries, data and checkpoint used. The card states them, and where the
run differs from the published setup (4 processes x 32, fp16 autocast on CUDA,
``model.use_gather`` true), so that two runs' numbers can be compared.

:func:`build_card` is pure (config, world size, device, data counts, a :class:`Probe` of
the environment); :func:`probe` runs git, reads library versions and hashes the
checkpoints; :func:`write_card` does both and writes ``run_card.md`` / ``run_card.json``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from data.check import SplitSummary
from engine.amp import eval_dtype, train_dtype
from utils.checkpoint import atomic_write
from utils.config import Config

if TYPE_CHECKING:
    from data.datasets import EvalData, TrainDataset
    from model.checkpoint import LoadReport

ROOT = Path(__file__).resolve().parents[1]  # the repository whose commit the card names
LIBRARIES = ("torch", "transformers", "tokenizers", "timm", "numpy")
GIT_TIMEOUT_S = 10.0
HASH_CHARS = 12
PUBLISHED = "4 processes x 32, fp16 autocast on CUDA, model.use_gather true"
PUBLISHED_BATCH = (4, 1, 32)  # processes, virtual processes, per-process batch
PRECISION_LABEL = {"fp16": "fp16 autocast", "bf16": "bf16 autocast", "fp32": "fp32"}


@dataclass(frozen=True)
class Probe:
    """What the environment adds to the card (see :func:`probe`); tests give their own."""
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str = "unknown"
    git_dirty: str = "unknown"  # yes | no | unknown
    pretrained_sha256: str = "none"
    weights_sha256: str = "none"  # --eval-only: the evaluated checkpoint


# ------------------------------------------------------------------ environment probes
def library_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git(root: Path, *args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def git_state(root: Path = ROOT) -> tuple[str, str]:
    """(commit, dirty: yes/no) of the code's repository; "unknown" without git or a repository."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return "unknown", "unknown"
    status = _git(root, "status", "--porcelain")
    return commit.strip(), "unknown" if status is None else "yes" if status.strip() else "no"


def file_sha256(path: str) -> str:
    """First hex digits of the file's sha256: which checkpoint a run used, not just its name."""
    if not path:
        return "none"
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return "unreadable"
    return digest.hexdigest()[:HASH_CHARS]


def probe(cfg: Config, weights: str | None = None) -> Probe:
    """Versions, git state and checkpoint hashes (a ~1 GB file takes seconds: call once, on rank 0)."""
    commit, dirty = git_state()
    return Probe(library_versions(), commit, dirty, file_sha256(cfg.model.resume), file_sha256(weights or ""))


# ------------------------------------------------------------------ data counts
def train_rows(cfg: Config, dataset: TrainDataset) -> list[SplitSummary]:
    """The training set as built: images, people, captions per language."""
    images, people = len(dataset.paths), dataset.num_persons
    return [SplitSummary("train", cfg.data.source_language, images, people, len(dataset.image_of)),
            SplitSummary("train", cfg.data.target_language, images, people, len(dataset.tgt.offsets) - 1)]


def eval_rows(sets: dict[str, EvalData]) -> list[SplitSummary]:
    """Evaluation sets as built, one row per language."""
    return [SplitSummary(d.split, lang, len(d.gallery_paths), len(set(d.gallery_pids.tolist())), len(d.captions))
            for lang, d in sets.items()]


def annotation_rows(cfg: Config, split: str) -> list[SplitSummary]:
    """A split not built yet (training builds test at the end), counted from its annotation files."""
    from data.annotations import load_language, split_languages

    return [SplitSummary.of_entries(split, lang, load_language(cfg, split, lang)) for lang in split_languages(cfg, split)]


def run_rows(cfg: Config, train: TrainDataset | None, sets: dict[str, EvalData], split: str) -> list[SplitSummary]:
    """Every split a run reads: train (when training), ``split``'s built sets, then test."""
    rows = train_rows(cfg, train) if train is not None else []
    return rows + eval_rows(sets) + ([] if split == "test" else annotation_rows(cfg, "test"))


def load_summary(report: LoadReport | None) -> dict[str, Any] | None:
    """Counts of the pretrained load report (None: no checkpoint was loaded)."""
    if report is None:
        return None
    out: dict[str, Any] = {name: len(getattr(report, name)) for name in ("loaded", "missing", "unexpected",
                                                                         "resized", "copied")}
    out["missing_not_fresh"] = len(report.unexpected_missing())  # missing beyond the heads a fine-tune adds
    out["mlm_decoder_tied"] = report.mlm_decoder_tied
    return out


# ------------------------------------------------------------------ the card (pure)
def config_sha256(cfg: Config) -> str:
    """Hash of the resolved config (sorted JSON): equal hashes, equal settings."""
    text = json.dumps(cfg.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_CHARS]


def batch_facts(cfg: Config, world_size: int) -> dict[str, Any]:
    """Global batch W x V x B and what each caption is contrasted and matched against."""
    w, v, b = world_size, cfg.distributed.virtual_processes, cfg.data.batch_size
    n, k = w * v * b, max(cfg.data.num_instances, 1)  # k: samples of the caption's own person, at least
    gathered = cfg.model.use_gather or w * v == 1
    itc_pool = n if gathered else b
    scope = ("the whole batch (one process)" if w * v == 1 else "the gathered global batch (model.use_gather)"
             if gathered else "its own (virtual) process batch (model.use_gather false)")
    itm_on = cfg.itm.weight > 0
    how = "by ITC similarity" if cfg.itm.negatives == "hard" else "uniformly (itm.negatives random)"
    masks = n if cfg.mim.per_sample_mask else w * v
    mask_how = "one per sample (mim.per_sample_mask)" if cfg.mim.per_sample_mask else "one block mask per process batch"
    return {
        "global_batch": {"processes": w, "virtual_processes": v, "per_process": b, "size": n,
                         "formation": f"{n} = {w} x {v} x {b} (processes x virtual processes x per-process batch)"},
        "itc_negatives": {"up_to": itc_pool - k, "text": f"up to {itc_pool - k} images, over {scope}; "
                          "images of the caption's own person are positives, not negatives"},
        "itm_negatives": {"pool_up_to": b - k if itm_on else 0, "mode": cfg.itm.negatives if itm_on else "off",
                          "text": f"up to {b - k} candidates, from each (virtual) process's own batch, other "
                                  f"people only; drawn {how}" if itm_on else "ITM off (itm.weight 0)"},
        "mim_masks_per_step": {"count": masks, "text": f"{masks}: {mask_how}"
                               + ("" if cfg.mim.use_mim else " (mim.use_mim false: D-MIM off)")},
    }


def precision_facts(cfg: Config, device: str) -> dict[str, Any]:
    """Training and evaluation precision as engine.amp decides them on ``device``."""
    dev = torch.device(device)
    applies = train_dtype(cfg, dev) is not None  # the very rule training uses
    train = cfg.schedule.amp if applies else "fp32"
    evaluation = train if eval_dtype(cfg, dev) is not None else "fp32"
    label = PRECISION_LABEL[train] + (" + GradScaler" if train == "fp16" else "")
    if not applies and cfg.schedule.amp != "fp32":
        label += f" (schedule.amp {cfg.schedule.amp} applies on CUDA or with schedule.cpu_amp)"
    return {"device": device, "amp": cfg.schedule.amp, "cpu_amp": cfg.schedule.cpu_amp, "amp_applies": applies,
            "train": train, "eval_amp": cfg.model.eval_amp, "eval": evaluation,
            "text": f"training {label}; evaluation {PRECISION_LABEL[evaluation]} (model.eval_amp "
                    f"{str(cfg.model.eval_amp).lower()}); device {device}"}


def differences(cfg: Config, batch: dict[str, Any], precision: dict[str, Any]) -> list[str]:
    """Each way this run departs from the published setup, in words."""
    g = batch["global_batch"]
    w, v, b, n = g["processes"], g["virtual_processes"], g["per_process"], g["size"]
    out = []
    if n != 4 * 32:
        out.append(f"global batch {n} instead of 128 ({w} x {v} x {b})")
    elif (w, v, b) != PUBLISHED_BATCH:
        out.append(f"global batch 128 formed as {w} x {v} x {b} instead of 4 x 1 x 32")
    if b != 32 and cfg.itm.weight > 0:
        out.append(f"ITM negatives from up to {batch['itm_negatives']['pool_up_to']} candidates instead of 31 "
                   f"(per-process batch {b})")
    masks = batch["mim_masks_per_step"]["count"]
    if masks != 4:
        out.append(f"{masks} D-MIM mask{'' if masks == 1 else 's'} per step instead of 4")
    if not cfg.model.use_gather and w * v > 1:
        out.append(f"ITC within each process batch: up to {batch['itc_negatives']['up_to']} negatives "
                   "instead of up to 127 (model.use_gather false)")
    if precision["device"] != "cuda":
        out.append("CPU instead of CUDA")
    if precision["train"] != "fp16":
        out.append(f"{PRECISION_LABEL[precision['train']]} instead of fp16 autocast")
    if precision["eval"] != "fp32":
        out.append(f"evaluation under {PRECISION_LABEL[precision['eval']]} instead of fp32 (model.eval_amp)")
    if cfg.data.num_instances:
        out.append(f"identity-balanced batches ({cfg.data.num_instances} samples per person) instead of random")
    if cfg.itm.negatives != "hard":
        out.append("ITM negatives drawn uniformly instead of by ITC similarity (itm.negatives random)")
    if cfg.model.gather_with_grad:
        out.append("ITC gradient summed over processes instead of each process's own slice (model.gather_with_grad)")
    return out


def build_card(cfg: Config, world_size: int, device: str, data: Sequence[SplitSummary], env: Probe,
               load: dict[str, Any] | None = None, weights: str | None = None) -> dict[str, Any]:
    """The card's facts (JSON-ready): batch formation, negatives, masks, seeds, precision,
    versions, code and data identity, and the differences from the published setup."""
    batch, precision = batch_facts(cfg, world_size), precision_facts(cfg, device)
    card: dict[str, Any] = {
        **batch,
        "seeds": {"seed": cfg.misc.seed, "deterministic": cfg.misc.deterministic,
                  "text": f"misc.seed {cfg.misc.seed}; torch seeded per (step, process) from (seed, step, process "
                          f"index); samples per (seed, epoch, index); misc.deterministic "
                          f"{str(cfg.misc.deterministic).lower()}"},
        "precision": precision,
        "compile": cfg.model.compile,
        "versions": dict(env.versions),
        "git": {"commit": env.git_commit, "dirty": env.git_dirty},
        "config_sha256": config_sha256(cfg),
        "source": cfg.source,
        "pretrained": {"path": cfg.model.resume, "sha256": env.pretrained_sha256, "load": load},
        "data": [asdict(r) for r in data],
        "differences": differences(cfg, batch, precision),
    }
    if weights is not None:
        card["weights"] = {"path": weights, "sha256": env.weights_sha256}
    return card


# ------------------------------------------------------------------ formats
def _load_text(card: dict[str, Any]) -> str:
    pre = card["pretrained"]
    if not pre["path"]:
        return "none (model.resume empty)"
    load = pre["load"]
    counts = ("not loaded here" if load is None else ", ".join(
        f"{load[k]} {k.replace('_', ' ')}" for k in ("loaded", "missing", "missing_not_fresh", "unexpected",
                                                     "resized", "copied")))
    return f"{pre['path']} (sha256 {pre['sha256']}); {counts}"


def to_markdown(card: dict[str, Any]) -> str:
    """run_card.md's text (also what ``main.py --check`` prints)."""
    git = card["git"]
    rows = [("global batch", card["global_batch"]["formation"]),
            ("ITC negatives per caption", card["itc_negatives"]["text"]),
            ("ITM hard-negative pool", card["itm_negatives"]["text"]),
            ("D-MIM masks per step", card["mim_masks_per_step"]["text"]),
            ("seeds", card["seeds"]["text"]),
            ("precision", card["precision"]["text"]),
            ("model.compile", str(card["compile"]).lower()),
            ("pretrained checkpoint", _load_text(card))]
    if "weights" in card:
        rows.append(("evaluated checkpoint", f"{card['weights']['path']} (sha256 {card['weights']['sha256']})"))
    rows += [("config", f"{card['source']} (sha256 {card['config_sha256']}, resolved)"),
             ("code", f"git {git['commit']}, dirty: {git['dirty']}"),
             ("libraries", ", ".join(f"{k} {v}" for k, v in card["versions"].items()))]
    diffs = card["differences"]
    lines = ["# Run card", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
             f"Differences from the published setup ({PUBLISHED}):", "",
             *([f"- {d}" for d in diffs] or ["- none"]), ""]
    if card["data"]:
        lines += ["Data:", "", "| split | lang | images | people | captions |", "|---|---|---|---|---|",
                  *(f"| {r['split']} | {r['lang']} | {r['images']} | {r['people']} | {r['captions']} |"
                    for r in card["data"]), ""]
    return "\n".join(lines)


def report_summary(card: dict[str, Any]) -> list[str]:
    """The block at the top of report.md: how the batch was formed, precision, differences."""
    p, diffs = card["precision"], card["differences"]
    return ["Run (full card: run_card.md):", "",
            f"- global batch: {card['global_batch']['formation']}",
            f"- precision: training {PRECISION_LABEL[p['train']]}, evaluation {PRECISION_LABEL[p['eval']]}, "
            f"on {p['device']}",
            "- differences from the published setup: " + ("; ".join(diffs) if diffs else "none"), ""]


def write_card(out: Path, cfg: Config, world_size: int, device: str, data: Sequence[SplitSummary],
               load: LoadReport | None = None, weights: str | None = None) -> dict[str, Any]:
    """Probe the environment, then write run_card.md and run_card.json atomically; return the card."""
    card = build_card(cfg, world_size, device, data, probe(cfg, weights), load_summary(load), weights)
    text = json.dumps(card, indent=2, ensure_ascii=False)
    atomic_write(Path(out) / "run_card.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    atomic_write(Path(out) / "run_card.md", lambda tmp: tmp.write_text(to_markdown(card), encoding="utf-8"))
    return card


__all__ = ["Probe", "build_card", "to_markdown", "report_summary", "write_card", "probe", "git_state",
           "library_versions", "file_sha256", "config_sha256", "run_rows", "load_summary"]
