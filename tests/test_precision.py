"""The CUDA precision path (schedule.amp: fp16 autocast + GradScaler, or bf16 autocast) run on
the CPU with schedule.cpu_amp: the same mechanism, so a dtype mismatch in our code shows
here, without a GPU."""
from __future__ import annotations

import copy

import pytest
import torch

from engine.amp import train_dtype
from engine.step import build_train_step
from model import BiIRRA, build_tokenizer
from tests.model_fixtures import make_batch, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")
# |loss - fp32 loss| / |fp32 loss| over 3 steps, per term (measured on the CPU: fp16 <= 3.3e-4,
# bf16 <= 2.2e-3, the largest for ITC)
TOLERANCE = {"fp16": 2e-3, "bf16": 1e-2}


def run_steps(cfg, model: BiIRRA, batch: dict, n: int) -> tuple[list[dict[str, float]], list, object]:
    """``n`` training steps without dropout (eval mode), recording the dtype of the vision
    encoder's first linear output: float16 / bfloat16 under autocast, float32 without.
    The fp16 loss scale starts at 2^8 instead of 2^16, at which the tiny model's first
    gradients overflow (that step would be skipped, see the overflow test), so that every
    step updates the weights as the fp32 steps do."""
    model.eval()
    dtypes = []
    hook = model.vision_encoder.blocks[0].mlp.fc1.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    step = build_train_step(cfg, model, CPU, steps_per_epoch=n)
    if step.scaler.is_enabled():
        step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    losses = [{k: float(v) for k, v in step(batch, i).losses.items()} for i in range(n)]
    hook.remove()
    return losses, dtypes, step


@pytest.fixture(scope="module")
def setup(tiny_text_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("precision")
    fp32 = tiny_config(tiny_text_dir, tmp)
    torch.manual_seed(0)
    model = BiIRRA.from_config(fp32)
    batch = make_batch(fp32, build_tokenizer(str(tiny_text_dir)), [0, 1, 1, 2])
    reference, dtypes, _ = run_steps(fp32, copy.deepcopy(model), batch, 3)
    assert set(dtypes) == {torch.float32}
    return tiny_text_dir, tmp, model, batch, reference


@pytest.mark.parametrize("amp,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_mixed_precision_steps_stay_close_to_fp32(setup, amp, dtype) -> None:
    text_dir, tmp, model, batch, reference = setup
    cfg = tiny_config(text_dir, tmp, f"schedule.amp={amp}", "schedule.cpu_amp=true")
    assert train_dtype(cfg, CPU) == dtype
    losses, dtypes, step = run_steps(cfg, copy.deepcopy(model), batch, 3)
    assert set(dtypes) == {dtype}  # autocast is on in every pass
    assert step.scaler.is_enabled() == (amp == "fp16")  # a GradScaler for fp16 only
    for want, got in zip(reference, losses):
        assert got.keys() == want.keys()
        for k in want:
            assert abs(got[k] - want[k]) <= TOLERANCE[amp] * abs(want[k]), (amp, k, got[k], want[k])


def test_cpu_amp_is_off_by_default(setup) -> None:
    text_dir, tmp, *_ = setup
    assert train_dtype(tiny_config(text_dir, tmp, "schedule.amp=fp16"), CPU) is None
    assert train_dtype(tiny_config(text_dir, tmp, "schedule.amp=fp16"), torch.device("cuda")) == torch.float16


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
def test_overflow_skips_the_update_and_halves_the_scale(setup) -> None:
    text_dir, tmp, model, batch, _ = setup
    cfg = tiny_config(text_dir, tmp, "schedule.amp=fp16", "schedule.cpu_amp=true")
    model = copy.deepcopy(model).eval()
    step = build_train_step(cfg, model, CPU, steps_per_epoch=4)
    step.scaler = step.scaler.__class__("cpu", init_scale=2.0 ** 100)  # scaled fp16 gradients overflow
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = step(batch, 0)
    assert result.overflow and result.bad is None
    assert step.scaler.get_scale() == 2.0 ** 99
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    step.scaler = step.scaler.__class__("cpu", init_scale=2.0 ** 8)
    assert not step(batch, 1).overflow
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow  # uses the trained retrieval model (trained once per session in a subprocess)
def test_eval_amp_ranks_like_fp32(trained_run) -> None:
    """model.eval_amp (fp16 autocast in evaluation) ranks the test queries of a trained model as
    fp32 does: the same metrics within one query, and the same top-10 for all but a few queries,
    whose differences are neighbours swapped (scores closer than fp16 rounding)."""
    from data.loader import build_eval_data
    from engine.evaluate import evaluate
    from engine.retriever import Retriever

    r = Retriever.from_checkpoint(trained_run.checkpoint)
    data = build_eval_data(r.cfg, "test", "en", r.tokenizer)
    kwargs = {"target": False, "k_test": r.cfg.model.k_test, "batch_size": 16, "device": CPU}
    fp32 = evaluate(r.model, data, **kwargs)
    fp16 = evaluate(r.model, data, dtype=torch.float16, **kwargs)
    queries = fp32.metrics["num_queries"]
    assert abs(fp16.metrics["R1"] - fp32.metrics["R1"]) <= 100 / queries + 1e-9
    a, b = fp32.stats["top"], fp16.stats["top"]
    differing = (a != b).any(1)
    assert int(differing.sum()) <= max(2, queries // 20), int(differing.sum())  # at most 5% of the queries
    for q in differing.nonzero().flatten().tolist():  # each difference is a swap of near neighbours
        assert sorted(a[q].tolist()[:-1]) == sorted(b[q].tolist()[:-1]) or set(a[q].tolist()) == set(b[q].tolist())
