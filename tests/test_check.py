"""``main.py --check``: upstream's own config and command work; every input that training
would reject fails here first, as one ``error:`` line with a non-zero exit; a good
dataset gets its per-split counts printed."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import main as cli
from tests.engine_fixtures import ROOT, edit_annos, env
from tests.model_fixtures import tiny_config_file

PLACEHOLDER_KEYS = ("anno_dir", "image_dir", "text_encoder", "resume")  # the lines marked EDIT


def point_at(text: str, data: Path) -> str:
    """The config text with its EDIT paths replaced (every other line byte for byte as shipped)."""
    values = {"anno_dir": data / "annos", "image_dir": data / "imgs", "text_encoder": data / "text_encoder", "resume": ""}
    for key in PLACEHOLDER_KEYS:
        text, n = re.subn(rf"^(\s*{key}:) \S+", lambda m: f"{m.group(1)} '{values[key]}'", text, count=1, flags=re.M)
        assert n == 1, key
    return text


@pytest.mark.slow
def test_no_config_argument_checks_config_yaml_of_a_copied_repository(tiny_data, tmp_path):
    """Upstream's `main.py` takes no arguments and reads config/config.yaml: a copy of ours,
    its paths pointed at a small dataset, passes --check from the copy's root."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "config", copy / "config")
    cfg = copy / "config" / "config.yaml"
    cfg.write_text(point_at(cfg.read_text(), tiny_data))
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--check"], cwd=copy, env=env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.rstrip().endswith("config OK: config/config.yaml")
    printed = yaml.safe_load(r.stdout[r.stdout.index("\ndevice: "):].split("\nsplit ")[0])  # after the run card
    assert printed["anno_dir"] == str(tiny_data / "annos") and printed["data"]["batch_size"] == 32
    # 12 train / 4 val / 6 test identities x 3 images x 2 captions (tests/engine_fixtures.py)
    assert re.search(r"^train\s+en\s+36\s+12\s+72$", r.stdout, re.M), r.stdout
    assert re.search(r"^train\s+ch\s+36\s+12\s+72$", r.stdout, re.M)
    assert re.search(r"^val\s+ch\s+12\s+4\s+24$", r.stdout, re.M)
    assert re.search(r"^test\s+en\s+18\s+6\s+36$", r.stdout, re.M)


