"""tools/plot_log.py: a PNG whose three panels show the log's losses, learning rate and R1
where their values say; one-line errors."""
from __future__ import annotations

import json

import pytest

from tools import plot_log
from tests.image_checks import BLACK, CYCLE, PURPLE, assert_series_drawn, auto_limits, axes_boxes, colour_count, \
    inside, pixels

SIZE = (int(plot_log.FIGSIZE[0] * plot_log.DPI), int(plot_log.FIGSIZE[1] * plot_log.DPI))


def write_log(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def step(epoch: int, s: int, lr: float | None = None, **terms: float) -> dict:
    return {"kind": "step", "time": 0.0, "epoch": epoch, "step": s, "lr": 1e-4 * s if lr is None else lr,
            "samples_per_s": 10.0, "loss": sum(terms.values()), **terms}


def evaluation(epoch: int, s: int, r1: float, ch_offset: float = 0.0, itc_r1: float | None = None) -> dict:
    def metrics(value: float) -> dict:
        return {lang: {"R1": value + (ch_offset if lang == "ch" else 0.0), "R5": 50.0, "R10": 60.0,
                       "mAP": 10.0, "mINP": 5.0, "num_queries": 8} for lang in ("en", "ch")}
    record = {"kind": "eval", "time": 0.0, "epoch": epoch, "step": s, "split": "val", "metrics": metrics(r1)}
    if itc_r1 is not None:
        record["itc_metrics"] = metrics(itc_r1)
    return record


def assert_plot_shows(png, records: list[dict]) -> None:
    """Each panel draws the records' values at their places (computed here from the records,
    with matplotlib's automatic limits), and the R1 panel is empty when nothing was evaluated."""
    img = pixels(png)
    assert img.shape[:2] == (SIZE[1], SIZE[0])
    boxes = axes_boxes(img)
    assert len(boxes) == 3, boxes
    loss_box, lr_box, r1_box = boxes
    steps = {r["step"]: r for r in records if r.get("kind") == "step"}  # a repeated step: the later record
    evals = {r["epoch"]: r for r in records if r.get("kind") == "eval"}
    xs = sorted(steps)
    inner = xs[1:-1] or xs  # a line's ends are half drawn (and may lie under a later line's end)
    sample = inner[::max(1, len(inner) // 12)]
    ends = [r["step"] for r in evals.values() if "step" in r]  # dotted epoch-end lines: they widen the x range too
    xlim = auto_limits(xs + ends)

    lrs = [steps[s]["lr"] for s in xs]
    assert_series_drawn(img, lr_box, [(PURPLE, [(s, steps[s]["lr"]) for s in sample])], xlim, auto_limits(lrs))

    terms = list(dict.fromkeys(k for s in xs for k in steps[s] if k not in plot_log.STEP_FIELDS))
    values = [steps[s][t] for s in xs for t in terms if t in steps[s]] + [steps[s]["loss"] for s in xs]
    log_y = all(steps[s]["loss"] > 0 for s in xs)
    series = [(CYCLE[i], [(s, steps[s][t]) for s in sample if t in steps[s]]) for i, t in enumerate(terms)]
    total = (BLACK, [(s, steps[s]["loss"]) for s in sample])
    drawn = [(CYCLE[i], [(s, steps[s][t]) for s in xs if t in steps[s]]) for i, t in enumerate(terms)]
    drawn.append((BLACK, [(s, steps[s]["loss"]) for s in xs]))
    assert_series_drawn(img, loss_box, series, xlim, auto_limits(values, log_y), log_y, dashed=(total,), drawn=drawn)

    if not evals:
        area = inside(img, r1_box)
        assert not any(colour_count(area, area.shape[1] // 2, area.shape[0] // 2, c, radius=10**4) for c in CYCLE)
        assert (area.max(axis=2) < 100).sum() > 100  # the "no evaluation logged yet" text
        return
    langs = list(dict.fromkeys(lang for r in evals.values() for lang in r["metrics"]))
    r1 = [r[key][lang]["R1"] for r in evals.values() for key in ("metrics", "itc_metrics") for lang in r.get(key, {})]
    series = []  # drawing order: each language's R1, then its ITC-only R1 (dashed, an x at each point)
    for i, lang in enumerate(langs):
        series.append((CYCLE[i], [(e, r["metrics"][lang]["R1"]) for e, r in evals.items()]))
        series.append((CYCLE[i], [(e, r["itc_metrics"][lang]["R1"]) for e, r in evals.items()
                                  if lang in r.get("itc_metrics", {})]))
    assert_series_drawn(img, r1_box, series, auto_limits(list(evals)), auto_limits(r1))


@pytest.mark.slow
def test_plots_a_training_run(trained_run, tmp_path, capsys):
    out = tmp_path / "curves.png"
    plot_log.main([str(trained_run.run), "--out", str(out)])
    records = plot_log.read_log(trained_run.run / "log.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals and all(set(r["itc_metrics"]) == set(r["metrics"]) for r in evals)  # R1 before re-ranking, logged
    assert_plot_shows(out, records)
    assert f"wrote {out}" in capsys.readouterr().out


def test_resumed_log_with_a_cut_last_line_and_default_output(tmp_path, capsys):
    records = [step(1, 1, itc=3.0, itm=0.7), step(1, 2, itc=2.5, itm=0.6), evaluation(1, 2, 10.0, ch_offset=15.0, itc_r1=30.0),
               step(2, 3, itc=0.5, itm=0.6), step(2, 3, itc=2.1, itm=0.6),  # step 3 logged again after a resume
               {"kind": "skip", "time": 0.0, "step": 4, "epoch": 2, "term": "itc"}, step(2, 5, itc=1.0, itm=0.5),
               evaluation(2, 5, 20.0, ch_offset=15.0, itc_r1=40.0), {"kind": "final", "time": 0.0, "split": "test", "metrics": {}}]
    log = tmp_path / "log.jsonl"
    write_log(log, records, tail='{"kind": "step", "ep')
    steps, evals = plot_log.curves(plot_log.read_log(log))
    assert list(steps) == [1, 2, 3, 5] and steps[3]["itc"] == 2.1 and list(evals) == [1, 2]
    plot_log.main([str(tmp_path)])
    assert_plot_shows(tmp_path / "log.png", records)
    assert "incomplete last line" in capsys.readouterr().err


def test_log_without_evaluations(tmp_path):
    lrs = [1e-4, 5e-4, 2e-4, 4e-4, 3e-4, 1e-4, 6e-4]
    records = [step(1, s, lr=lr, itc=3.0 / s, itm=0.4 + 0.1 * (s % 3)) for s, lr in enumerate(lrs, 1)]
    write_log(tmp_path / "log.jsonl", records)
    plot_log.main([str(tmp_path / "log.jsonl"), "--out", str(tmp_path / "a.png")])
    assert_plot_shows(tmp_path / "a.png", records)


@pytest.mark.parametrize("content, needle", [
    (None, "log not found"),
    ('{"kind": "eval"}\nnot json\n{"kind": "final"}\n', "line 2 is not JSON"),
    (json.dumps(evaluation(1, 2, 5.0)) + "\n", "no training steps logged yet"),
])
def test_one_line_errors(tmp_path, capsys, content, needle):
    log = tmp_path / "log.jsonl"
    if content is not None:
        log.write_text(content)
    with pytest.raises(SystemExit) as e:
        plot_log.main([str(log)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not (tmp_path / "log.png").exists()
