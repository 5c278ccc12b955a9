"""main.py's contract: one error line, no traceback, exit 2; --check prints the resolved config."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_one_error_line(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


def test_mistyped_key_suggests_the_right_one():
    r = run_main("--config", "config/config.yaml", "--check", "data.batchsize=3")
    assert_one_error_line(r, "unknown key 'data.batchsize' (did you mean 'data.batch_size'?)")


def test_wrong_type_names_the_key():
    r = run_main("--config", "config/config.yaml", "--check", "schedule.epoch=ten")
    assert_one_error_line(r, "'schedule.epoch' must be an int")


def test_missing_annotation_folder_names_the_path(tmp_path):
    r = run_main("--config", "config/config.yaml", "--check", f"anno_dir={tmp_path}/missing")
    assert_one_error_line(r, f"key 'anno_dir': annotation folder not found: {tmp_path}/missing")


def test_check_passes_and_prints_resolved_config(tmp_path):
    annos, imgs, te = tmp_path / "annos", tmp_path / "imgs", tmp_path / "te"
    for d in (annos, imgs, te):
        d.mkdir()
    for split in ("train", "test"):
        for lang in ("en", "ch"):
            (annos / f"{split}_reid_{lang}.json").write_text("[]")
    (te / "config.json").write_text("{}")
    (te / "tokenizer.json").write_text("{}")
    r = run_main("--config", "config/config.yaml", "--check", f"anno_dir={annos}", f"image_dir={imgs}",
                 f"text_encoder={te}", "model.resume=", "data.batch_size=7")
    assert r.returncode == 0, r.stderr
    assert "batch_size: 7" in r.stdout and "config OK" in r.stdout
