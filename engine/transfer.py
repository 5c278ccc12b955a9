"""Transfer table: one checkpoint evaluated on every dataset x query language.

Cross-dataset and zero-shot languages are scored with the training protocol (the
checkpoint's stored ``model.k_test``, ``model.rerank_score`` and evaluation precision; the
query projection of ``utils.config.uses_tl_proj``), so each cell equals what
``main.py --eval-only`` reports for that dataset and language. A language without an
annotation file for a dataset is an empty cell with its reason, not an error.

The gallery (the split's images) is encoded once per dataset and shared by every language
whose eval set has the same image list (aligned translations); a language whose image
list differs gets its own encoding, so the result never depends on the sharing.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data.datasets import EvalData, build_eval_data
from engine.amp import eval_dtype
from engine.evaluate import encode_gallery, evaluate_language
from engine.reference_levels import chance_levels
from utils.checkpoint import atomic_write
from utils.config import Config, projection_name, uses_tl_proj
from utils.config.paths import annotation_path

TABLE_METRICS = ("R1", "R5", "R10", "mAP")  # shown per cell in transfer.md


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset to evaluate on: its name in the table and the stored config's two overrides."""
    name: str
    anno_dir: str
    image_dir: str


@dataclass
class Cell:
    """One (dataset, language) result; ``metrics`` is None for an empty cell, which has a ``reason``."""
    metrics: dict[str, float] | None
    projection: str
    reason: str | None = None


@dataclass
class DatasetRow:
    """A dataset's cells per language and the chance level of its (first evaluated) gallery and queries."""
    spec: DatasetSpec
    cells: dict[str, Cell]
    chance: dict[str, float] | None = None


@dataclass
class TransferTable:
    """Every dataset's row, in the order given, and the evaluation settings every cell used."""
    checkpoint: str
    split: str
    languages: list[str]
    settings: dict[str, Any]
    rows: list[DatasetRow] = field(default_factory=list)


def dataset_config(cfg: Config, spec: DatasetSpec) -> Config:
    """The stored config with the dataset's folders: the ``anno_dir=`` / ``image_dir=`` overrides."""
    return dataclasses.replace(cfg, anno_dir=spec.anno_dir, image_dir=spec.image_dir)


def missing_reason(cfg: Config, split: str, lang: str) -> str | None:
    """Why ``lang`` has no cell on this dataset (its annotation file is absent), or None."""
    path = annotation_path(cfg, split, lang)
    return None if path.is_file() else f"no {path.name}"


def settings(cfg: Config, device: torch.device) -> dict[str, Any]:
    """The protocol settings of the stored config, written beside the table so the numbers can be traced."""
    dtype = eval_dtype(cfg, device)
    return {"k_test": cfg.model.k_test, "rerank_score": cfg.model.rerank_score,
            "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch."),
            "device": device.type, "source_language": cfg.data.source_language,
            "target_language": cfg.data.target_language, "tl_proj_languages": list(cfg.data.tl_proj_languages)}


def evaluate_dataset(model: torch.nn.Module, tokenizer: Any, cfg: Config, spec: DatasetSpec,
                     languages: Sequence[str], split: str, device: torch.device) -> DatasetRow:
    """Every language of one dataset, the gallery encoded once per distinct image list."""
    dcfg = dataset_config(cfg, spec)
    bs, workers = dcfg.data.test_batch_size, dcfg.data.num_workers
    galleries: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
    row = DatasetRow(spec, {})
    for lang in languages:
        reason = missing_reason(dcfg, split, lang)
        if reason is not None:
            row.cells[lang] = Cell(None, projection_name(dcfg, lang), reason)
            continue
        data: EvalData = build_eval_data(dcfg, split, lang, tokenizer)
        key = tuple(data.gallery_paths)
        if key not in galleries:
            galleries[key] = encode_gallery(model, data, bs, workers, device, eval_dtype(dcfg, device))
        result = evaluate_language(model, dcfg, data, uses_tl_proj(dcfg, lang), device, gallery=galleries[key])
        row.cells[lang] = Cell(result.metrics, projection_name(dcfg, lang))
        if row.chance is None:
            row.chance = chance_levels(data.gallery_pids, data.query_pids)
    return row


