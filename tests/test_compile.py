"""model.compile: the encoders and fusion layers compiled in place (parameter names unchanged),
the same losses as eager, and one clear line where compilation is impossible."""
from __future__ import annotations

import copy

import pytest
import torch

import main as cli
from engine.step import build_train_step, check_compile, compile_model
from model import BiIRRA, build_tokenizer
from tests.model_fixtures import make_batch, tiny_config, tiny_config_file
from utils.config import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow  # about 30 s of graph capture
def test_compiled_step_equals_eager(tiny_text_dir, tmp_path) -> None:
    """TorchDynamo's graph capture with the ``aot_eager`` backend (forward and backward graphs,
    no code generation): what the default inductor backend compiles. Inductor itself takes
    minutes to compile on a 2-core CPU, so its speed is measured in benchmarks/train_step.py."""
    cfg = tiny_config(tiny_text_dir, tmp_path)
    torch.manual_seed(0)
    eager = BiIRRA.from_config(cfg).eval()  # no dropout: compiled graphs draw other random numbers
    compiled = copy.deepcopy(eager)
    names = list(compiled.state_dict())
    torch._dynamo.reset()
    compile_model(compiled, backend="aot_eager")
    assert list(compiled.state_dict()) == names  # checkpoints load unchanged
    batch = make_batch(cfg, build_tokenizer(str(tiny_text_dir)), [0, 1, 1, 2])
    results = []
    for model in (eager, compiled):
        step = build_train_step(cfg, model, torch.device("cpu"), steps_per_epoch=2)
        results.append([step(batch, i).losses for i in range(2)])
    for want, got in zip(*results):
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5)
    state = eager.state_dict()
    for k, v in compiled.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=1e-4, atol=1e-5)


def test_impossible_compilation_is_one_line(tiny_text_dir, tmp_path, monkeypatch) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path, "model.compile=true")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(ConfigError, match=r"key 'model.compile' is true but no C\+\+ compiler \(/nonexistent/c\+\+\)"):
        check_compile(cfg, "cpu")
    check_compile(cfg, "cuda")  # inductor generates Triton code there, not C++
    virtual = tiny_config(tiny_text_dir, tmp_path, "model.compile=true", "distributed.virtual_processes=2")
    with pytest.raises(ConfigError, match="distributed.virtual_processes is 2: compiled graphs"):
        check_compile(virtual, "cuda")
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(ConfigError, match="torch.compile does not support this Python"):
        check_compile(cfg, "cuda")


def test_check_refuses_what_training_would(tiny_data, tmp_path, monkeypatch, capsys) -> None:
    cfg = tiny_config_file(tiny_data, tmp_path / "out", "model.compile=true")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    assert cli.main(["--config", str(cfg), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "key 'model.compile' is true but no C++ compiler" in err[0]
