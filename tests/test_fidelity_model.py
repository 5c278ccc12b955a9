"""Upstream numerics on the model side (docs/fidelity.md): each test pins one released-code choice."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from engine.amp import eval_dtype, needs_grad_scaler, train_dtype
from engine.optim import build_optimizer, build_scheduler, lr_at
from engine.rerank import rerank_score
from model import BiIRRA, BiIRRALoss, build_tokenizer
from model.checkpoint import load_pretrained
from model.text import build_text_encoder
from tests.model_fixtures import make_batch, tiny_config

CUDA = torch.device("cuda")  # a device object only; nothing runs on it


@pytest.fixture(scope="module")
def tokenizer(tiny_text_dir):
    return build_tokenizer(str(tiny_text_dir))


def position_ids_seen(encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = encoder.embeddings.position_embeddings.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    encoder(ids, mask)
    handle.remove()
    return seen[0].expand(ids.shape[0], -1)


def right_padded(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(["a man in a red shirt with a black backpack", "a woman"], padding=True, return_tensors="pt")
    assert enc["attention_mask"][1, -1] == 0  # the second caption is padded on the right
    return enc["input_ids"], enc["attention_mask"]


def test_text_position_ids_are_arange_and_row_one_trains(tiny_text_dir, tokenizer) -> None:
    ids, mask = right_padded(tokenizer)
    enc = build_text_encoder(str(tiny_text_dir), 2)
    assert torch.equal(position_ids_seen(enc, ids, mask), torch.arange(ids.shape[1]).expand(2, -1))
    enc(ids, mask).sum().backward()
    assert enc.embeddings.position_embeddings.weight.grad[1].abs().sum() > 0  # no frozen padding row


def test_roberta_position_ids_option(tiny_text_dir, tokenizer) -> None:
    ids, mask = right_padded(tokenizer)
    enc = build_text_encoder(str(tiny_text_dir), 2, roberta_position_ids=True)
    expected = (torch.cumsum(mask, dim=1) * mask) + 1  # RoBERTa: tokens from padding_idx + 1 = 2, pads at 1
    assert torch.equal(position_ids_seen(enc, ids, mask), expected)
    enc(ids, mask).sum().backward()
    assert enc.embeddings.position_embeddings.weight.grad[1].abs().sum() == 0


def test_model_uses_position_option_in_every_text_pass(tiny_text_dir, tmp_path) -> None:
    assert not BiIRRA.from_config(tiny_config(tiny_text_dir, tmp_path)).text_encoder.roberta_position_ids
    cfg = tiny_config(tiny_text_dir, tmp_path, "model.roberta_position_ids=true")
    assert BiIRRA.from_config(cfg).text_encoder.roberta_position_ids


def test_target_itm_uses_masked_image_features_and_pairs(tiny_text_dir, tmp_path, tokenizer, monkeypatch) -> None:
    """With itm.use_mask the target ITM draws its negatives from the masked image's features
    and pairs captions with the masked image's keys/values (upstream)."""
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model = BiIRRA.from_config(cfg).eval()
    batch = make_batch(cfg, tokenizer, [0, 1, 2, 3])
    calls = []
    original = BiIRRALoss.itm

    def spy(self, model, text_embeds, text_mask, image_kv, image_feat, *rest):
        calls.append((image_kv, image_feat))
        return original(self, model, text_embeds, text_mask, image_kv, image_feat, *rest)

    monkeypatch.setattr(BiIRRALoss, "itm", spy)
    with torch.no_grad():
        BiIRRALoss(cfg)(model, batch)
        plain = model.encode_image(batch["images"])
        masked = model.encode_image(batch["images"], batch["image_mask"])
        (src_kv, src_feat), (tgt_kv, tgt_feat) = calls
        torch.testing.assert_close(src_feat, model.image_feature(plain))
        torch.testing.assert_close(tgt_feat, model.image_feature(masked))
        assert not torch.allclose(tgt_feat, src_feat)
        torch.testing.assert_close(tgt_kv[0][0], model.image_kv(masked)[0][0])


