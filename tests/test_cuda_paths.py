"""The CUDA-only code paths (fp16/bf16 autocast training, ``model.eval_amp`` evaluation) on a GPU.

On the CPU autocast is off (engine/amp.py), so nothing else in the suite runs these paths.
Marked ``cuda``: skipped without a CUDA device; ``python -m pytest -m cuda`` (part of
benchmarks/gpu_check.sh) runs them on a GPU machine.
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import TensorDataset

from engine.amp import eval_dtype, train_dtype
from engine.evaluate import evaluate
from engine.step import build_train_step
from model import BiIRRA, build_tokenizer
from tests.model_fixtures import make_batch, tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
# Relative tolerance of an autocast loss against the fp32 one, after one step from the same weights:
# fp16 keeps 10 mantissa bits, bf16 only 7.
LOSS_RTOL = {"fp16": 0.02, "bf16": 0.06}


def one_step(cfg, model: BiIRRA, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], object]:
    """Losses of the first training step (from the given weights) and the step object; a
    second step, after the update, must be finite too."""
    step = build_train_step(cfg, model, CUDA, steps_per_epoch=4)
    results = [step(batch, i) for i in range(2)]
    for i, result in enumerate(results):
        assert result.bad is None, f"non-finite {result.bad} at step {i}"
    return {k: float(v) for k, v in results[0].losses.items()}, step


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_autocast_step_close_to_fp32(tiny_text_dir, tmp_path, amp: str) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path, "device=cuda", f"schedule.amp={amp}")
    ref_cfg = tiny_config(tiny_text_dir, tmp_path / "fp32", "device=cuda", "schedule.amp=fp32")
    model = BiIRRA.from_config(cfg).to(CUDA).train()
    twin = copy.deepcopy(model)
    batch = {k: v.to(CUDA) for k, v in make_batch(cfg, build_tokenizer(str(tiny_text_dir)), [0, 1, 1, 2, 3, 3]).items()}
    got, step = one_step(cfg, model, batch)
    want, _ = one_step(ref_cfg, twin, batch)
    assert train_dtype(cfg, CUDA) == {"fp16": torch.float16, "bf16": torch.bfloat16}[amp]
    assert step.scaler.is_enabled() == (amp == "fp16")  # loss scaling for fp16 only
    assert got.keys() == want.keys()
    for name, value in got.items():
        assert abs(value - want[name]) <= LOSS_RTOL[amp] * max(1.0, abs(want[name])), (name, value, want[name])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def fake_eval_data(cfg, vocab: int, n_gallery: int = 12, n_query: int = 9) -> SimpleNamespace:
    """A gallery of random images and queries of random tokens, as engine.evaluate reads them."""
    g = torch.Generator().manual_seed(0)
    h, w = cfg.experiment.input_resolution
    lengths = torch.randint(2, 12, (n_query,), generator=g)
    ids = torch.randint(3, vocab, (n_query, 12), generator=g)
    mask = (torch.arange(12)[None] < lengths[:, None]).long()
    ids[:, 0], ids[mask == 0] = 0, 1
    return SimpleNamespace(gallery=TensorDataset(torch.randn(n_gallery, 3, h, w, generator=g), torch.arange(n_gallery)),
                           gallery_pids=torch.arange(n_gallery) % 4,
                           query_pids=torch.randint(0, 4, (n_query,), generator=g), query_ids=ids, query_mask=mask)


def test_eval_amp_evaluation(tiny_text_dir, tmp_path) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path, "device=cuda", "model.eval_amp=true", "model.k_test=4")
    model = BiIRRA.from_config(cfg).to(CUDA).eval()
    data = fake_eval_data(cfg, model.text_encoder.config.vocab_size)
    dtype = eval_dtype(cfg, CUDA)
    assert dtype == torch.float16
    half = evaluate(model, data, target=False, k_test=cfg.model.k_test, batch_size=4, chunk=4, device=CUDA, dtype=dtype)
    full = evaluate(model, data, target=False, k_test=cfg.model.k_test, batch_size=4, chunk=4, device=CUDA)
    for result in (half, full):
        assert result.metrics["num_queries"] == 9
        assert all(0.0 <= result.metrics[k] <= 100.0 for k in ("R1", "R5", "R10", "mAP", "mINP"))
        assert result.itc_metrics is not None and result.rerank_pairs is not None
    # the ITC ranking of the fp16 features matches fp32 closely: same number of right firsts within one query
    assert abs(half.itc_metrics["R1"] - full.itc_metrics["R1"]) <= 100.0 / 9 + 1e-6
