"""Training curves from a run's JSONL log, as one PNG.

    python -m tools.plot_log runs/demo                  # writes runs/demo/log.png
    python -m tools.plot_log runs/demo/log.jsonl --out curves.png

Three panels: every logged loss term and their sum against the step, the learning rate
against the step (dotted lines mark the ends of epochs), and R1 per epoch for each
evaluated language (dashed, when logged: from the ITC similarities alone, before
re-ranking). A resumed run logs some steps twice; the later record wins. A last line cut
short by a killed run is skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from utils.errors import InputError

STEP_FIELDS = {"kind", "time", "epoch", "step", "lr", "samples_per_s", "loss"}  # not loss terms
FIGSIZE = (15.0, 4.0)  # inches at 100 dpi: a 1500 x 400 PNG
DPI = 100


class LogError(InputError):
    """An unusable log file, reported as one line."""


def read_log(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL log; a broken line is an error unless it is the (interrupted) last one."""
    if not path.is_file():
        raise LogError(f"log not found: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines):
                print(f"warning: {path}: skipping the incomplete last line {i}", file=sys.stderr)
                continue
            raise LogError(f"{path}: line {i} is not JSON: {e.msg}") from None
    return records


def curves(records: list[dict[str, Any]]) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """(step -> step record, epoch -> eval record), the later record winning for a repeated step or epoch."""
    steps = {r["step"]: r for r in records if r.get("kind") == "step"}
    evals = {r["epoch"]: r for r in records if r.get("kind") == "eval"}
    return dict(sorted(steps.items())), dict(sorted(evals.items()))


def plot(records: list[dict[str, Any]], out: Path, title: str) -> tuple[int, int]:
    """Draw the three panels to ``out`` (atomically); returns the PNG size in pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from utils.checkpoint import atomic_write

    steps, evals = curves(records)
    if not steps:
        raise LogError(f"{title}: no training steps logged yet")
    x = list(steps)
    terms = [k for r in steps.values() for k, v in r.items() if k not in STEP_FIELDS and isinstance(v, (int, float))]
    terms = list(dict.fromkeys(terms))
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr, ax_r1 = fig.subplots(1, 3)
    ends = [r["step"] for r in evals.values() if "step" in r]
    for term in terms:
        pts = [(s, r[term]) for s, r in steps.items() if term in r]
        ax_loss.plot(*zip(*pts), label=term, linewidth=1.2)
    ax_loss.plot(x, [r["loss"] for r in steps.values()], "k--", label="total", linewidth=1.2)
    if all(r["loss"] > 0 for r in steps.values()):
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss terms")
    ax_loss.legend(fontsize=8)
    ax_lr.plot(x, [r["lr"] for r in steps.values()], color="tab:purple")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (ax_loss, ax_lr):
        for e in ends:
            ax.axvline(e, color="grey", linestyle=":", linewidth=0.8)
        ax.grid(alpha=0.3)
    if evals:
        split = next(iter(evals.values())).get("split", "")
        langs = list(dict.fromkeys(lang for r in evals.values() for lang in r["metrics"]))
        for lang in langs:
            pts = [(e, r["metrics"][lang]["R1"]) for e, r in evals.items() if lang in r["metrics"]]
            line, = ax_r1.plot(*zip(*pts), marker="o", label=lang)
            itc = [(e, r["itc_metrics"][lang]["R1"]) for e, r in evals.items() if lang in r.get("itc_metrics", {})]
            if itc:
                ax_r1.plot(*zip(*itc), "--", marker="x", color=line.get_color(), label=f"{lang}, ITC only")
        ax_r1.set(xlabel="epoch", ylabel="R1 (%)", title=f"R1 per epoch ({split} split)")
        ax_r1.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_r1.legend(fontsize=8)
        ax_r1.grid(alpha=0.3)
    else:
        ax_r1.text(0.5, 0.5, "no evaluation logged yet", ha="center", va="center", transform=ax_r1.transAxes)
        ax_r1.set(title="R1 per epoch", xticks=[], yticks=[])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tools.plot_log", description=__doc__.split("\n\n")[0])
    p.add_argument("log", help="run folder (its log.jsonl) or a JSONL log file")
    p.add_argument("--out", help="PNG to write (default: log.png next to the log)")
    args = p.parse_args(argv)
    path = Path(args.log)
    if path.is_dir():
        path = path / "log.jsonl"
    out = Path(args.out) if args.out else path.with_name("log.png")
    try:
        size = plot(read_log(path), out, str(path))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out} ({size[0]}x{size[1]})")


if __name__ == "__main__":
    main()
