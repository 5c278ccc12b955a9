"""Exact resume: SIGKILL at an epoch boundary or inside an epoch (schedule.save_every_steps),
the sampler's position, and the generator states a resumed step draws from."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import main as cli
from data.sampler import GlobalBatchSampler
from engine.train import set_deterministic
from tests.engine_fixtures import kill_when, load_weights, run_main
from tests.model_fixtures import tiny_config_file as tiny_config
from utils.checkpoint import get_rng_state, load_safe, save_atomic, set_rng_state
from utils.logging import read_jsonl

EVERY = 2  # schedule.save_every_steps of the mid-epoch test
HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device"))]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def steps(run: Path) -> list[dict]:
    return [r for r in read_jsonl(run / "log.jsonl") if r["kind"] == "step"]


def config(tiny_data, out: Path, device: str, **sections):
    """Two epochs of 9 steps; on CUDA with deterministic algorithms, the guarantee's condition there."""
    misc = {"seed": 5, "deterministic": device == "cuda"}
    return tiny_config(tiny_data, out, device=device, misc=misc, **sections)


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    """An uninterrupted run per device (the same for every save_every_steps: saving draws no random number)."""
    runs: dict[str, Path] = {}

    def get(device: str) -> Path:
        if device not in runs:
            out = tmp_path_factory.mktemp("full") / device
            r = run_main("--config", str(config(tiny_data, out, device)))
            assert r.returncode == 0, r.stderr[-3000:]
            runs[device] = out
        return runs[device]
    return get


