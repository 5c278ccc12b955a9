"""Evaluation report: report.md numbers equal metrics.json, PNGs valid and of the layout's size, CJK fallback, speed."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from engine import report
from engine.evaluate import EvalResult
from engine.report import write_reports
from tests.retrieval_fixtures import trained_run  # noqa: F401
from utils.metrics import per_query_stats, summarize

CAPTIONS = {"en": "a man in a red shirt", "ch": "一个穿红色衬衫的男人"}


def fake_eval(root: Path, ids: int, per_id: int, captions_per_image: int, seed: int = 0):
    """Results and eval sets of two aligned languages over real PNG files, with random rankings."""
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    paths, pids = [], []
    for i in range(ids):
        for k in range(per_id):
            p = root / f"{i:04d}_{k}.png"
            colour = tuple(int(c) for c in torch.randint(0, 255, (3,), generator=g))
            Image.new("RGB", (32, 64), colour).save(p)
            paths.append(str(p))
            pids.append(i)
    gallery_pids = torch.tensor(pids)
    query_pids = gallery_pids.repeat_interleave(captions_per_image)
    order = torch.stack([torch.randperm(len(paths), generator=g) for _ in query_pids])
    results, sets = {}, {}
    for lang, caption in CAPTIONS.items():
        stats = per_query_stats(gallery_pids[order] == query_pids[:, None])
        stats["top"] = order[:, :10]
        results[lang] = EvalResult(summarize(stats), stats)
        sets[lang] = SimpleNamespace(gallery_paths=paths, gallery_pids=gallery_pids, query_pids=query_pids,
                                     captions=[f"{caption} {q}" for q in range(len(query_pids))])
    return results, sets


def report_tables(text: str) -> dict[str, dict[str, str]]:
    """Per language section of report.md: metric name -> the formatted cell."""
    out = {}
    for section in text.split("\n## ")[1:]:
        lang = section.splitlines()[0].strip()
        rows = [line for line in section.splitlines() if line.startswith("|")]
        names = [c.strip() for c in rows[0].strip("|").split("|")]
        values = [c.strip() for c in rows[2].strip("|").split("|")]
        out[lang] = dict(zip(names, values))
    return out


def assert_numbers_equal(report_md: str, metrics: dict) -> None:
    tables = report_tables(report_md)
    assert tables.keys() == metrics.keys()
    for lang, m in metrics.items():
        assert tables[lang].keys() == m.keys()
        for key, value in m.items():
            assert float(tables[lang][key]) == pytest.approx(value, abs=0.005), (lang, key)


def test_report_of_a_training_run_matches_its_metrics_json(trained_run):
    run = trained_run.run
    metrics = json.loads((run / "metrics.json").read_text())
    assert_numbers_equal((run / "report.md").read_text(encoding="utf-8"), metrics)
    with Image.open(run / "cmc.png") as im:
        assert im.format == "PNG" and im.size == report.CMC_SIZE
    with Image.open(run / "examples.png") as im:
        im.load()
        assert im.format == "PNG"
        assert im.size == (report.EXAMPLES_W, report.examples_height([4, 4]))


def test_files_sizes_and_numbers(tmp_path):
    results, sets = fake_eval(tmp_path / "imgs", ids=5, per_id=2, captions_per_image=2)
    out = tmp_path / "out"
    write_reports(out, results, sets, "test")
    assert sorted(p.name for p in out.iterdir()) == ["cmc.png", "examples.png", "report.md"]  # no temporary files left
    metrics = {lang: r.metrics for lang, r in results.items()}
    assert_numbers_equal((out / "report.md").read_text(encoding="utf-8"), json.loads(json.dumps(metrics)))
    with Image.open(out / "examples.png") as im:
        im.load()
        assert im.size == (report.EXAMPLES_W, report.examples_height([4, 4]))
    with Image.open(out / "cmc.png") as im:
        im.load()
        assert im.size == report.CMC_SIZE


def test_examples_are_the_best_then_the_worst_queries():
    stats = {"ap": torch.tensor([0.5, 1.0, 0.1, 0.9, 0.0, 0.3]), "valid": torch.tensor([True] * 5 + [False])}
    assert report.pick_examples(stats) == [("best", 1), ("best", 3), ("worst", 4), ("worst", 2)]
    few = {"ap": torch.tensor([0.2, 0.7]), "valid": torch.tensor([True, True])}
    assert report.pick_examples(few) == [("best", 1), ("best", 0)]


def test_chinese_caption_without_a_cjk_font_shows_the_aligned_english_one(tmp_path, monkeypatch):
    results, sets = fake_eval(tmp_path / "imgs", ids=3, per_id=2, captions_per_image=1)
    monkeypatch.setattr(report, "cjk_font_path", lambda: None)
    shown = report.shown_caption("ch", 4, sets)
    assert shown.startswith("[en caption of this query") and shown.endswith(sets["en"].captions[4])
    assert report.shown_caption("en", 4, sets) == sets["en"].captions[4]
    sets["en"].query_pids = sets["en"].query_pids.flip(0)  # not aligned any more: the caption itself, drawn with ?
    assert report.shown_caption("ch", 4, sets) == sets["ch"].captions[4]
    text, _ = report.drawable(sets["ch"].captions[4])
    assert set(text) <= set("? 4")
    write_reports(tmp_path / "out", results, sets, "test")
    with Image.open(tmp_path / "out" / "examples.png") as im:
        im.load()


def test_cjk_font_is_used_when_installed():
    path = report.cjk_font_path()
    if path is None:
        pytest.skip("no font with Chinese glyphs installed (fc-list :lang=zh is empty)")
    assert report.font_for(CAPTIONS["ch"]).path == path


def test_wrap_breaks_words_and_chinese_text():
    font = report._font(report.latin_font_path())
    lines = report.wrap("one two three four five six seven eight nine ten", font, 60, 10)
    assert len(lines) > 1 and all(font.getlength(line) <= 60 for line in lines)
    assert " ".join(lines) == "one two three four five six seven eight nine ten"
    short = report.wrap("x" * 400, font, 100, 2)
    assert len(short) == 2 and short[-1].endswith("...")
    assert report.wrap("一个穿红色衬衫的男人" * 5, font, 80, 20)[0] != "一个穿红色衬衫的男人" * 5


def test_demo_sized_report_is_fast(tmp_path):
    """400 gallery images and 800 queries per language, as in the demo's test split."""
    results, sets = fake_eval(tmp_path / "imgs", ids=100, per_id=4, captions_per_image=2)
    write_reports(tmp_path / "warm", results, sets, "test")  # imports matplotlib, loads fonts
    start = time.perf_counter()
    write_reports(tmp_path / "out", results, sets, "test")
    seconds = time.perf_counter() - start
    assert seconds < 4.0, seconds  # about 0.6 s on an idle 2-core machine; headroom for a busy one
    assert re.search(r"\| 800 \|", (tmp_path / "out" / "report.md").read_text(encoding="utf-8"))