def group_of(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    where = {id(p): (g["weight_decay"], g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    return {n: where[id(p)] for n, p in model.named_parameters()}


def test_optimizer_groups_follow_upstream_names(tiny_text_dir, tmp_path) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path, "schedule.ratio_factor=5.0", "schedule.lr=1e-4",
                      "schedule.weight_decay=0.02")
    model = BiIRRA.from_config(cfg)
    groups = group_of(build_optimizer(model, cfg), model)
    decay, base, ratio = 0.02, 1e-4, 5e-4
    expected = {
        "vision_encoder.blocks.0.attn.relative_position_bias_table": (0.0, base),  # 2-D, but 'bias' in its name
        "vision_encoder.blocks.0.attn.qkv.weight": (decay, base),
        "vision_encoder.mask_token": (decay, base),  # 3-D and no keyword: decayed, as upstream
        "vision_encoder.blocks.0.gamma_1": (0.0, base),
        "text_encoder.embeddings.position_embeddings.weight": (decay, base),
        "cross_encoder.layer.0.crossattention.self.query.weight": (decay, ratio),
        "cross_encoder.layer.0.crossattention.output.LayerNorm.weight": (0.0, ratio),
        "cross_encoder.layer.0.attention.self.query.weight": (decay, base),  # fusion self-attention: no ratio
        "cross_encoder.layer.0.intermediate.dense.weight": (decay, base),
        "mlm_head.predictions.transform.dense.weight": (decay, ratio),
        "tl_text_proj.weight": (decay, base),
        "mim_head.0.weight": (decay, base),
        "itm_head.0.weight": (decay, base),
        "itm_head.0.bias": (0.0, base),
        "temp": (0.0, base),
    }
    for name, (wd, lr) in expected.items():
        assert groups[name] == pytest.approx((wd, lr)), name


def upstream_schedule(lr: float, lr_start: float, lr_end: float, epochs: int, warm_epochs: int, per_epoch: int) -> np.ndarray:
    """The released ``cosine_scheduler`` formula, written out with numpy."""
    warm = warm_epochs * per_epoch
    warmup = np.linspace(lr_start, lr, warm) if warm_epochs > 0 else np.array([])
    iters = np.arange(epochs * per_epoch - warm)
    return np.concatenate((warmup, lr_end + 0.5 * (lr - lr_end) * (1 + np.cos(np.pi * iters / len(iters)))))


@pytest.mark.parametrize("warm_epochs", [0, 1, 2])
def test_learning_rate_equals_upstream_cosine_scheduler(tiny_text_dir, tmp_path, warm_epochs) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path, "schedule.lr=5e-5", "schedule.lr_start=1e-6", "schedule.lr_end=5e-6",
                      "schedule.epoch=3", f"schedule.epoch_warmup={warm_epochs}", "schedule.ratio_factor=5.0")
    per_epoch = 7
    expected = upstream_schedule(5e-5, 1e-6, 5e-6, 3, warm_epochs, per_epoch)
    got = [lr_at(i, cfg.schedule, per_epoch) for i in range(3 * per_epoch)]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    if warm_epochs:
        assert got[per_epoch * warm_epochs - 1] == pytest.approx(5e-5)  # linspace reaches lr
    model = BiIRRA.from_config(cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg.schedule, per_epoch)
    for i in range(3 * per_epoch):
        lrs = sorted({round(g["lr"], 15) for g in optimizer.param_groups})
        assert lrs == pytest.approx([expected[i], expected[i] * 5.0], rel=1e-9)
        optimizer.step()
        scheduler.step()


def test_tl_text_proj_is_always_copied_from_text_proj(tiny_text_dir, tmp_path) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path)
    source = BiIRRA.from_config(cfg)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["tl_text_proj.weight"] = torch.randn_like(state["tl_text_proj.weight"])  # the file's own copy differs
    torch.save({"model": state}, tmp_path / "pretrained.th")
    model = BiIRRA.from_config(cfg)
    report = load_pretrained(model, str(tmp_path / "pretrained.th"))
    assert torch.equal(model.tl_text_proj.weight, state["text_proj.weight"])
    assert torch.equal(model.tl_text_proj.bias, state["text_proj.bias"])
    assert "tl_text_proj.weight <- text_proj.weight" in report.copied


@pytest.mark.parametrize("option", ["logit", "log_odds"])
def test_rerank_score_is_raw_match_logit_or_log_odds(tiny_text_dir, tmp_path, tokenizer, option) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path, f"model.rerank_score={option}")
    model = BiIRRA.from_config(cfg).eval()
    batch = make_batch(cfg, tokenizer, [0, 1, 2])
    with torch.no_grad():
        text = model.encode_text(batch["src_ids"], batch["src_mask"])
        image = model.encode_image(batch["images"])
        logits = model.itm_logits(text, batch["src_mask"], image)
        score = rerank_score(logits, cfg.model.rerank_score)
        kv = model.image_kv(image)
        pairs = rerank_score(model.itm_logits_pairs(text, batch["src_mask"], torch.arange(3), lambda i: kv[i]),
                             cfg.model.rerank_score)
    expected = logits[:, 1] if option == "logit" else logits[:, 1] - logits[:, 0]
    torch.testing.assert_close(score, expected)
    torch.testing.assert_close(pairs, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[:, 1], logits[:, 1] - logits[:, 0])


@pytest.mark.parametrize("amp,eval_amp,train,evaluation,scaler", [
    ("fp16", False, torch.float16, None, True),   # upstream: fp16 autocast + GradScaler, fp32 evaluation
    ("bf16", False, torch.bfloat16, None, False),
    ("fp32", False, None, None, False),
    ("fp16", True, torch.float16, torch.float16, True),
    ("bf16", True, torch.bfloat16, torch.bfloat16, False),
])
def test_precision_options(tiny_text_dir, tmp_path, amp, eval_amp, train, evaluation, scaler) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path, f"schedule.amp={amp}", f"model.eval_amp={str(eval_amp).lower()}")
    assert train_dtype(cfg, CUDA) is train and eval_dtype(cfg, CUDA) is evaluation
    assert needs_grad_scaler(train_dtype(cfg, CUDA)) is scaler
    assert train_dtype(cfg, torch.device("cpu")) is None and eval_dtype(cfg, torch.device("cpu")) is None


def test_published_defaults_are_upstream(tiny_text_dir, tmp_path) -> None:
    m, cfg = tiny_config(tiny_text_dir, tmp_path).model, tiny_config(tiny_text_dir, tmp_path)
    assert (cfg.schedule.amp, m.eval_amp, m.rerank_score, m.gather_with_grad, m.roberta_position_ids) == \
        ("fp16", False, "logit", False, False)
    assert cfg.itm.negatives == "hard"
    assert math.isclose(cfg.schedule.lr, 5e-5)