def resume_and_compare(cut: Path, cfg: Path, full: Path) -> None:
    r = run_main("--config", str(cfg), "--resume", str(cut / "checkpoint_last.pth"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert max_diff(load_weights(full / "checkpoint_last.pth"), load_weights(cut / "checkpoint_last.pth")) == 0.0
    assert json.loads((full / "metrics.json").read_text()) == json.loads((cut / "metrics.json").read_text())
    # the resumed steps log the same losses as the uninterrupted run's
    done = {s["step"]: s for s in steps(full)}
    assert all(s["loss"] == done[s["step"]]["loss"] for s in steps(cut))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_resume_after_sigkill_matches_uninterrupted_run(tiny_data, tmp_path, uninterrupted, device):
    full = uninterrupted(device)
    cut = tmp_path / "cut"
    cfg = config(tiny_data, cut, device)
    # killed mid-way through epoch 2, after epoch 1's checkpoint was written
    rc = kill_when(["--config", str(cfg)], cut / "log.jsonl",
                   lambda recs: any(x["kind"] == "step" and x["epoch"] == 2 for x in recs))
    assert rc == -9
    ckpt = load_safe(cut / "checkpoint_last.pth")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (1, 0, 9)
    resume_and_compare(cut, cfg, full)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_kill_inside_an_epoch_loses_at_most_n_steps_and_resumes_exactly(tiny_data, tmp_path, uninterrupted,
                                                                        device):
    full = uninterrupted(device)
    cut = tmp_path / "cut"
    cfg = config(tiny_data, cut, device, schedule={"save_every_steps": EVERY})
    rc = kill_when(["--config", str(cfg)], cut / "log.jsonl",
                   lambda recs: any(x["kind"] == "step" and x["step"] >= 3 for x in recs))
    assert rc == -9
    ckpt = load_safe(cut / "checkpoint_last.pth")
    last_logged = steps(cut)[-1]["step"]  # log.print_period is 1: every completed step is logged
    assert ckpt["epoch"] == 0 and ckpt["batch"] == ckpt["step"] and ckpt["step"] % EVERY == 0
    assert 0 < ckpt["step"] < ckpt["steps_per_epoch"], ckpt["step"]  # a checkpoint from inside epoch 1
    assert last_logged - ckpt["step"] <= EVERY, (last_logged, ckpt["step"])
    resume_and_compare(cut, cfg, full)


def run_kill_and_resume(tiny_data, tmp_path: Path, sections: dict, kill_at: int) -> tuple[Path, dict]:
    """An uninterrupted one-epoch run, and a run SIGKILLed at step ``kill_at`` of epoch 1
    (checkpoints every EVERY steps) then resumed: it must end with the same weights. Returns
    the uninterrupted run's folder and the checkpoint the killed run left."""
    full = tmp_path / "full"
    r = run_main("--config", str(config(tiny_data, full, "cpu", **sections)))
    assert r.returncode == 0, r.stderr[-3000:]
    cut = tmp_path / "cut"
    cfg = config(tiny_data, cut, "cpu", **sections)
    rc = kill_when(["--config", str(cfg)], cut / "log.jsonl",
                   lambda recs: any(x["kind"] == "step" and x["step"] >= kill_at for x in recs))
    assert rc == -9
    ckpt = load_safe(cut / "checkpoint_last.pth")
    assert ckpt["epoch"] == 0 and 0 < ckpt["step"] < 9 and ckpt["step"] % EVERY == 0
    resume_and_compare(cut, cfg, full)
    return full, ckpt


@pytest.mark.slow
def test_virtual_processes_resume_inside_an_epoch_exactly(tiny_data, tmp_path):
    """distributed.virtual_processes=2 (batch 4 x 2, the same 9 steps per epoch): killed inside
    epoch 1, the resumed run ends with the uninterrupted run's weights."""
    run_kill_and_resume(tiny_data, tmp_path, {"distributed": {"backend": "gloo", "virtual_processes": 2},
                                              "data": {"batch_size": 4},
                                              "schedule": {"epoch": 1, "save_every_steps": EVERY}}, kill_at=3)


@pytest.mark.slow
def test_fp16_with_loss_scaling_resumes_inside_an_epoch_exactly(tiny_data, tmp_path):
    """schedule.amp fp16 on the CPU (schedule.cpu_amp): the GradScaler's state is in
    checkpoint_last.pth, overflowed steps are logged as skipped, and a run killed inside
    epoch 1 resumes to the uninterrupted run's weights."""
    sections = {"schedule": {"epoch": 1, "save_every_steps": EVERY, "amp": "fp16", "cpu_amp": True}}
    full, cut = run_kill_and_resume(tiny_data, tmp_path, sections, kill_at=5)
    skips = [x for x in read_jsonl(full / "log.jsonl") if x["kind"] == "skip"]
    assert skips and all(x["term"] == "grad_overflow" for x in skips)  # the tiny model overflows at scale 2^16
    assert skips[0]["step"] == 1 and skips[0]["scale"] == 2.0 ** 15
    assert load_safe(full / "checkpoint_last.pth")["scaler"]["scale"] == 2.0 ** 16 / 2 ** len(skips)
    assert cut["scaler"]["scale"] < 2.0 ** 16  # the killed run's checkpoint holds the lowered scale


@pytest.mark.slow
def test_fp32_checkpoint_resumes_under_fp16(tiny_data, tmp_path):
    """A checkpoint written without loss scaling (its GradScaler state is empty) continues under
    fp16 (schedule.cpu_amp) from the scaler's initial scale, with one line saying so."""
    cfg = config(tiny_data, tmp_path / "run", "cpu", schedule={"epoch": 1})
    r = run_main("--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_safe(tmp_path / "run" / "checkpoint_last.pth")["scaler"] == {}
    r = run_main("--config", str(cfg), "--resume", str(tmp_path / "run" / "checkpoint_last.pth"),
                 "schedule.epoch=2", "schedule.amp=fp16", "schedule.cpu_amp=true")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "saved without fp16 loss scaling" in r.stderr
    assert load_safe(tmp_path / "run" / "checkpoint_last.pth")["scaler"]["scale"] <= 2.0 ** 16


@pytest.mark.slow
def test_mid_epoch_resume_refuses_another_batch_geometry(tiny_data, tmp_path, capsys):
    cut = tmp_path / "cut"
    cfg = config(tiny_data, cut, "cpu", schedule={"save_every_steps": 1, "epoch": 1})
    # step 1's checkpoint is written before step 2 runs
    rc = kill_when(["--config", str(cfg)], cut / "log.jsonl",
                   lambda recs: any(x["kind"] == "step" and x["step"] >= 2 for x in recs))
    assert rc == -9
    ckpt = load_safe(cut / "checkpoint_last.pth")
    assert ckpt["batch"] >= 1
    rc = cli.main(["--config", str(cfg), "data.batch_size=4", "--resume", str(cut / "checkpoint_last.pth")])
    err = capsys.readouterr().err
    assert rc == 2
    assert (f"saved at batch {ckpt['batch']} of 9 in epoch 1, but this run has 18 batches per epoch; "
            "resume with the same data.batch_size and number of processes") in err


@pytest.mark.parametrize("instances", [0, 2])
def test_sampler_continues_at_the_next_batch(instances):
    persons = [i // 4 for i in range(40)]
    sampler = GlobalBatchSampler(40, 4, rank=1, world_size=2, seed=3, persons=persons, instances=instances)
    sampler.set_epoch(2)
    whole = list(sampler)
    assert len(whole) == 5
    for start in range(6):
        sampler.set_epoch(2, start)
        assert list(sampler) == whole[start:] and len(sampler) == 5 - start
    sampler.set_epoch(3, 0)
    assert list(sampler) != whole  # another epoch, another order


def test_read_jsonl_leaves_out_only_a_last_line_cut_short(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"kind": "step", "step": 1}\n{"kind": "step", "step": 2}\n{"kind": "st')
    assert read_jsonl(log) == [{"kind": "step", "step": 1}, {"kind": "step", "step": 2}]
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(log)


class CudaStandIn:
    """torch.cuda's generator-state calls, recorded, on a machine without CUDA."""

    def __init__(self):
        self.state = torch.arange(16, dtype=torch.uint8)
        self.restored: list[tuple[torch.Tensor, torch.device]] = []

    def get_rng_state(self, device):
        assert device == torch.device("cuda", 1)
        return self.state.clone()

    def set_rng_state(self, state, device):
        self.restored.append((state, device))


def test_rng_state_holds_and_restores_the_cuda_generator(monkeypatch, tmp_path, capsys):
    cuda = CudaStandIn()
    monkeypatch.setattr(torch.cuda, "get_rng_state", cuda.get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", cuda.set_rng_state)
    dev = torch.device("cuda", 1)
    torch.manual_seed(0)
    state = get_rng_state(dev)
    assert set(state) == {"cpu", "cuda"} and torch.equal(state["cuda"], cuda.state)
    save_atomic({"rng": [state]}, tmp_path / "c.pth")  # as checkpoint_last.pth stores it (one per process)
    loaded = load_safe(tmp_path / "c.pth")["rng"][0]
    want = torch.rand(5)
    set_rng_state(loaded, dev)
    assert torch.equal(torch.rand(5), want)  # the CPU generator is back where it was saved
    assert len(cuda.restored) == 1 and torch.equal(cuda.restored[0][0], cuda.state) and cuda.restored[0][1] == dev
    # a checkpoint written on the CPU: CUDA generator left alone, and said so
    set_rng_state({"cpu": loaded["cpu"]}, dev)
    assert len(cuda.restored) == 1 and "no CUDA generator state" in capsys.readouterr().err
    # on the CPU, no CUDA call at all
    assert set(get_rng_state(torch.device("cpu"))) == {"cpu"}
    set_rng_state(loaded, torch.device("cpu"))
    assert len(cuda.restored) == 1


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_cuda_generator_state_round_trips_through_a_checkpoint(tmp_path):
    dev = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    torch.rand(3, device=dev)  # move the generator off its seed
    save_atomic({"rng": [get_rng_state(dev)]}, tmp_path / "c.pth")
    want = (torch.rand(1000, device=dev), torch.multinomial(torch.ones(50, device=dev), 10))
    torch.manual_seed(123)  # what a resumed run does first
    set_rng_state(load_safe(tmp_path / "c.pth")["rng"][0], dev)
    got = (torch.rand(1000, device=dev), torch.multinomial(torch.ones(50, device=dev), 10))
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_deterministic_option_turns_on_deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    workspace = os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    try:
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark is False
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        if workspace is not None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace
