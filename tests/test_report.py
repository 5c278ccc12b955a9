"""Evaluation report: report.md numbers equal metrics.json and the rankings, cmc.png draws the
CMC values where they belong, examples.png shows the right images in the right frames, CJK
fallback, speed."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from engine import figures, report
from engine.evaluate import EvalResult
from engine.open_set import open_set_summary
from engine.report import write_reports
from tests.image_checks import CYCLE, assert_series_drawn, axes_boxes, pixels
from utils.metrics import per_query_stats, summarize

CAPTIONS = {"en": "a man in a red shirt", "ch": "一个穿红色衬衫的男人"}


def fake_eval(root: Path, ids: int, per_id: int, captions_per_image: int, seed: int = 0):
    """Results and eval sets of two aligned languages over real one-colour PNG files, with a
    random ranking per language."""
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
    results, sets = {}, {}
    for lang, caption in CAPTIONS.items():
        order = torch.stack([torch.randperm(len(paths), generator=g) for _ in query_pids])
        stats = per_query_stats(gallery_pids[order] == query_pids[:, None])
        stats["top"] = order[:, :10]
        results[lang] = EvalResult(summarize(stats), stats)
        sets[lang] = SimpleNamespace(gallery_paths=paths, gallery_pids=gallery_pids, query_pids=query_pids,
                                     captions=[f"{caption} {q}" for q in range(len(query_pids))])
    return results, sets


def cmc_of_rankings(top: torch.Tensor, gallery_pids: torch.Tensor, query_pids: torch.Tensor) -> list[float]:
    """Rank-k (%) for k = 1..20 from complete rankings, counted here (not with utils.metrics)."""
    firsts = [next(j + 1 for j, g in enumerate(row) if gallery_pids[g] == query_pids[q]) for q, row in
              enumerate(top.tolist())]
    return [100.0 * sum(f <= k for f in firsts) / len(firsts) for k in range(1, 21)]


def report_cmc(text: str) -> dict[str, list[float]]:
    """Per language section of report.md: its CMC line's values."""
    out = {}
    for section in text.split("\n## ")[1:]:
        line = next(x for x in section.splitlines() if x.startswith("CMC, Rank-k for k = 1..20 (%): "))
        out[section.splitlines()[0].strip()] = [float(v) for v in line.split(": ", 1)[1].split(", ")]
    return out


def report_examples(text: str) -> dict[str, list[list[bool]]]:
    """Per language section of report.md: per example query, its top-5 marks (True = + = same person)."""
    out = {}
    for section in text.split("\n## ")[1:]:
        rows = [x.rsplit(" -> ", 1)[1].split(", ") for x in section.splitlines() if x.startswith(("- best", "- worst"))]
        out[section.splitlines()[0].strip()] = [[m[0] == "+" for m in row] for row in rows]
    return out


def assert_cmc_png(path: Path, curves: dict[str, list[float]]) -> None:
    """Each language's line (matplotlib colours C0, C1, ... in order) passes through (k, Rank-k)
    for k = 1..20 on axes spanning x 0.5..20.5 and y 0..102 (draw_cmc's fixed limits)."""
    img = pixels(path)
    boxes = axes_boxes(img)
    assert len(boxes) == 1, boxes
    series = [(CYCLE[i], list(enumerate(values, 1))) for i, values in enumerate(curves.values())]
    assert_series_drawn(img, boxes[0], series, xlim=(0.5, 20.5), ylim=(0.0, 102.0))


def cell_origin(row_y: int, j: int) -> tuple[int, int]:
    return figures.PAD + figures.TEXT_W + j * (figures.CELL_W + figures.GAP), row_y


