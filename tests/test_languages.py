"""Query languages beyond the trained pair: which are evaluated, with which projection and
which checkpoint, and metrics.json / report.md / log.jsonl for N languages."""
from __future__ import annotations

import json
import shutil

import pytest

import engine.train as train
from data.annotations import split_languages
from engine.train import final_checkpoint, languages
from tests.engine_fixtures import run_main
from tests.model_fixtures import tiny_config_file
from utils.config import load_config
from utils.logging import read_jsonl


def cfg_with(*overrides: str):
    return load_config("config/config.yaml", list(overrides))


def test_default_languages_are_the_source_and_the_target():
    assert languages(cfg_with()) == [("en", False), ("ch", True)]
    assert languages(cfg_with("data.target_language=de")) == [("en", False), ("de", True)]


def test_eval_languages_projection_and_checkpoint():
    cfg = cfg_with("data.eval_languages=[fr,ch,de,es]", "data.tl_proj_languages=[de]")
    # source and target first (they select checkpoints), then the others as listed, no repeats
    assert languages(cfg) == [("en", False), ("ch", True), ("fr", False), ("de", True), ("es", False)]
    assert [final_checkpoint(cfg, lang) for lang, _ in languages(cfg)] == \
        ["best_en.pth", "best_ch.pth", "best_en.pth", "best_ch.pth", "best_en.pth"]


def test_evaluate_languages_uses_each_languages_projection(monkeypatch):
    cfg = cfg_with("data.eval_languages=[fr,de]", "data.tl_proj_languages=[de]")
    calls = []
    monkeypatch.setattr(train, "evaluate_language", lambda model, cfg, data, tl, device, open_set: calls.append((data, tl)) or tl)
    out = train.evaluate_languages(None, cfg, {"de": "de-set", "en": "en-set", "fr": "fr-set"}, None)
    assert calls == [("en-set", False), ("fr-set", False), ("de-set", True)]  # the sets given, in language order
    assert list(out) == ["en", "fr", "de"]


def test_val_evaluates_the_languages_that_have_a_val_file(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data / "annos", data / "annos")
    (data / "annos" / "val_reid_fr.json").unlink()
    cfg = cfg_with(f"anno_dir={data / 'annos'}", "data.eval_languages=[fr,de]")
    assert split_languages(cfg, "val") == ["en", "ch", "de"]
    assert split_languages(cfg, "test") == ["en", "ch", "fr", "de"]


@pytest.fixture(scope="module")
def four_language_run(tiny_data, tmp_path_factory):
    """One epoch on en+ch; fr (text_proj) and de (tl_text_proj) evaluated zero-shot."""
    root = tmp_path_factory.mktemp("languages")
    out = root / "run"
    cfg = tiny_config_file(tiny_data, out, schedule={"epoch": 1},
                           data={"eval_languages": ["fr", "de"], "tl_proj_languages": ["de"]})
    r = run_main("--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    return root, out


@pytest.mark.slow
def test_training_evaluates_every_language(four_language_run):
    _, out = four_language_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["en", "ch", "fr", "de"]
    assert all(0 <= m["R1"] <= m["R5"] <= m["R10"] <= 100 for m in metrics.values())
    records = read_jsonl(out / "log.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    assert [list(r["metrics"]) for r in evals] == [["en", "ch", "fr", "de"]]  # val exists for all four
    final = [r for r in records if r["kind"] == "final"][-1]
    assert final["metrics"] == metrics
    assert final["languages"] == {
        "en": {"role": "source", "projection": "text_proj", "checkpoint": "best_en.pth"},
        "ch": {"role": "target", "projection": "tl_text_proj", "checkpoint": "best_ch.pth"},
        "fr": {"role": "zero-shot", "projection": "text_proj", "checkpoint": "best_en.pth"},
        "de": {"role": "zero-shot", "projection": "tl_text_proj", "checkpoint": "best_ch.pth"}}
    assert sorted(p.name for p in out.glob("best_*.pth")) == ["best_ch.pth", "best_en.pth"]  # selection: en, ch only
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| language | role | projection | checkpoint | R1 | R5 | R10 | mAP | mINP |" in report
    fr = metrics["fr"]
    assert (f"| fr | zero-shot | text_proj | best_en.pth | {fr['R1']:.2f} | {fr['R5']:.2f} | {fr['R10']:.2f} | "
            f"{fr['mAP']:.2f} | {fr['mINP']:.2f} |") in report
    assert all(f"## {lang}" in report for lang in metrics)


@pytest.mark.slow
def test_eval_only_on_four_languages(four_language_run):
    """`main.py --eval-only --resume best_en.pth data.eval_languages=[en,ch,fr,de]`: after one
    epoch every best checkpoint holds the same weights, so each language's metrics equal the
    training run's, which used the same projections."""
    root, out = four_language_run
    again = root / "eval"
    r = run_main("--eval-only", "--resume", str(out / "best_en.pth"), "data.eval_languages=[en,ch,fr,de]",
                 f"model.saved_path={again}")
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((again / "metrics.json").read_text())
    assert metrics == json.loads((out / "metrics.json").read_text())
    final = read_jsonl(again / "log.jsonl")[-1]
    assert {lang: n["checkpoint"] for lang, n in final["languages"].items()} == dict.fromkeys(metrics, "best_en.pth")
    assert [lang for lang, n in final["languages"].items() if n["projection"] == "tl_text_proj"] == ["ch", "de"]