def transfer_table(model: torch.nn.Module, tokenizer: Any, cfg: Config, datasets: Sequence[DatasetSpec],
                   languages: Sequence[str], split: str = "test", device: torch.device = torch.device("cpu"),
                   checkpoint: str = "") -> TransferTable:
    """The table of one loaded checkpoint (``engine.retriever.Retriever.from_checkpoint`` gives its parts)."""
    model.eval()
    table = TransferTable(checkpoint, split, list(languages), settings(cfg, device))
    table.rows = [evaluate_dataset(model, tokenizer, cfg, spec, languages, split, device) for spec in datasets]
    return table


# ------------------------------------------------------------------------------------ output
def format_cell(cell: Cell) -> str:
    if cell.metrics is None:
        return f"— ({cell.reason})"
    return " / ".join(f"{cell.metrics[k]:.2f}" for k in TABLE_METRICS)


def to_markdown(table: TransferTable) -> str:
    """transfer.md: datasets x languages, each cell R1 / R5 / R10 / mAP, chance beside each dataset."""
    s = table.settings
    head = [f"# Transfer table ({table.split} split)", "",
            f"Checkpoint `{table.checkpoint}`; re-ranking of the top {s['k_test']} by {s['rerank_score']}, "
            f"{s['precision']} evaluation on {s['device']}.", "",
            "Each cell: " + " / ".join(TABLE_METRICS) + " (%). Chance: the expected metrics of a random ranking "
            "of the dataset's gallery (from its relevance counts).", "",
            "| dataset | " + " | ".join(f"{lang} ({proj})" for lang, proj in projections(table)) + " | chance |",
            "|" + "---|" * (len(table.languages) + 2)]
    rows = []
    for row in table.rows:
        chance = "—" if row.chance is None else " / ".join(f"{row.chance[k]:.2f}" for k in TABLE_METRICS)
        cells = [format_cell(row.cells[lang]) for lang in table.languages]
        rows.append(f"| {row.spec.name} | " + " | ".join(cells) + f" | {chance} |")
    return "\n".join(head + rows) + "\n"


def projections(table: TransferTable) -> list[tuple[str, str]]:
    """(language, projection) per column, from the first dataset that has the language (all agree)."""
    out = []
    for lang in table.languages:
        proj = next((r.cells[lang].projection for r in table.rows if lang in r.cells), "")
        out.append((lang, proj))
    return out


def to_json(table: TransferTable) -> dict[str, Any]:
    """transfer.json: the settings, then per dataset its folders, chance and every cell (all metrics)."""
    return {"checkpoint": table.checkpoint, "split": table.split, "languages": table.languages,
            "settings": table.settings,
            "datasets": {r.spec.name: {"anno_dir": r.spec.anno_dir, "image_dir": r.spec.image_dir,
                                       "chance": r.chance,
                                       "cells": {lang: dataclasses.asdict(c) for lang, c in r.cells.items()}}
                         for r in table.rows}}


def r1_matrix(table: TransferTable) -> list[list[float]]:
    """R1 per dataset (row) and language (column); NaN for an empty cell."""
    return [[math.nan if r.cells[lang].metrics is None else r.cells[lang].metrics["R1"] for lang in table.languages]
            for r in table.rows]


def draw_heatmap(table: TransferTable, path: Path) -> None:
    """transfer_r1.png: R1 as colour, value (or n/a) written in each cell; Agg canvas, no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = r1_matrix(table)
    fig = Figure(figsize=(1.6 + 1.1 * len(table.languages), 1.2 + 0.6 * len(table.rows)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(table.languages)), table.languages)
    ax.set_yticks(range(len(table.rows)), [r.spec.name for r in table.rows])
    for i, line in enumerate(values):
        for j, v in enumerate(line):
            text, colour = ("n/a", "black") if math.isnan(v) else (f"{v:.1f}", "white" if v < 60 else "black")
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=9)
    ax.set_title(f"R1 (%), {table.split} split")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def write_outputs(table: TransferTable, out: Path) -> list[Path]:
    """transfer.md, transfer.json and transfer_r1.png under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md, js, png = out / "transfer.md", out / "transfer.json", out / "transfer_r1.png"
    text = to_markdown(table)
    atomic_write(md, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    blob = json.dumps(to_json(table), indent=2, ensure_ascii=False)
    atomic_write(js, lambda tmp: tmp.write_text(blob, encoding="utf-8"))
    draw_heatmap(table, png)
    return [md, js, png]
