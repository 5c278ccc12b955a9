"""Full loss forward/backward on a tiny Bi-IRRA, the loss switches and the parameters they own."""
from __future__ import annotations

import pytest
import torch

from model import BiIRRA, build_model, build_tokenizer
from tests.model_fixtures import make_batch, tiny_config, tiny_text_dir  # noqa: F401 - fixture
from utils.config import ConfigError


@pytest.fixture(scope="module")
def tokenizer(tiny_text_dir):  # noqa: F811
    return build_tokenizer(str(tiny_text_dir))


def run_step(model: BiIRRA, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(batch)
    sum(losses.values()).backward()
    return losses


def params_without_grad(model: BiIRRA) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]


def test_full_loss_forward_backward(tiny_text_dir, tmp_path, tokenizer) -> None:  # noqa: F811
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model, tok = build_model(cfg)
    batch = make_batch(cfg, tok, [0, 0, 1, 2, 3, 3])
    losses = run_step(model, batch)
    assert set(losses) == {"itc", "itm", "mlm", "mim"}
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    assert params_without_grad(model) == []
    assert model.temp.grad is not None


def test_mim_teacher_gets_no_gradient(tiny_text_dir, tmp_path, tokenizer) -> None:  # noqa: F811
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model = BiIRRA(cfg).train()
    batch = make_batch(cfg, tokenizer, [0, 1])
    image = model.encode_image(batch["images"])
    text = model.encode_text(batch["src_ids"], batch["src_mask"])
    assert image.grad_fn is not None and text.grad_fn is not None
    teacher = model.mim_teacher(image, text, batch["src_mask"])
    assert teacher.grad_fn is None and not teacher.requires_grad
    assert teacher.shape == image.shape


SWITCHES = [
    # overrides, losses present, parameter prefixes that must be absent, prefixes that must exist
    (["mlm.is_mlm=false"], {"itc", "itm", "mim"}, ["mlm_head."], ["mim_head.", "vision_encoder.mask_token"]),
    (["mim.use_mim=false"], {"itc", "itm", "mlm"}, ["mim_head."], ["vision_encoder.mask_token"]),
    (["mim.use_mim=false", "itm.use_mask=false"], {"itc", "itm", "mlm"},
     ["mim_head.", "vision_encoder.mask_token"], []),
    (["mim.use_mim=false", "itm.use_mask=false", "mlm.is_mlm=false"], {"itc", "itm"},
     ["mim_head.", "vision_encoder.mask_token", "mlm_head."], []),
    (["itm.use_mask=false"], {"itc", "itm", "mlm", "mim"}, [], ["vision_encoder.mask_token"]),
    (["sdm.use_sdm=true"], {"itc", "itm", "mlm", "mim", "sdm"}, [], []),
    (["id.use_id=true"], {"itc", "itm", "mlm", "mim", "id"}, [], ["classifier."]),
    (["use_one_cl_proj_only=true"], {"itc", "itm", "mlm", "mim"}, ["tl_text_proj."], []),
]


@pytest.mark.parametrize("overrides,expected,absent,present", SWITCHES)
def test_switches_remove_losses_and_parameters(tiny_text_dir, tmp_path, tokenizer, overrides, expected,  # noqa: F811
                                               absent, present) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path, *overrides)
    model = BiIRRA(cfg, num_ids=4)
    names = [n for n, _ in model.named_parameters()]
    for prefix in absent:
        assert not any(n.startswith(prefix) for n in names), prefix
    for prefix in present:
        assert any(n.startswith(prefix) for n in names), prefix
    batch = make_batch(cfg, tokenizer, [0, 1, 1, 3])
    if not cfg.mlm.is_mlm:
        batch = {k: v for k, v in batch.items() if "_mlm_" not in k}
    losses = run_step(model, batch)
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    assert params_without_grad(model) == []  # DDP would find no unused parameter