def assert_examples_png(path: Path, marks: dict[str, list[list[bool]]],
                        shown: dict[str, list[list[str]]] | None = None) -> None:
    """Per language and example row (in report.md's order), each top-5 cell is framed green
    when the same person and red otherwise, and (when ``shown`` gives the gallery files)
    shows that file's colour in its middle."""
    img = pixels(path)
    assert img.shape[:2] == (figures.examples_height([len(m) for m in marks.values()]), figures.EXAMPLES_W)
    y = figures.PAD
    for lang, rows in marks.items():
        y += figures.HEADER_H
        for r, row in enumerate(rows):
            for j, same in enumerate(row):
                x, top = cell_origin(y, j)
                assert tuple(img[top + 1, x + 1]) == (figures.GREEN if same else figures.RED), (lang, r, j)
                if shown is not None:
                    with Image.open(shown[lang][r][j]) as im:
                        want = im.convert("RGB").getpixel((0, 0))
                    middle = img[top + figures.BORDER + figures.THUMB_H // 2, x + figures.BORDER + figures.THUMB_W // 2]
                    assert tuple(middle) == want, (lang, r, j)
            y += figures.CELL_H + figures.GAP


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


@pytest.mark.slow
def test_report_of_a_training_run_matches_its_metrics_json(trained_run):
    run = trained_run.run
    metrics = json.loads((run / "metrics.json").read_text())
    text = (run / "report.md").read_text(encoding="utf-8")
    assert_numbers_equal(text, metrics)
    cmc = report_cmc(text)
    assert cmc.keys() == metrics.keys()
    for lang, values in cmc.items():
        for k in (1, 5, 10):
            assert values[k - 1] == pytest.approx(metrics[lang][f"R{k}"], abs=0.05), (lang, k)
        assert values == sorted(values) and values[-1] == 100.0  # 18 test images, 3 per person: all found by rank 16
    assert_cmc_png(run / "cmc.png", cmc)
    assert_examples_png(run / "examples.png", report_examples(text))
    open_rows = [line for line in text.splitlines() if re.match(r"\| (en|ch) \| (itm|cosine) \|", line)]
    assert len(open_rows) == 2 * len(metrics)  # the open-set table: both scores of every language


def test_open_set_table_in_the_report():
    stats = {"first": torch.tensor([1, 2]), "ap": torch.tensor([1.0, 0.5]), "inp": torch.tensor([1.0, 0.5]),
             "valid": torch.tensor([True, True]), "top": torch.tensor([[0, 1], [1, 0]])}
    data = SimpleNamespace(gallery_pids=torch.tensor([0, 1]), query_pids=torch.tensor([0, 1]), captions=["a", "b"],
                           gallery_paths=["g/0.png", "g/1.png"])
    trials = {"cosine_best": torch.tensor([0.9, 0.4]), "cosine_right": torch.tensor([True, False]),
              "cosine_absent": torch.tensor([0.3, 0.2])}
    m = summarize(stats)
    text = report.markdown({"en": EvalResult(m, stats, open_set=trials)}, {"en": data}, "test")
    row = next(line for line in text.splitlines() if line.startswith("| en | cosine |"))
    want = open_set_summary(trials)["cosine"]
    assert row == "| en | cosine | " + " | ".join(f"{r['tmr']:.2f} ({r['threshold']:.3f})" for r in want) + " |"
    assert row.startswith("| en | cosine | 50.00 (0.300)")  # query 0 right above the best impostor score
    assert "Open set" not in report.markdown({"en": EvalResult(m, stats)}, {"en": data}, "test")


def test_files_and_their_content(tmp_path):
    results, sets = fake_eval(tmp_path / "imgs", ids=5, per_id=2, captions_per_image=2)
    out = tmp_path / "out"
    write_reports(out, results, sets, "test")
    assert sorted(p.name for p in out.iterdir()) == ["cmc.png", "examples.png", "report.md"]  # no temporary files left
    metrics = {lang: r.metrics for lang, r in results.items()}
    text = (out / "report.md").read_text(encoding="utf-8")
    assert_numbers_equal(text, json.loads(json.dumps(metrics)))
    # 10 gallery images: stats["top"] holds every ranking whole, so the CMC can be counted from it
    want = {lang: cmc_of_rankings(r.stats["top"], sets[lang].gallery_pids, sets[lang].query_pids)
            for lang, r in results.items()}
    assert want["en"] != want["ch"]
    assert report_cmc(text) == {lang: [round(v, 1) for v in values] for lang, values in want.items()}
    assert_cmc_png(out / "cmc.png", want)
    marks, shown = {}, {}
    for lang, r in results.items():
        top = [r.stats["top"][q, :figures.EXAMPLES_TOP].tolist() for _, q in figures.pick_examples(r.stats)]
        marks[lang] = [[bool(sets[lang].gallery_pids[g] == sets[lang].query_pids[q]) for g in row]
                       for row, (_, q) in zip(top, figures.pick_examples(r.stats))]
        shown[lang] = [[sets[lang].gallery_paths[g] for g in row] for row in top]
    assert report_examples(text) == marks
    assert_examples_png(out / "examples.png", marks, shown)


def test_rerank_pairs_table_per_language():
    stats = {"first": torch.tensor([1]), "ap": torch.tensor([1.0]), "inp": torch.tensor([1.0]),
             "valid": torch.tensor([True]), "top": torch.tensor([[0, 1]])}
    data = SimpleNamespace(gallery_pids=torch.tensor([0, 1]), query_pids=torch.tensor([0]), captions=["a"],
                           gallery_paths=["g/0.png", "g/1.png"])
    m = summarize(stats)
    results = {"en": EvalResult(m, stats, m, {"k": 2, "queries": 300, "split_queries": 37, "itc_right_first": 20,
                                              "itm_right_first": 22, "itc_first_rate": 100 * 20 / 37,
                                              "itm_first_rate": 100 * 22 / 37}),
               "ch": EvalResult(m, stats, m, {"k": 2, "queries": 300, "split_queries": 0, "itc_right_first": 0,
                                              "itm_right_first": 0, "itc_first_rate": None, "itm_first_rate": None}),
               "de": EvalResult(m, stats)}  # not re-ranked: no row
    text = report.markdown(results, {lang: data for lang in results}, "test")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "right first" not in line
            and line.count("|") == 6]
    assert rows == ["| en | 2 | 37 of 300 | 20 (54.05%) | 22 (59.46%) |", "| ch | 2 | 0 of 300 | - | - |"]
    assert text.index("| language | top k | split queries |") < text.index("\n## en")  # before the sections
    assert "(with k = 2, the only queries it can change)" in text
    assert "split queries" not in report.markdown({"de": results["de"]}, {"de": data}, "test")


