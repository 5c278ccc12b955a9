"""main.py's contract: one error line, no traceback, exit 2; --check prints the resolved config;
the config and device as upstream writes them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.config import ConfigError
from utils.distributed import init_distributed

ROOT = Path(__file__).resolve().parents[1]


def run_main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def assert_one_error_line(r: subprocess.CompletedProcess, needle: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert needle in lines[0] and "Traceback" not in r.stderr


@pytest.mark.slow
def test_mistyped_key_suggests_the_right_one():
    r = run_main("--config", "config/config.yaml", "--check", "data.batchsize=3")
    assert_one_error_line(r, "unknown key 'data.batchsize' (did you mean 'data.batch_size'?)")


@pytest.mark.slow
def test_wrong_type_names_the_key():
    r = run_main("--config", "config/config.yaml", "--check", "schedule.epoch=ten")
    assert_one_error_line(r, "'schedule.epoch' must be an int")


@pytest.mark.slow
def test_missing_annotation_folder_names_the_path(tmp_path):
    r = run_main("--config", "config/config.yaml", "--check", f"anno_dir={tmp_path}/missing")
    assert_one_error_line(r, f"key 'anno_dir': annotation folder not found: {tmp_path}/missing")


@pytest.mark.slow
def test_check_passes_and_prints_resolved_config(tiny_data, tmp_path):
    r = run_main("--config", "config/config.yaml", "--check", f"anno_dir={tiny_data / 'annos'}",
                 f"image_dir={tiny_data / 'imgs'}", f"text_encoder={tiny_data / 'text_encoder'}", "model.resume=",
                 "data.batch_size=7")
    assert r.returncode == 0, r.stderr
    assert "batch_size: 7" in r.stdout and r.stdout.rstrip().endswith("config OK: config/config.yaml")


@pytest.mark.slow
def test_without_config_reads_config_yaml_of_the_working_folder(tmp_path):
    """Upstream's command line: `main.py` with no arguments reads config/config.yaml."""
    r = run_main("--check")  # from the repository root: the shipped config, whose paths are placeholders
    assert_one_error_line(r, "config/config.yaml: key 'anno_dir': annotation folder not found: /path/to/CUHK-PEDES/annos")
    r = subprocess.run([sys.executable, str(ROOT / "main.py"), "--check"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert_one_error_line(r, "config file not found: config/config.yaml (read when --config is not given")
    r = run_main("--help")
    assert r.returncode == 0 and "default: config/config.yaml" in " ".join(r.stdout.split())


# ------------------------------------------------------------------ device (upstream writes `device: 5`)
@pytest.fixture
def fake_gpus(monkeypatch):
    """Two CUDA devices as far as init_distributed can tell; set_device calls recorded."""
    bound: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: bound.append(int(i)))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    return bound


def test_integer_device_binds_that_gpu_in_a_single_process(fake_gpus):
    info = init_distributed(1, "nccl")
    assert info.device == torch.device("cuda", 1) and fake_gpus == [1] and info.world_size == 1
    assert init_distributed("cuda:0", "nccl").device == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match=r"key 'device': CUDA device 5 does not exist \(2 visible"):
        init_distributed(5, "nccl")


def test_integer_device_under_torchrun_yields_to_local_rank(fake_gpus, monkeypatch, capsys):
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **kw: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert init_distributed(5, "nccl").device == torch.device("cuda", rank)
    assert fake_gpus == [0, 1]
    err = capsys.readouterr().err
    assert err.count("warning: device 5 is ignored under torchrun") == 1  # said once, by rank 0


def test_integer_device_without_a_gpu_falls_back_to_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert init_distributed(5, "nccl").device == torch.device("cpu")
    assert "CUDA is not available" in capsys.readouterr().err
