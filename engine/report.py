"""Evaluation report files written next to metrics.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.metrics import cmc_curve


def write_reports(out: Path, results: dict[str, Any], sets: dict[str, Any], split: str) -> None:
    """``report.md``: one metrics table per language and its CMC values (Rank-1..20)."""
    lines = [f"# Evaluation report ({split} split)", ""]
    for lang, r in results.items():
        m = r.metrics
        lines += [f"## {lang}", "", "| R1 | R5 | R10 | mAP | mINP | queries |", "|---|---|---|---|---|---|",
                  f"| {m['R1']:.2f} | {m['R5']:.2f} | {m['R10']:.2f} | {m['mAP']:.2f} | {m['mINP']:.2f} | {m['num_queries']} |",
                  "", "CMC (Rank-1..20): " + ", ".join(f"{v:.1f}" for v in cmc_curve(r.stats)), ""]
    tmp = out / "report.md.tmp"
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(out / "report.md")