def test_examples_are_the_best_then_the_worst_queries():
    stats = {"ap": torch.tensor([0.5, 1.0, 0.1, 0.9, 0.0, 0.3]), "valid": torch.tensor([True] * 5 + [False])}
    assert figures.pick_examples(stats) == [("best", 1), ("best", 3), ("worst", 4), ("worst", 2)]
    few = {"ap": torch.tensor([0.2, 0.7]), "valid": torch.tensor([True, True])}
    assert figures.pick_examples(few) == [("best", 1), ("best", 0)]


def test_chinese_caption_without_a_cjk_font_shows_the_aligned_english_one(tmp_path, monkeypatch):
    results, sets = fake_eval(tmp_path / "imgs", ids=3, per_id=2, captions_per_image=1)
    monkeypatch.setattr(figures, "cjk_font_path", lambda: None)
    shown = figures.shown_caption("ch", 4, sets)
    assert shown.startswith("[en caption of this query") and shown.endswith(sets["en"].captions[4])
    assert figures.shown_caption("en", 4, sets) == sets["en"].captions[4]
    sets["en"].query_pids = sets["en"].query_pids.flip(0)  # not aligned any more: the caption itself, drawn with ?
    assert figures.shown_caption("ch", 4, sets) == sets["ch"].captions[4]
    text, _ = figures.drawable(sets["ch"].captions[4])
    assert set(text) <= set("? 4")
    write_reports(tmp_path / "out", results, sets, "test")
    with Image.open(tmp_path / "out" / "examples.png") as im:
        im.load()


def test_cjk_font_is_used_when_installed():
    path = figures.cjk_font_path()
    if path is None:
        pytest.skip("no font with Chinese glyphs installed (fc-list :lang=zh is empty)")
    assert figures.font_for(CAPTIONS["ch"]).path == path


def test_wrap_breaks_words_and_chinese_text():
    font = figures._font(figures.latin_font_path())
    lines = figures.wrap("one two three four five six seven eight nine ten", font, 60, 10)
    assert len(lines) > 1 and all(font.getlength(line) <= 60 for line in lines)
    assert " ".join(lines) == "one two three four five six seven eight nine ten"
    short = figures.wrap("x" * 400, font, 100, 2)
    assert len(short) == 2 and short[-1].endswith("...")
    assert figures.wrap("一个穿红色衬衫的男人" * 5, font, 80, 20)[0] != "一个穿红色衬衫的男人" * 5


def test_demo_sized_report_is_fast(tmp_path):
    """400 gallery images and 800 queries per language, as in the demo's test split."""
    results, sets = fake_eval(tmp_path / "imgs", ids=100, per_id=4, captions_per_image=2)
    write_reports(tmp_path / "warm", results, sets, "test")  # imports matplotlib, loads fonts
    start = time.perf_counter()
    write_reports(tmp_path / "out", results, sets, "test")
    seconds = time.perf_counter() - start
    assert seconds < 4.0, seconds  # about 0.6 s on an idle 2-core machine; headroom for a busy one
    assert re.search(r"\| 800 \|", (tmp_path / "out" / "report.md").read_text(encoding="utf-8"))


def test_a_failing_explanation_leaves_the_report_whole(tmp_path, capsys):
    results, sets = fake_eval(tmp_path / "imgs", ids=3, per_id=2, captions_per_image=1)

    def broken(caption, lang, paths):
        raise OSError("image unreadable")

    write_reports(tmp_path / "out", results, sets, "test", explain=broken)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cmc.png", "examples.png", "report.md"]
    assert "explain.png" not in (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "warning: explain.png not written: OSError: image unreadable" in capsys.readouterr().err
