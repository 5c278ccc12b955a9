"""Bad input through the real command line (in-process): one ``error:`` line naming the
file, key or entry; non-zero exit; no traceback; no output folder left behind."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import main as cli
from tests.engine_fixtures import edit_annos
from tests.model_fixtures import tiny_config_file


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED_MARKER",))


@pytest.fixture
def case(tiny_data, tmp_path):
    """A private copy of the tiny dataset and a config pointing at it."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cfg = tiny_config_file(data, tmp_path / "out", schedule={"epoch": 1})
    (tmp_path / "out").rmdir()  # tiny_config_file makes it; a failed run must not
    return data, cfg, tmp_path / "out"


def expect_error(capsys, out_dir: Path | None, *argv: str, needle: str, code: int = 2) -> str:
    """Run main.py's main(argv): exit ``code``, exactly one ``error:`` line, which holds
    ``needle``, no traceback, and (unless ``out_dir`` is None) no output folder, before or after."""
    if out_dir is not None:
        assert not out_dir.exists()
    rc = cli.main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert rc == code, err[-2000:]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    assert needle in errors[0], errors[0]
    if out_dir is not None:
        assert not out_dir.exists(), list(out_dir.iterdir())
    return errors[0]


def edit_yaml(path: Path, **sections) -> None:
    raw = yaml.safe_load(path.read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    path.write_text(yaml.safe_dump(raw))


# ---------------------------------------------------------------- configuration
CONFIG_CASES = [
    ("data.batchsize=3", "unknown key 'data.batchsize' (did you mean 'data.batch_size'?)"),
    ("schedule.epoch=ten", "'schedule.epoch' must be an int"),
    ("data.target_language=ch/x", "'data.target_language' must hold language codes of annotation files"),
    ("data.batch_size=0", "'data.batch_size' must be positive"),
    ("mim.mask_ratio=1.5", "'mim.mask_ratio' must be in [0, 1]"),
    ("mlm.skipgram_prb=-1", "'mlm.skipgram_prb' must be in [0, 1]"),
    ("model.k_test=0", "'model.k_test' must be positive"),
    ("experiment.input_resolution=[33,16]", "must be divisible by patch_size"),
]


@pytest.mark.parametrize("override,needle", CONFIG_CASES)
def test_config_values(case, capsys, override, needle):
    _, cfg, out = case
    expect_error(capsys, out, "--config", str(cfg), override, needle=needle)


def test_unknown_key_in_file(case, capsys):
    _, cfg, out = case
    edit_yaml(cfg, schedule={"lrr": 0.1})
    expect_error(capsys, out, "--config", str(cfg), needle="unknown key 'schedule.lrr' (did you mean 'schedule.lr'?)")


def test_invalid_yaml_and_missing_config(case, capsys, tmp_path):
    _, cfg, out = case
    cfg.write_text("data: [1, 2\n")
    expect_error(capsys, out, "--config", str(cfg), needle="invalid YAML")
    expect_error(capsys, out, "--config", str(tmp_path / "none.yaml"), needle="config file not found")


def test_bad_vision_json(case, capsys):
    _, cfg, out = case
    Path(yaml.safe_load(cfg.read_text())["vision_config"]).write_text('{"vision_widht": 32}')
    expect_error(capsys, out, "--config", str(cfg), needle="unknown key 'vision_widht' (did you mean 'vision_width'?)")


# ---------------------------------------------------------------- paths and annotation files
def test_missing_annotation_folder(case, capsys):
    data, cfg, out = case
    shutil.rmtree(data / "annos")
    expect_error(capsys, out, "--config", str(cfg), needle=f"key 'anno_dir': annotation folder not found: {data / 'annos'}")


def test_missing_annotation_file(case, capsys):
    data, cfg, out = case
    (data / "annos" / "train_reid_ch.json").unlink()
    expect_error(capsys, out, "--config", str(cfg), needle="train_reid_ch.json")


def test_missing_image_folder(case, capsys):
    data, cfg, out = case
    shutil.rmtree(data / "imgs")
    expect_error(capsys, out, "--config", str(cfg), needle="key 'image_dir': image folder not found")


def test_invalid_json(case, capsys):
    data, cfg, out = case
    (data / "annos" / "train_reid_en.json").write_text('[{"file_path": "a.png",')
    expect_error(capsys, out, "--config", str(cfg), needle="train_reid_en.json")


def test_entry_missing_field(case, capsys):
    data, cfg, out = case
    path = edit_annos(data, "train", "en", lambda e: e[3].pop("captions"))
    expect_error(capsys, out, "--config", str(cfg), needle=f"{path}: entry 3: missing field 'captions'")


def test_misaligned_languages(case, capsys):
    data, cfg, out = case
    en = data / "annos" / "train_reid_en.json"
    right = json.loads(en.read_text(encoding="utf-8"))[5]["id"]
    ch = edit_annos(data, "train", "ch", lambda e: e[5].update(id=999))
    expect_error(capsys, out, "--config", str(cfg),
                 needle=f"{en} and {ch} are not aligned at entry 5: id {right} vs 999")


@pytest.mark.parametrize("caption", ["", " ... !!! "])
def test_empty_or_punctuation_caption(case, capsys, caption):
    data, cfg, out = case
    path = edit_annos(data, "train", "en", lambda e: e[2]["captions"].__setitem__(1, caption))
    expect_error(capsys, out, "--config", str(cfg),
                 needle=f"{path}: entry 2: caption 1 is empty or only punctuation: {caption!r}")


def test_batch_larger_than_dataset(case, capsys):
    _, cfg, out = case
    expect_error(capsys, out, "--config", str(cfg), "data.batch_size=1000", needle="lower data.batch_size")


# ---------------------------------------------------------------- images
def first_train_image(data: Path) -> Path:
    entries = json.loads((data / "annos" / "train_reid_en.json").read_text())
    return data / "imgs" / entries[0]["file_path"]


def test_missing_image(case, capsys):
    data, cfg, _ = case
    img = first_train_image(data)
    img.unlink()
    expect_error(capsys, None, "--config", str(cfg), needle=f"cannot read image {img}")


def test_corrupt_image_with_workers(case, capsys):
    data, cfg, _ = case
    img = first_train_image(data)
    img.write_bytes(img.read_bytes()[:40])  # truncated PNG
    expect_error(capsys, None, "--config", str(cfg), "data.num_workers=1", needle=f"cannot read image {img}")


def test_bad_image_skip_policy_completes(case, capsys):
    data, cfg, out = case
    first_train_image(data).write_bytes(b"not an image")
    rc = cli.main(["--config", str(cfg), "data.on_bad_image=skip"])
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    assert "skipped" in err and (out / "metrics.json").is_file()


# ---------------------------------------------------------------- checkpoints and text encoder
def test_missing_pretrained_checkpoint(case, capsys, tmp_path):
    _, cfg, out = case
    expect_error(capsys, out, "--config", str(cfg), f"model.resume={tmp_path}/x.th", needle="key 'model.resume': checkpoint not found")


def test_pretrained_checkpoint_that_is_not_one(case, capsys, tmp_path):
    _, cfg, out = case
    bad = tmp_path / "notes.th"
    bad.write_text("these are not weights")
    expect_error(capsys, out, "--config", str(cfg), f"model.resume={bad}", needle=f"{bad}: not a readable torch checkpoint")


def test_checkpoint_of_another_architecture(case, capsys, tmp_path):
    _, cfg, out = case
    other = tmp_path / "other.th"
    torch.save({"model": {"vision_proj.weight": torch.zeros(8, 99), "vision_proj.bias": torch.zeros(8)}}, other)
    expect_error(capsys, out, "--config", str(cfg), f"model.resume={other}", needle="'vision_proj.weight' has shape (8, 99)")


def test_pickle_that_runs_code_is_refused(case, capsys, tmp_path, monkeypatch):
    _, cfg, out = case
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.th"
    with open(evil, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    expect_error(capsys, out, "--config", str(cfg), f"model.resume={evil}", needle="refused to load")
    assert not (tmp_path / "EXPLOITED_MARKER").exists()


def test_resume_checkpoint_missing(case, capsys, tmp_path):
    _, cfg, out = case
    expect_error(capsys, out, "--config", str(cfg), "--resume", str(tmp_path / "nope.pth"), needle="checkpoint not found")


def test_text_encoder_without_tokenizer(case, capsys):
    data, cfg, out = case
    for f in ("tokenizer.json", "sentencepiece.bpe.model"):
        (data / "text_encoder" / f).unlink(missing_ok=True)
    expect_error(capsys, out, "--config", str(cfg), needle="no tokenizer in")


def test_text_encoder_invalid_config(case, capsys):
    data, cfg, out = case
    (data / "text_encoder" / "config.json").write_text("{broken")
    msg = expect_error(capsys, out, "--config", str(cfg), needle="text_encoder")
    assert str(data / "text_encoder" / "config.json") in msg


def test_resume_training_from_weights_only_checkpoint(case, capsys, tmp_path):
    from utils.checkpoint import CHECKPOINT_FORMAT
    from model import build_model
    from utils.config import load_config

    _, cfg, out = case
    model, _ = build_model(load_config(cfg))
    weights = tmp_path / "best_en.pth"
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict()}, weights)
    expect_error(capsys, out, "--config", str(cfg), "--resume", str(weights), needle="holds weights only")
