"""tools/plot_log.py: one valid PNG of the expected size from a JSONL log; one-line errors."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from tools import plot_log
from tests.retrieval_fixtures import trained_run  # noqa: F401

SIZE = (int(plot_log.FIGSIZE[0] * plot_log.DPI), int(plot_log.FIGSIZE[1] * plot_log.DPI))


def write_log(path, records, tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def step(epoch: int, s: int, **terms: float) -> dict:
    return {"kind": "step", "time": 0.0, "epoch": epoch, "step": s, "lr": 1e-4 * s, "samples_per_s": 10.0,
            "loss": sum(terms.values()), **terms}


def evaluation(epoch: int, s: int, r1: float) -> dict:
    return {"kind": "eval", "time": 0.0, "epoch": epoch, "step": s, "split": "val",
            "metrics": {lang: {"R1": r1, "R5": 50.0, "R10": 60.0, "mAP": 10.0, "mINP": 5.0, "num_queries": 8}
                        for lang in ("en", "ch")}}


def assert_png(path) -> None:
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and im.size == SIZE


def test_plots_a_training_run(trained_run, tmp_path, capsys):
    out = tmp_path / "curves.png"
    plot_log.main([str(trained_run.run), "--out", str(out)])
    assert_png(out)
    assert f"wrote {out}" in capsys.readouterr().out


def test_resumed_log_with_a_cut_last_line_and_default_output(tmp_path, capsys):
    records = [step(1, 1, itc=3.0, itm=0.7), step(1, 2, itc=2.5, itm=0.6), evaluation(1, 2, 10.0),
               step(2, 3, itc=2.0, itm=0.6), step(2, 3, itc=2.1, itm=0.6),  # step 3 logged again after a resume
               {"kind": "skip", "time": 0.0, "step": 4, "epoch": 2, "term": "itc"},
               evaluation(2, 4, 20.0), {"kind": "final", "time": 0.0, "split": "test", "metrics": {}}]
    log = tmp_path / "log.jsonl"
    write_log(log, records, tail='{"kind": "step", "ep')
    steps, evals = plot_log.curves(plot_log.read_log(log))
    assert list(steps) == [1, 2, 3] and steps[3]["itc"] == 2.1 and list(evals) == [1, 2]
    plot_log.main([str(tmp_path)])
    assert_png(tmp_path / "log.png")
    assert "incomplete last line" in capsys.readouterr().err


def test_log_without_evaluations(tmp_path):
    write_log(tmp_path / "log.jsonl", [step(1, 1, itc=3.0), step(1, 2, itc=2.0)])
    plot_log.main([str(tmp_path / "log.jsonl"), "--out", str(tmp_path / "a.png")])
    assert_png(tmp_path / "a.png")


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