def test_tl_text_proj_starts_as_copy_and_is_used_for_target(tiny_text_dir, tmp_path) -> None:  # noqa: F811
    model = BiIRRA(tiny_config(tiny_text_dir, tmp_path))
    assert torch.equal(model.tl_text_proj.weight, model.text_proj.weight)
    assert model.tl_text_proj.weight.data_ptr() != model.text_proj.weight.data_ptr()
    with torch.no_grad():
        model.tl_text_proj.weight.add_(1.0)
    text = torch.randn(2, 3, 32)
    assert not torch.allclose(model.text_feature(text, target=True), model.text_feature(text, target=False))
    torch.testing.assert_close(model.text_feature(text, target=False).norm(dim=-1), torch.ones(2))


def test_all_same_person_batch(tiny_text_dir, tmp_path, tokenizer) -> None:  # noqa: F811
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model = BiIRRA(cfg)
    losses = run_step(model, make_batch(cfg, tokenizer, [5, 5, 5]))
    assert all(torch.isfinite(v) for v in losses.values())


def test_itm_hard_negatives_are_other_persons(tiny_text_dir, tmp_path, tokenizer, monkeypatch) -> None:  # noqa: F811
    """Inside the model: every negative pair fed to the ITM head pairs different persons."""
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model = BiIRRA(cfg)
    pids = torch.tensor([0, 0, 0, 1, 2, 2])
    seen = []
    original = BiIRRA.itm_logits

    def spy(self, text_embeds, text_mask, image_embeds=None, image_kv=None):
        seen.append(text_embeds.shape[0])
        return original(self, text_embeds, text_mask, image_embeds, image_kv)

    import model.losses as losses_mod
    draws = []
    real_sample = losses_mod.sample_negatives

    def record(sim, pr, pc, temp):
        idx, valid = real_sample(sim, pr, pc, temp)
        draws.append((idx, valid))
        return idx, valid

    monkeypatch.setattr("model.bi_irra.sample_negatives", record)
    monkeypatch.setattr(BiIRRA, "itm_logits", spy)
    for seed in range(5):
        model(make_batch(cfg, tokenizer, pids.tolist(), seed=seed))
    for idx, valid in draws:
        assert (pids[idx] != pids[valid]).all()
    assert all(n == 3 * len(pids) for n in seen)


def test_temperature_is_clamped(tiny_text_dir, tmp_path) -> None:  # noqa: F811
    model = BiIRRA(tiny_config(tiny_text_dir, tmp_path))
    with torch.no_grad():
        model.temp.fill_(-1.0)
    assert model.temperature().item() == pytest.approx(0.001)
    with torch.no_grad():
        model.temp.fill_(3.0)
    assert model.temperature().item() == pytest.approx(0.5)


def test_grad_checkpointing_gives_same_losses(tiny_text_dir, tmp_path, tokenizer) -> None:  # noqa: F811
    cfg = tiny_config(tiny_text_dir, tmp_path)
    torch.manual_seed(0)
    plain = BiIRRA(cfg).eval()
    cfg_ckpt = tiny_config(tiny_text_dir, tmp_path, "model.grad_checkpointing=true")
    ckpt = BiIRRA(cfg_ckpt)
    ckpt.load_state_dict(plain.state_dict())
    batch = make_batch(cfg, tokenizer, [0, 1, 2])
    # checkpointing only acts in train mode, so compare in train mode with every dropout at 0
    for m in (plain, ckpt):
        m.train()
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        for layer in m.cross_encoder.layer:
            layer.attention.self.dropout = layer.crossattention.self.dropout = 0.0
    torch.manual_seed(1)
    a = plain(batch)
    torch.manual_seed(1)
    b = ckpt(batch)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    sum(b.values()).backward()
    assert params_without_grad(ckpt) == []


def test_vision_width_must_equal_text_hidden(tiny_text_dir, tmp_path) -> None:  # noqa: F811
    cfg = tiny_config(tiny_text_dir, tmp_path, width=48)
    with pytest.raises(ConfigError, match="hidden_size"):
        BiIRRA(cfg)


def test_id_loss_needs_num_ids(tiny_text_dir, tmp_path) -> None:  # noqa: F811
    with pytest.raises(ValueError, match="num_ids"):
        BiIRRA(tiny_config(tiny_text_dir, tmp_path, "id.use_id=true"))