def published_config(tmp_path: Path) -> Path:
    """The published config.yaml (published values; upstream's `device: 5` and output folder)."""
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    raw = {"device": 5, **{k: v for k, v in raw.items() if k != "device"}}
    raw["model"]["saved_path"] = "ckpts/CUHK-PEDES/"
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def check(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["--check", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_error(rc: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, (rc, err)
    return lines[0]


def test_published_config_fails_only_on_its_placeholder_paths(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # vision_config: config/config_beit2_base.json
    cfg = published_config(tmp_path)
    rc, _, err = check(capsys, "--config", str(cfg))
    assert "key 'anno_dir': annotation folder not found: /path/to/" in one_error(rc, err)
    rc, out, err = check(capsys, "--config", str(cfg), f"anno_dir={tiny_data / 'annos'}",
                         f"image_dir={tiny_data / 'imgs'}", f"text_encoder={tiny_data / 'text_encoder'}", "model.resume=")
    assert rc == 0, err
    assert "device: 5\n" in out and "saved_path: ckpts/CUHK-PEDES/" in out and f"config OK: {cfg}" in out
    for resolved in ("amp: fp16", "gather_with_grad: false", "roberta_position_ids: false", "rerank_score: logit",
                     "eval_amp: false", "per_sample_mask: false", "protect_special: false", "unicode_cleaning: false",
                     "virtual_processes: 1", "negatives: hard"):  # upstream-parity options, printed with defaults
        assert f"  {resolved}\n" in out, resolved


@pytest.fixture
def case(tiny_data, tmp_path):
    """A private copy of the tiny dataset and a config pointing at it."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data, tiny_config_file(data, tmp_path / "out")


def test_good_dataset_passes(case, capsys):
    _, cfg = case
    rc, out, err = check(capsys, "--config", str(cfg), "data.eval_languages=[fr]")
    assert rc == 0, err
    assert re.search(r"^val\s+fr\s+12\s+4\s+24$", out, re.M) and re.search(r"^test\s+fr\s+18\s+6\s+36$", out, re.M)
    assert not re.search(r"^\w+\s+de\s", out, re.M)  # only the languages the run uses


def test_top_level_resume_points_at_model_resume(case, capsys):
    _, cfg = case
    raw = yaml.safe_load(cfg.read_text())
    raw["resume"] = "/path/to/CCLM-X2VLM"  # upstream README's example
    cfg.write_text(yaml.safe_dump(raw))
    rc, _, err = check(capsys, "--config", str(cfg))
    assert one_error(rc, err).endswith("unknown key 'resume' (did you mean 'model.resume'?)")


def test_truncated_annotation_json(case, capsys):
    data, cfg = case
    path = data / "annos" / "test_reid_ch.json"
    path.write_text(path.read_text(encoding="utf-8")[:200], encoding="utf-8")
    rc, _, err = check(capsys, "--config", str(cfg))
    assert f"{path}: invalid JSON" in one_error(rc, err)


def test_truncated_file_of_an_extra_language_is_caught(case, capsys):
    data, cfg = case
    path = data / "annos" / "val_reid_de.json"
    path.write_text(path.read_text(encoding="utf-8")[:200], encoding="utf-8")
    rc, _, err = check(capsys, "--config", str(cfg))
    assert rc == 0, err  # de is not evaluated: its files are not read
    rc, _, err = check(capsys, "--config", str(cfg), "data.eval_languages=[de]")
    assert f"{path}: invalid JSON" in one_error(rc, err)


def test_languages_disagreeing_on_a_caption_count(case, capsys):
    data, cfg = case
    edit_annos(data, "train", "ch", lambda e: e[4]["captions"].append("一个额外的描述"))
    rc, _, err = check(capsys, "--config", str(cfg))
    line = one_error(rc, err)
    assert "train_reid_en.json and" in line and "train_reid_ch.json are not aligned at entry 4: 2 vs 3 captions" in line


def test_the_same_message_as_training(case, capsys):
    """--check reuses the loaders: the line equals the one training stops with."""
    data, cfg = case
    edit_annos(data, "train", "ch", lambda e: e[7].update(id=999))
    rc, _, err = check(capsys, "--config", str(cfg))
    checked = one_error(rc, err)
    rc = cli.main(["--config", str(cfg)])
    assert one_error(rc, capsys.readouterr().err) == checked


def test_person_id_that_is_not_an_integer(case, capsys):
    data, cfg = case
    edit_annos(data, "test", "en", lambda e: e[2].update(id="17"))
    rc, _, err = check(capsys, "--config", str(cfg))
    assert "test_reid_en.json: entry 2: 'id' must be an integer, got '17'" in one_error(rc, err)


def test_missing_images_are_counted_and_named(case, capsys):
    data, cfg = case
    entries = json.loads((data / "annos" / "train_reid_en.json").read_text())
    gone = [data / "imgs" / e["file_path"] for e in entries[:5]]
    for path in gone:
        path.unlink()
    rc, _, err = check(capsys, "--config", str(cfg))
    line = one_error(rc, err)
    total = 36 + 12 + 18  # every image of train, val and test
    assert f"5 of {total} images named in the annotation files are missing" in line
    assert f"{gone[0]}, {gone[1]}, {gone[2]}, ..." in line and str(gone[3]) not in line
    rc, out, err = check(capsys, "--config", str(cfg), "data.on_bad_image=skip")  # training would skip them
    assert rc == 0 and f"warning: 5 of {total} images" in err


def test_missing_tokenizer(case, capsys):
    data, cfg = case
    for name in ("tokenizer.json", "sentencepiece.bpe.model"):
        (data / "text_encoder" / name).unlink()
    rc, _, err = check(capsys, "--config", str(cfg))
    assert f"key 'text_encoder': no tokenizer in {data / 'text_encoder'}" in one_error(rc, err)


def test_tokenizer_that_does_not_load(case, capsys):
    data, cfg = case
    (data / "text_encoder" / "sentencepiece.bpe.model").unlink()
    (data / "text_encoder" / "tokenizer.json").write_text('{"model": 1}')
    rc, _, err = check(capsys, "--config", str(cfg))
    assert f"text_encoder: cannot load the tokenizer in {data / 'text_encoder'}" in one_error(rc, err)


def test_batch_larger_than_the_training_set(case, capsys):
    _, cfg = case
    rc, _, err = check(capsys, "--config", str(cfg), "data.batch_size=100")
    assert "training set has 72 samples, fewer than one global batch" in one_error(rc, err)
    # virtual processes multiply a process's batch, as in training: 2 x 40 > 72
    rc, _, err = check(capsys, "--config", str(cfg), "data.batch_size=40", "distributed.virtual_processes=2")
    assert "training set has 72 samples, fewer than one global batch" in one_error(rc, err)
    rc, _, err = check(capsys, "--config", str(cfg), "data.batch_size=8", "schedule.steps_per_epoch=10")
    assert "schedule.steps_per_epoch is 10, but one pass over the training set is 9 batches" in one_error(rc, err)
    rc, _, err = check(capsys, "--config", str(cfg), "data.batch_size=8", "schedule.steps_per_epoch=9")
    assert rc == 0, err


def test_eval_only_checks_the_test_split_only(case, capsys):
    data, cfg = case
    (data / "annos" / "train_reid_ch.json").unlink()
    rc, _, err = check(capsys, "--config", str(cfg))
    assert "annotation file not found" in one_error(rc, err)
    ckpt = data / "weights.pth"
    ckpt.write_bytes(b"")  # --eval-only with --config never reads the checkpoint under --check
    rc, out, err = check(capsys, "--config", str(cfg), "--eval-only", "--resume", str(ckpt))
    assert rc == 0, err
    assert not re.search(r"^(train|val)\s", out, re.M) and re.search(r"^test\s+ch\s+18\s+6\s+36$", out, re.M)
