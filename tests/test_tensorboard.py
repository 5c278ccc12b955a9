"""``log.tensorboard``: a training run mirrors log.jsonl into TensorBoard event files
(read back with TensorBoard's own reader), only rank 0 writes, and the option without the
package is refused with one line, by a run and by ``--check`` alike."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import main as cli
import utils.distributed
from tests.model_fixtures import tiny_config_file
from utils.logging import JsonlLog, read_jsonl
from utils.tensorboard import TENSORBOARD_PIN, TensorBoardLog, record_scalars


def scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar tag of the event files in ``folder``: {tag: {step: value}}."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_record_tags():
    """The tag scheme: train/<term>, eval/<split>/<lang>/<metric>, <split>/<lang>/<metric>, train/skipped."""
    step = {"kind": "step", "time": 1.0, "epoch": 1, "step": 3, "lr": 0.5, "itc": 2.0, "loss": 2.0}
    assert record_scalars(step, 0) == {"train/lr": 0.5, "train/itc": 2.0, "train/loss": 2.0}
    ev = {"kind": "eval", "epoch": 1, "step": 4, "split": "val", "metrics": {"en": {"R1": 10.0, "mAP": 7.5}},
          "itc_metrics": {"en": {"R1": 9.0}}}
    assert record_scalars(ev, 0) == {"eval/val/en/R1": 10.0, "eval/val/en/mAP": 7.5, "eval/val/itc_metrics/en/R1": 9.0}
    final = {"kind": "final", "split": "test", "metrics": {"ch": {"R1": 3.0}},
             "languages": {"ch": {"role": "target", "checkpoint": "best_ch.pth"}}}
    assert record_scalars(final, 0) == {"test/ch/R1": 3.0}
    skip = {"kind": "skip", "step": 9, "epoch": 1, "term": "grad_overflow", "scale": 512.0}
    assert record_scalars(skip, 2) == {"train/overflow_skipped": 2.0, "train/loss_scale": 512.0}
    assert record_scalars({**skip, "term": "mlm", "scale": None}, 1) == {"train/skipped": 1.0}


def test_sink_counts_skips_and_draws_final_at_last_step(tmp_path):
    log = JsonlLog(tmp_path / "log.jsonl", TensorBoardLog(tmp_path / "tb"))
    log.write("step", epoch=1, step=1, itc=1.5)
    log.write("skip", step=2, epoch=1, term="itc")
    log.write("skip", step=4, epoch=1, term="grad_overflow", scale=128.0)
    log.write("skip", step=5, epoch=1, term="itc")
    log.write("eval", epoch=1, step=6, split="val", metrics={"en": {"R1": 25.0}})
    log.write("final", split="test", metrics={"en": {"R1": 12.5}}, languages={})
    log.close()
    got = scalars(tmp_path / "tb")
    assert got["train/itc"] == {1: 1.5}
    assert got["train/skipped"] == {2: 1.0, 5: 2.0}  # overflow skips are counted apart
    assert got["train/overflow_skipped"] == {4: 1.0} and got["train/loss_scale"] == {4: 128.0}
    assert got["eval/val/en/R1"] == {6: 25.0}
    assert got["test/en/R1"] == {6: 12.5}


def test_only_rank_0_writes(tmp_path, monkeypatch):
    """The sink checks the rank itself (called directly, not only through JsonlLog, which also checks)."""
    monkeypatch.setattr(utils.distributed, "get_rank", lambda: 1)
    sink = TensorBoardLog(tmp_path / "tb")
    sink.write({"kind": "step", "step": 1, "itc": 1.5})
    sink.close()
    log = JsonlLog(tmp_path / "log.jsonl", TensorBoardLog(tmp_path / "tb"))
    log.write("step", epoch=1, step=1, itc=1.5)
    log.close()
    assert not (tmp_path / "tb").exists() and not (tmp_path / "log.jsonl").exists()
    monkeypatch.setattr(utils.distributed, "get_rank", lambda: 0)  # the same calls on rank 0 do write
    sink = TensorBoardLog(tmp_path / "tb")
    sink.write({"kind": "step", "step": 1, "itc": 1.5})
    sink.close()
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1


def test_training_run_mirrors_log_jsonl(tiny_data, tmp_path, one_thread):
    out = tmp_path / "run"
    cfg = tiny_config_file(tiny_data, out, log={"tensorboard": True, "print_period": 1}, schedule={"epoch": 1})
    assert cli.main(["--config", str(cfg)]) == 0
    got = scalars(out / "tb")
    records = read_jsonl(out / "log.jsonl")
    steps = [r for r in records if r["kind"] == "step"]
    assert len(steps) >= 2
    for r in steps:
        for key in ("itc", "lr", "samples_per_s", "loss"):
            assert got[f"train/{key}"][r["step"]] == pytest.approx(r[key], rel=1e-6), (key, r["step"])
    ev = next(r for r in records if r["kind"] == "eval")
    for lang, m in ev["metrics"].items():
        for key in ("R1", "R5", "R10", "mAP", "mINP"):
            assert got[f"eval/{ev['split']}/{lang}/{key}"][ev["step"]] == pytest.approx(m[key], rel=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"en", "ch"}
    for lang, m in metrics.items():
        assert got[f"test/{lang}/R1"][steps[-1]["step"]] == pytest.approx(m["R1"], rel=1e-6)
        assert got[f"test/{lang}/mAP"][steps[-1]["step"]] == pytest.approx(m["mAP"], rel=1e-6)


@pytest.mark.parametrize("command", [[], ["--check"]])
def test_missing_package_is_one_line(tiny_data, tmp_path, capsys, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails
    out = tmp_path / "run"
    cfg = tiny_config_file(tiny_data, out, log={"tensorboard": True})
    out.rmdir()  # tiny_config_file creates it; a refused run must not
    assert cli.main([*command, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {cfg}: key 'log.tensorboard' is true but the tensorboard package is not installed: "
                   f"pip install {TENSORBOARD_PIN}"]
    assert not out.exists()


def test_pin_in_the_error_is_the_one_installed_for_the_tests():
    """The pip command the error names installs the version requirements.txt pins."""
    lines = (Path(__file__).parents[1] / "requirements.txt").read_text().splitlines()
    assert TENSORBOARD_PIN in lines
