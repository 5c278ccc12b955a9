"""Full loss forward/backward on a tiny Bi-IRRA, the loss switches and the parameters they own."""
from __future__ import annotations

import pytest
import torch

from model import BiIRRA, BiIRRALoss, build_model, build_tokenizer
from tests.model_fixtures import make_batch, tiny_config
from tests.recompute import assert_recomputed, block_calls
from utils.config import ConfigError


@pytest.fixture(scope="module")
def tokenizer(tiny_text_dir):
    return build_tokenizer(str(tiny_text_dir))


def run_step(model: BiIRRA, cfg, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The objective of ``cfg`` (its unused parts frozen, as training does) forward and backward."""
    objective = BiIRRALoss(cfg)
    objective.freeze_unused(model)
    model.train()
    model.zero_grad(set_to_none=True)
    losses = objective(model, batch)
    sum(losses.values()).backward()
    return losses


def params_without_grad(model: BiIRRA) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]


def without_dropout(model: BiIRRA) -> BiIRRA:
    """Train mode with every dropout at 0, so that a second pass over the same batch gives the same numbers."""
    model.train()
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    for layer in model.cross_encoder.layer:
        layer.attention.self.dropout = layer.crossattention.self.dropout = 0.0
    return model


def itc_by_hand(model: BiIRRA, batch: dict[str, torch.Tensor]) -> float:
    """The identity-aware ITC of docs/design.md written out: per caption language, the mean of
    the image->text and text->image cross-entropies against row-normalised same-person
    targets; then averaged."""
    with torch.no_grad():
        image = model.image_feature(model.encode_image(batch["images"]))
        temp = float(model.temperature())
        pids = batch["pids"].tolist()
        total = 0.0
        for lang, target in (("src", False), ("tgt", True)):
            text = model.text_feature(model.encode_text(batch[f"{lang}_ids"], batch[f"{lang}_mask"]), target=target)
            for a, b in ((image, text), (text, image)):
                logits = (a @ b.t() / temp).double()
                per_row = []
                for i in range(len(pids)):
                    same = [j for j in range(len(pids)) if pids[j] == pids[i]]
                    log_z = float(torch.logsumexp(logits[i], 0))
                    per_row.append(sum(log_z - float(logits[i, j]) for j in same) / len(same))
                total += 0.25 * sum(per_row) / len(per_row)
    return total


def test_full_loss_forward_backward(tiny_text_dir, tmp_path, tokenizer) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model, tok = build_model(cfg)
    batch = make_batch(cfg, tok, [0, 0, 1, 2, 3, 3])
    without_dropout(model)
    torch.manual_seed(3)
    losses = run_step(model, cfg, batch)
    assert set(losses) == {"itc", "itm", "mlm", "mim"}
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value), name
    assert params_without_grad(model) == []
    assert model.temp.grad is not None and float(model.temp.grad) != 0.0
    assert losses["itc"].item() == pytest.approx(itc_by_hand(model, batch), rel=1e-5)
    # the configured weights scale their terms exactly (same weights, same negatives drawn)
    heavy = tiny_config(tiny_text_dir, tmp_path, "itm.weight=2.5", "mim.weight=0.5")
    twin = without_dropout(BiIRRA.from_config(heavy))
    twin.load_state_dict(model.state_dict())
    torch.manual_seed(3)
    weighted = BiIRRALoss(heavy)(twin, batch)
    for name, factor in (("itc", 1.0), ("mlm", 1.0), ("itm", 2.5 / cfg.itm.weight), ("mim", 0.5 / cfg.mim.weight)):
        assert weighted[name].item() == pytest.approx(factor * losses[name].item(), rel=1e-5), name


def test_mim_teacher_gets_no_gradient(tiny_text_dir, tmp_path, tokenizer) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model = BiIRRA.from_config(cfg).train()
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
    (["itm.weight=0"], {"itc", "mlm", "mim"}, [], ["vision_encoder.mask_token"]),
    (["itm.weight=0", "mim.use_mim=false"], {"itc", "mlm"}, ["mim_head.", "vision_encoder.mask_token"], []),
    (["itm.weight=0", "mim.use_mim=false", "mlm.is_mlm=false"], {"itc"},
     ["mim_head.", "vision_encoder.mask_token", "mlm_head."], []),
]


@pytest.mark.parametrize("overrides,expected,absent,present", SWITCHES)
def test_switches_remove_losses_and_parameters(tiny_text_dir, tmp_path, tokenizer, overrides, expected,
                                               absent, present) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path, *overrides)
    model = BiIRRA.from_config(cfg, num_ids=4)
    names = [n for n, _ in model.named_parameters()]
    for prefix in absent:
        assert not any(n.startswith(prefix) for n in names), prefix
    for prefix in present:
        assert any(n.startswith(prefix) for n in names), prefix
    batch = make_batch(cfg, tokenizer, [0, 1, 1, 3])
    if not cfg.mlm.is_mlm:
        batch = {k: v for k, v in batch.items() if "_mlm_" not in k}
    losses = run_step(model, cfg, batch)
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    assert params_without_grad(model) == []  # DDP would find no unused parameter


@pytest.mark.parametrize("mlm", [False, True])
def test_itm_off_freezes_what_no_loss_trains(tiny_text_dir, tmp_path, tokenizer, mlm) -> None:
    """itm.weight 0: the ITM head (and the fusion layers unless MLM uses them) is frozen and
    left out of the optimizer, keeps its weights through a step, and ITC is unchanged."""
    from engine.optim import build_optimizer

    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path, "itm.weight=0", "mim.use_mim=false", f"mlm.is_mlm={str(mlm).lower()}")
    model = without_dropout(BiIRRA.from_config(cfg))
    BiIRRALoss(cfg).freeze_unused(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in model.named_parameters() if n.startswith("itm_head.")
                or (not mlm and n.startswith("cross_encoder."))}
    assert frozen == expected and expected
    optimizer = build_optimizer(model, cfg)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert not any(id(named[n]) in in_optimizer for n in frozen)
    before = {n: named[n].detach().clone() for n in frozen}
    batch = make_batch(cfg, tokenizer, [0, 1, 1, 3])
    if not mlm:
        batch = {k: v for k, v in batch.items() if "_mlm_" not in k}
    losses = run_step(model, cfg, batch)
    assert losses["itc"].item() == pytest.approx(itc_by_hand(model, batch), rel=1e-5)
    optimizer.step()
    assert all(torch.equal(named[n], before[n]) for n in frozen)
    assert params_without_grad(model) == []


def test_tl_text_proj_starts_as_copy_and_is_used_for_target(tiny_text_dir, tmp_path) -> None:
    model = BiIRRA.from_config(tiny_config(tiny_text_dir, tmp_path))
    assert torch.equal(model.tl_text_proj.weight, model.text_proj.weight)
    assert model.tl_text_proj.weight.data_ptr() != model.text_proj.weight.data_ptr()
    with torch.no_grad():
        model.tl_text_proj.weight.add_(1.0)
    text = torch.randn(2, 3, 32)
    assert not torch.allclose(model.text_feature(text, target=True), model.text_feature(text, target=False))
    torch.testing.assert_close(model.text_feature(text, target=False).norm(dim=-1), torch.ones(2))


def test_all_same_person_batch(tiny_text_dir, tmp_path, tokenizer, monkeypatch) -> None:
    """No caption or image of another person: ITM gets only the positive pairs (no pair is
    labelled a non-match), and ITC's targets are uniform over the whole batch."""
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model = without_dropout(BiIRRA.from_config(cfg))
    batch = make_batch(cfg, tokenizer, [5, 5, 5])
    pairs = []
    original = BiIRRA.itm_logits

    def spy(self, text_embeds, text_mask, image_embeds=None, image_kv=None):
        pairs.append(text_embeds.shape[0])
        return original(self, text_embeds, text_mask, image_embeds, image_kv)

    monkeypatch.setattr(BiIRRA, "itm_logits", spy)
    losses = run_step(model, cfg, batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert pairs == [3, 3]  # source and target ITM: the 3 positive pairs each, nothing else
    assert losses["itc"].item() == pytest.approx(itc_by_hand(model, batch), rel=1e-5)


def test_itm_hard_negatives_are_other_persons(tiny_text_dir, tmp_path, tokenizer, monkeypatch) -> None:
    """Inside the model: every negative pair fed to the ITM head pairs different persons."""
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model = BiIRRA.from_config(cfg)
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

    monkeypatch.setattr("model.objective.sample_negatives", record)
    monkeypatch.setattr(BiIRRA, "itm_logits", spy)
    for seed in range(5):
        BiIRRALoss(cfg)(model, make_batch(cfg, tokenizer, pids.tolist(), seed=seed))
    for idx, valid in draws:
        assert (pids[idx] != pids[valid]).all()
    assert all(n == 3 * len(pids) for n in seen)


@pytest.mark.parametrize("negatives", ["hard", "random"])
def test_itm_negative_draw_weights(tiny_text_dir, tmp_path, tokenizer, monkeypatch, negatives) -> None:
    """hard (upstream): other people weighted by softmax(ITC similarity / temp) + 1e-5;
    random: every other person's sample equally likely; the same person never."""
    cfg = tiny_config(tiny_text_dir, tmp_path, f"itm.negatives={negatives}", "mlm.is_mlm=false",
                      "mim.use_mim=false", "itm.use_mask=false")
    model = BiIRRA.from_config(cfg).eval()
    pids = torch.tensor([0, 0, 1, 2, 2, 3])
    batch = make_batch(cfg, tokenizer, pids.tolist())
    batch = {k: v for k, v in batch.items() if "_mlm_" not in k}
    weights = []
    real = torch.multinomial
    monkeypatch.setattr(torch, "multinomial", lambda w, n: weights.append(w.clone()) or real(w, n))
    BiIRRALoss(cfg)(model, batch)
    with torch.no_grad():
        image = model.image_feature(model.encode_image(batch["images"]))
        text = model.text_feature(model.encode_text(batch["src_ids"], batch["src_mask"]), target=False)
        temp = float(model.temperature())
    other = (pids[:, None] != pids[None, :]).float()
    sim = text @ image.t()
    for w, s in zip(weights[:2], (sim, sim.t())):  # source-language pairs: text -> image, image -> text
        if negatives == "hard":
            expected = (torch.softmax(s / temp, dim=1) + 1e-5) * other
        else:
            expected = (1.0 / len(pids) + 1e-5) * other
        torch.testing.assert_close(w, expected, rtol=1e-5, atol=1e-7)


def test_temperature_is_clamped(tiny_text_dir, tmp_path) -> None:
    model = BiIRRA.from_config(tiny_config(tiny_text_dir, tmp_path))
    with torch.no_grad():
        model.temp.fill_(-1.0)
    assert model.temperature().item() == pytest.approx(0.001)
    with torch.no_grad():
        model.temp.fill_(3.0)
    assert model.temperature().item() == pytest.approx(0.5)


def test_grad_checkpointing_gives_same_losses_and_gradients(tiny_text_dir, tmp_path, tokenizer) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path)
    torch.manual_seed(0)
    plain = BiIRRA.from_config(cfg).eval()
    cfg_ckpt = tiny_config(tiny_text_dir, tmp_path, "model.grad_checkpointing=true")
    ckpt = BiIRRA.from_config(cfg_ckpt)
    ckpt.load_state_dict(plain.state_dict())
    batch = make_batch(cfg, tokenizer, [0, 1, 2])
    # checkpointing only acts in train mode, so compare in train mode with every dropout at 0
    for m in (plain, ckpt):
        without_dropout(m)
    losses, grads = {}, {}
    for name, m in (("plain", plain), ("ckpt", ckpt)):
        with block_calls(m) as (counts, phase):
            torch.manual_seed(1)
            losses[name] = BiIRRALoss(cfg)(m, batch)
            phase["backward"] = True
            sum(losses[name].values()).backward()
        assert_recomputed(counts, checkpointing=name == "ckpt")  # checkpointing really is on (and off)
        grads[name] = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    for k in losses["plain"]:
        torch.testing.assert_close(losses["plain"][k], losses["ckpt"][k], atol=1e-5, rtol=1e-5)
    assert grads["plain"].keys() == grads["ckpt"].keys()
    for n, g in grads["plain"].items():
        torch.testing.assert_close(grads["ckpt"][n], g, atol=1e-5, rtol=1e-4, msg=n)
    assert params_without_grad(ckpt) == []


def test_vision_width_must_equal_text_hidden(tiny_text_dir, tmp_path) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path, width=48)
    with pytest.raises(ConfigError, match="hidden_size"):
        BiIRRA.from_config(cfg)


def test_id_loss_needs_num_ids(tiny_text_dir, tmp_path) -> None:
    with pytest.raises(ConfigError, match="key 'id.use_id' is true but the number of training identities"):
        BiIRRA.from_config(tiny_config(tiny_text_dir, tmp_path, "id.use_id=true"))
