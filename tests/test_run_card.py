"""Run card: batch formation, negatives, hard-negative pool and masks per step for 1 and 2
processes and virtual processes; differences from the published setup; the environment
probes; ``--check`` prints the card; run_card.md/json of a real 2-process run; report.md
starts with the card's summary."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

import main as cli
from data.check import SplitSummary
from engine.report import write_reports
from engine.run_card import (Probe, build_card, config_sha256, file_sha256, git_state, load_summary, report_summary,
                             to_markdown, write_card)
from model.checkpoint import LoadReport
from tests.engine_fixtures import ROOT, run_main
from tests.model_fixtures import tiny_config_file
from tests.test_report import fake_eval
from utils.config import Config, load_config


def config(batch: int = 32, virtual: int = 1, **changes: object) -> Config:
    """The default (published) config with the per-process batch, V and ``section.key`` changes."""
    cfg = Config()
    cfg.data.batch_size, cfg.distributed.virtual_processes = batch, virtual
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def numbers(card: dict) -> tuple[int, int, int, int]:
    """(global batch, ITC negatives up to, ITM pool up to, D-MIM masks per step)."""
    return (card["global_batch"]["size"], card["itc_negatives"]["up_to"], card["itm_negatives"]["pool_up_to"],
            card["mim_masks_per_step"]["count"])


def card_of(cfg: Config, world: int, device: str = "cuda") -> dict:
    return build_card(cfg, world, device, [], Probe())


def test_one_process():
    card = card_of(config(batch=16), 1, "cpu")
    assert numbers(card) == (16, 15, 15, 1)
    assert card["global_batch"]["formation"].startswith("16 = 1 x 1 x 16 ")
    assert numbers(card_of(config(batch=16, mim__per_sample_mask=True), 1)) == (16, 15, 15, 16)
    assert numbers(card_of(config(batch=16, model__use_gather=False), 1)) == (16, 15, 15, 1)  # nothing to gather


def test_two_processes():
    assert numbers(card_of(config(batch=8), 2)) == (16, 15, 7, 2)
    assert numbers(card_of(config(batch=8, mim__per_sample_mask=True), 2)) == (16, 15, 7, 16)
    local = card_of(config(batch=8, model__use_gather=False), 2)
    assert numbers(local) == (16, 7, 7, 2)
    assert "ITC within each process batch: up to 7 negatives instead of up to 127 (model.use_gather false)" \
        in local["differences"]


def test_virtual_processes_count_as_processes():
    assert numbers(card_of(config(batch=8, virtual=2), 1)) == (16, 15, 7, 2)
    assert numbers(card_of(config(batch=8, virtual=2), 2)) == (32, 31, 7, 4)
    emulated = card_of(config(batch=32, virtual=2), 2)
    assert numbers(emulated) == (128, 127, 31, 4)
    assert emulated["differences"] == ["global batch 128 formed as 2 x 2 x 32 instead of 4 x 1 x 32"]


def test_identity_balanced_batches_leave_fewer_negatives():
    """K samples of the caption's own person are in its batch: at most N - K negatives."""
    card = card_of(config(batch=8, data__num_instances=2), 2)
    assert numbers(card) == (16, 14, 6, 2)


def test_published_config_has_no_differences(monkeypatch):
    monkeypatch.chdir(ROOT)  # vision_config: config/config_beit2_base.json
    cfg = load_config("config/config.yaml")
    card = card_of(cfg, 4, "cuda")
    assert numbers(card) == (128, 127, 31, 4)
    assert card["differences"] == []
    assert card["precision"]["train"] == "fp16" and card["precision"]["eval"] == "fp32"
    assert "- none" in to_markdown(card).split("Differences from the published setup")[1]
    assert card_of(cfg, 2, "cuda")["differences"] == ["global batch 64 instead of 128 (2 x 1 x 32)",
                                                      "2 D-MIM masks per step instead of 4"]


def test_differences_in_batch_and_precision():
    card = card_of(config(batch=16), 1, "cpu")
    assert card["differences"] == ["global batch 16 instead of 128 (1 x 1 x 16)",
                                   "ITM negatives from up to 15 candidates instead of 31 (per-process batch 16)",
                                   "1 D-MIM mask per step instead of 4", "CPU instead of CUDA",
                                   "fp32 instead of fp16 autocast"]
    assert card["precision"]["amp_applies"] is False and card["precision"]["train"] == "fp32"
    cpu_amp = card_of(config(schedule__cpu_amp=True, model__eval_amp=True), 4, "cpu")
    assert cpu_amp["differences"] == ["CPU instead of CUDA",
                                      "evaluation under fp16 autocast instead of fp32 (model.eval_amp)"]
    bf16 = card_of(config(schedule__amp="bf16"), 4, "cuda")
    assert bf16["differences"] == ["bf16 autocast instead of fp16 autocast"]
    assert "training bf16 autocast;" in bf16["precision"]["text"]


