"""engine.step.TrainStep, the one training step: with one process and V = 1 it is exactly
the plain step (objective, backward, clipping, AdamW, schedule), and a non-finite term
updates nothing."""
from __future__ import annotations

import copy

import pytest
import torch

from engine.optim import build_optimizer, build_scheduler
from engine.step import build_train_step, seed_step
from model import BiIRRA, BiIRRALoss, build_tokenizer
from tests.model_fixtures import make_batch, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("overrides", [["schedule.grad_clip=0.5"], ["itm.weight=0", "mim.use_mim=false"]])
def test_v1_step_is_the_plain_step(tiny_text_dir, tmp_path, overrides) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path, "schedule.lr=1e-3", *overrides)
    torch.manual_seed(0)
    model = BiIRRA.from_config(cfg).train()
    twin = copy.deepcopy(model)
    batch = make_batch(cfg, build_tokenizer(str(tiny_text_dir)), [0, 1, 1, 2])
    step = build_train_step(cfg, model, torch.device("cpu"), steps_per_epoch=4)

    objective = BiIRRALoss(cfg)
    objective.freeze_unused(twin)
    optimizer = build_optimizer(twin, cfg)
    scheduler = build_scheduler(optimizer, cfg.schedule, 4)
    for i in range(2):
        result = step(batch, i)
        seed_step(cfg.misc.seed, i, 0)
        optimizer.zero_grad(set_to_none=True)
        losses = objective(twin, batch)
        sum(losses.values()).backward()
        if cfg.schedule.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(twin.parameters(), cfg.schedule.grad_clip)
        optimizer.step()
        scheduler.step()
        assert result.bad is None and result.losses.keys() == losses.keys()
        for k, v in losses.items():
            assert torch.equal(result.losses[k], v.detach()), k
    a, b = model.state_dict(), twin.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert step.scheduler.get_last_lr() == scheduler.get_last_lr()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert bool(frozen) == ("itm.weight=0" in overrides)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\(\)`")
def test_non_finite_term_updates_nothing(tiny_text_dir, tmp_path, monkeypatch) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path)
    torch.manual_seed(0)
    model = BiIRRA.from_config(cfg).train()
    batch = make_batch(cfg, build_tokenizer(str(tiny_text_dir)), [0, 1, 1, 2])
    step = build_train_step(cfg, model, torch.device("cpu"), steps_per_epoch=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = BiIRRALoss.__call__
    monkeypatch.setattr(BiIRRALoss, "__call__",
                        lambda self, *a, **kw: {**real(self, *a, **kw), "mim": torch.tensor(float("nan"))})
    result = step(batch, 0)
    assert result.bad == "mim"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    lr = step.scheduler.get_last_lr()
    step.skip()
    assert step.scheduler.get_last_lr() != lr and all(p.grad is None for p in model.parameters())


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
@pytest.mark.parametrize("amp", ["fp32", "fp16"])
def test_virtual_contrastive_overflow(tiny_text_dir, tmp_path, monkeypatch, amp) -> None:
    """V = 2: an overflowed contrastive gradient makes fp16's GradScaler skip the step (weights
    unchanged, scale halved); without loss scaling it is a non-finite term that stops the step."""
    cfg = tiny_config(tiny_text_dir, tmp_path, "distributed.virtual_processes=2", f"schedule.amp={amp}",
                      "schedule.cpu_amp=true")
    torch.manual_seed(0)
    model = BiIRRA.from_config(cfg).eval()
    batch = make_batch(cfg, build_tokenizer(str(tiny_text_dir)), [0, 1, 1, 2])
    step = build_train_step(cfg, model, torch.device("cpu"), steps_per_epoch=4)
    real = BiIRRALoss.contrast_grads
    monkeypatch.setattr(BiIRRALoss, "contrast_grads", lambda *a, **kw: (*real(*a, **kw)[:2], True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale = step.scaler.get_scale() if step.scaler.is_enabled() else None
    result = step(batch, 0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    if amp == "fp16":
        assert result.bad is None and result.overflow and step.scaler.get_scale() == scale / 2
    else:
        assert result.bad == "itc"
