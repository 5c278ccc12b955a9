"""Evaluation report files written next to metrics.json; ``write_reports`` is the entry point.

``write_reports`` writes, each atomically (temporary file, then ``os.replace``):

* ``report.md``: under its title the run card's summary (engine/run_card.py), then per
  language a metrics table (formatted from the very dict that goes to metrics.json), its
  CMC values and the example queries with their top-5 as text; when the top k > 1 was
  re-ranked, ITC against the ITM re-ranking on the queries re-ranking decides;
* ``cmc.png`` and ``examples.png``: the pictures of engine/figures.py;
* ``explain.png``, only when given a model to explain with (the final report of training):
  the top hits of example queries with each query word's cross-attention heat maps
  (engine/explain.py, engine/explain_figure.py).

The reference levels table is engine/reference_levels.py.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.explain_figure import Explainer, report_explanations
from engine.figures import CMC_RANKS, EXAMPLES_TOP, draw_cmc, draw_examples, pick_examples, save_png
from engine.open_set import open_set_summary, open_set_table
from engine.reference_levels import SUMMARY_METRICS, read_levels, reference_table
from engine.run_card import report_summary
from utils.checkpoint import atomic_write
from utils.logging import info
from utils.metrics import cmc_curve

if TYPE_CHECKING:
    from data.datasets import EvalData
    from engine.evaluate import EvalResult


def metric_table(metrics: dict[str, float]) -> list[str]:
    """One-row Markdown table of every entry of the metrics dict (floats with 2 decimals)."""
    cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in metrics.values()]
    return ["| " + " | ".join(metrics) + " |", "|" + "---|" * len(metrics), "| " + " | ".join(cells) + " |"]


def summary_table(results: dict[str, EvalResult], notes: dict[str, dict[str, str]] | None) -> list[str]:
    """One row per query language: its notes (e.g. role, projection, checkpoint), then the main metrics."""
    cols = list(next(iter(notes.values()))) if notes else []
    keys = [k for k in SUMMARY_METRICS if all(k in r.metrics for r in results.values())]
    rows = [[lang, *(notes[lang][c] for c in cols), *(f"{r.metrics[k]:.2f}" for k in keys)] for lang, r in results.items()]
    return ["| " + " | ".join(["language", *cols, *keys]) + " |", "|" + "---|" * (1 + len(cols) + len(keys)),
            *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(results: dict[str, EvalResult], sets: dict[str, EvalData], split: str,
             notes: dict[str, dict[str, str]] | None = None, levels: dict[str, dict[str, float]] | None = None,
             card: dict[str, Any] | None = None, explained: bool = False) -> str:
    """report.md's text: the run card's summary (when given), summary, reference levels and
    re-ranking tables, then one section per language; ``explained``: link explain.png too."""
    lines = [f"# Evaluation report ({split} split)", "", *(report_summary(card) if card else []),
             "Metrics in percent over the queries that have a match in the gallery; "
             "the same numbers as metrics.json.", "", *summary_table(results, notes), "",
             "Reference levels:", "", *reference_table(results, sets, levels), "", *rerank_pairs_table(results),
             *open_set_table({lang: open_set_summary(r.open_set) for lang, r in results.items() if r.open_set}),
             "![CMC curve](cmc.png)", "",
             "![Example queries](examples.png)", "",
             *(["![Why these images: where each query word looks](explain.png)", ""] if explained else [])]
    for lang, r in results.items():
        data = sets[lang]
        cmc = cmc_curve(r.stats, CMC_RANKS)
        lines += [f"## {lang}", "", *metric_table(r.metrics), "",
                  "CMC, Rank-k for k = 1..20 (%): " + ", ".join(f"{v:.1f}" for v in cmc), "",
                  f"Example queries (top-{EXAMPLES_TOP}; + same person, - another person):", ""]
        root = os.path.dirname(os.path.commonprefix(data.gallery_paths))  # file names relative to the gallery
        for kind, q in pick_examples(r.stats):
            top = r.stats["top"][q, :EXAMPLES_TOP].tolist()
            marks = ", ".join(f"{'+' if data.gallery_pids[g] == data.query_pids[q] else '-'}"
                              f"{os.path.relpath(data.gallery_paths[g], root)}" for g in top)
            lines.append(f"- {kind}, query {q} (AP {100 * float(r.stats['ap'][q]):.2f}): "
                         f"\"{data.captions[q]}\" -> {marks}")
        lines.append("")
    return "\n".join(lines)


def rerank_pairs_table(results: dict[str, EvalResult]) -> list[str]:
    """Per re-ranked language, ITC against the ITM re-ranking on its split queries (those whose
    top k by ITC hold exactly one right image; ``EvalResult.rerank_pairs``), then a blank line;
    nothing when no language was re-ranked beyond its first image."""
    pairs = {lang: r.rerank_pairs for lang, r in results.items() if r.rerank_pairs is not None}
    if not pairs:
        return []

    def cell(n: int, rate: float | None) -> str:
        return f"{n} ({rate:.2f}%)" if rate is not None else "-"

    rows = [f"| {lang} | {p['k']} | {p['split_queries']} of {p['queries']} | "
            f"{cell(p['itc_right_first'], p['itc_first_rate'])} | {cell(p['itm_right_first'], p['itm_first_rate'])} |"
            for lang, p in pairs.items()]
    deeper = any(p["k"] > 2 for p in pairs.values())
    return ["Re-ranking on the queries it decides: a split query has exactly one image of the right person "
            "among its top k by ITC similarity; each ranking is right on it when it puts that image first. "
            "On these queries re-ranking changes the number right at rank 1 by ITM minus ITC"
            + ("; with k > 2, queries with several right images in their top k can change too." if deeper else
               " (with k = 2, the only queries it can change)."), "",
            "| language | top k | split queries | ITC right first | ITM re-ranking right first |",
            "|---|---|---|---|---|", *rows, ""]


def write_reports(out: Path, results: dict[str, EvalResult], sets: dict[str, EvalData], split: str,
                  notes: dict[str, dict[str, str]] | None = None, reference_dir: str | None = None,
                  card: dict[str, Any] | None = None, explain: Explainer | None = None) -> None:
    """report.md, cmc.png and examples.png in ``out`` for one evaluation (results and sets per
    language, any number of languages); ``notes`` per language (same keys for each: e.g.
    role, projection, checkpoint) become columns of report.md's summary table; ``reference_dir``
    (the annotation folder) may hold the reference levels of ``reference_table``; ``card`` (the
    run card, engine/run_card.py) is summarised under the title, so the numbers come with how
    the batch was formed and how the run differs from the published setup. ``explain``
    (caption, language, image paths -> ``engine.explain.Explanation`` per path; e.g.
    ``engine.explain.explain`` bound to a model) adds explain.png, linked from report.md."""
    out = Path(out)
    explained = explain is not None and write_explanations(out / "explain.png", results, sets, explain)
    text = markdown(results, sets, split, notes, read_levels(reference_dir, split), card, explained)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    draw_cmc(results, out / "cmc.png", split)
    save_png(draw_examples(results, sets), out / "examples.png")


def write_explanations(path: Path, results: dict[str, EvalResult], sets: dict[str, EvalData],
                       explain: Explainer) -> bool:
    """explain.png, or a warning when it cannot be made (an unreadable image, memory, fonts): the picture
    is an illustration, and a finished run's report must not fail for it. Returns whether it was written."""
    try:
        save_png(report_explanations(results, sets, explain), path)
    except Exception as e:  # noqa: BLE001 - any failure of the illustration leaves the report intact
        info(f"warning: explain.png not written: {type(e).__name__}: {e}")
        return False
    return True


__all__ = ["markdown", "write_explanations", "write_reports"]