def test_markdown_and_json_hold_the_same_facts(tmp_path):
    rows = [SplitSummary("train", "en", 36, 12, 72), SplitSummary("test", "ch", 18, 6, 36)]
    load = LoadReport(loaded=["a", "b", "c"], missing=["mim_head.w", "text_proj.w"], unexpected=["bbox_head.w"])
    card = write_card(tmp_path, config(batch=16), 1, "cpu", rows, load)
    assert json.loads((tmp_path / "run_card.json").read_text(encoding="utf-8")) == card
    text = (tmp_path / "run_card.md").read_text(encoding="utf-8")
    assert text == to_markdown(card) and text.startswith("# Run card\n")
    assert "| global batch | 16 = 1 x 1 x 16 (processes x virtual processes x per-process batch) |" in text
    assert "| train | en | 36 | 12 | 72 |" in text and "| test | ch | 18 | 6 | 36 |" in text
    assert "- global batch 16 instead of 128 (1 x 1 x 16)" in text
    assert card["pretrained"] == {"path": "", "sha256": "none", "load": {
        "loaded": 3, "missing": 2, "unexpected": 1, "resized": 0, "copied": 0, "missing_not_fresh": 1,
        "mlm_decoder_tied": None}}
    assert set(card["versions"]) == {"python", "torch", "transformers", "tokenizers", "timm", "numpy"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_card.json", "run_card.md"]  # no temporary files


def test_load_summary_and_hashes(tmp_path):
    assert load_summary(None) is None
    path = tmp_path / "weights.th"
    path.write_bytes(b"x" * 3_000_000)
    assert file_sha256(str(path)) == hashlib.sha256(b"x" * 3_000_000).hexdigest()[:12]
    assert file_sha256("") == "none" and file_sha256(str(tmp_path / "absent")) == "unreadable"
    a, b = config(), config()
    assert config_sha256(a) == config_sha256(b)
    b.misc.seed = 2
    assert config_sha256(a) != config_sha256(b)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state(tmp_path):
    assert git_state(tmp_path) == ("unknown", "unknown")  # not a repository
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert git_state(tmp_path) == (head, "no")
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (head, "yes")


def test_check_prints_the_card_first(tiny_data, tmp_path, capsys, monkeypatch):
    cfg = tiny_config_file(tiny_data, tmp_path / "out")
    assert cli.main(["--config", str(cfg), "--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Run card\n") and out.index("# Run card") < out.index("\ndevice: cpu\n")
    assert "| global batch | 8 = 1 x 1 x 8 (processes" in out and "| train | en | 36 | 12 | 72 |" in out
    assert "| D-MIM masks per step | 1: one block mask per process batch |" in out
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["--config", str(cfg), "--check"]) == 0
    assert "| global batch | 16 = 2 x 1 x 8 (processes" in capsys.readouterr().out


def test_report_starts_with_the_summary(tmp_path):
    results, sets = fake_eval(tmp_path / "imgs", ids=3, per_id=2, captions_per_image=1)
    card = card_of(config(batch=16), 1, "cpu")
    write_reports(tmp_path / "out", results, sets, "test", card=card)
    lines = (tmp_path / "out" / "report.md").read_text(encoding="utf-8").splitlines()
    summary = report_summary(card)
    assert lines[0] == "# Evaluation report (test split)" and lines[2:2 + len(summary)] == summary
    assert lines[4] == "- global batch: 16 = 1 x 1 x 16 (processes x virtual processes x per-process batch)"
    assert lines[5] == "- precision: training fp32, evaluation fp32, on cpu"
    assert lines[6].startswith("- differences from the published setup: global batch 16 instead of 128 (1 x 1 x 16); ")
    write_reports(tmp_path / "plain", results, sets, "test")
    plain = (tmp_path / "plain" / "report.md").read_text(encoding="utf-8").splitlines()
    assert plain == lines[:2] + lines[2 + len(summary):]  # otherwise the same report


@pytest.mark.slow
def test_two_process_run_writes_the_card(tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config_file(tiny_data, out, schedule={"epoch": 1})
    r = run_main("--config", str(cfg), nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((out / "run_card.json").read_text(encoding="utf-8"))
    assert numbers(card) == (16, 15, 7, 2)
    assert card["global_batch"]["processes"] == 2 and card["precision"]["device"] == "cpu"
    assert card["differences"][:3] == ["global batch 16 instead of 128 (2 x 1 x 8)",
                                       "ITM negatives from up to 7 candidates instead of 31 (per-process batch 8)",
                                       "2 D-MIM masks per step instead of 4"]
    rows = {(d["split"], d["lang"]): (d["images"], d["people"], d["captions"]) for d in card["data"]}
    assert rows[("train", "en")] == rows[("train", "ch")] == (36, 12, 72)
    assert rows[("val", "ch")] == (12, 4, 24) and rows[("test", "en")] == (18, 6, 36)
    assert card["pretrained"] == {"path": "", "sha256": "none", "load": None}
    assert (out / "run_card.md").read_text(encoding="utf-8") == to_markdown(card)
    report = (out / "report.md").read_text(encoding="utf-8").splitlines()
    assert report[2:4] == ["Run (full card: run_card.md):", ""]
    assert report[4] == "- global batch: 16 = 2 x 1 x 8 (processes x virtual processes x per-process batch)"
    evaluated = tmp_path / "eval"
    r = run_main("--eval-only", "--resume", str(out / "best_en.pth"), f"model.saved_path={evaluated}")
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((evaluated / "run_card.json").read_text(encoding="utf-8"))
    assert card["weights"] == {"path": str(out / "best_en.pth"), "sha256": file_sha256(str(out / "best_en.pth"))}
    assert numbers(card) == (8, 7, 7, 1) and {d["split"] for d in card["data"]} == {"test"}
    assert (evaluated / "report.md").read_text(encoding="utf-8").splitlines()[2] == "Run (full card: run_card.md):"
