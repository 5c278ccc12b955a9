"""No duplicate work in a training step: each image version is encoded, and its fusion
keys/values computed, exactly once; the MIM teacher reuses the unmasked image."""
from __future__ import annotations

import pytest
import torch

from model import BiIRRALoss, build_model
from model.fusion import FusionEncoder
from tests.model_fixtures import make_batch, tiny_config
from tests.recompute import assert_recomputed, block_calls


pytestmark = pytest.mark.usefixtures("one_thread")


def count_work(model, cfg, batch, monkeypatch) -> tuple[list, list, list]:
    """Inputs of every vision-encoder call, text-encoder call and cross key/value computation
    in a training step (forward and backward); checks that checkpointed blocks, and only
    those, ran again in the backward pass."""
    vision, text, contexts = [], [], []
    model.vision_encoder.register_forward_hook(lambda m, args, out: vision.append((args, out)))
    model.text_encoder.register_forward_hook(lambda m, args, out: text.append(args[0]))
    original = FusionEncoder.cross_kv

    def cross_kv(self, context):
        contexts.append(context)
        return original(self, context)

    monkeypatch.setattr(FusionEncoder, "cross_kv", cross_kv)
    model.train()
    with block_calls(model) as (counts, phase):
        losses = BiIRRALoss(cfg)(model, batch)
        phase["backward"] = True
        sum(losses.values()).backward()
    assert_recomputed(counts, checkpointing=cfg.model.grad_checkpointing)
    return vision, text, contexts


@pytest.mark.parametrize("overrides", [[], ["itm.use_mask=false"], ["model.grad_checkpointing=true"]])
def test_each_image_encoded_once(tiny_text_dir, tmp_path, monkeypatch, overrides) -> None:
    torch.manual_seed(0)
    cfg = tiny_config(tiny_text_dir, tmp_path, *overrides)
    model, tok = build_model(cfg)
    batch = make_batch(cfg, tok, [0, 0, 1, 2])
    vision, text, contexts = count_work(model, cfg, batch, monkeypatch)
    # with grad checkpointing the backward pass re-runs checkpointed blocks (checked in count_work), not the encoder's forward
    masks = [args[1] for args, _ in vision]
    assert len(vision) == 2 and masks[0] is None and torch.equal(masks[1], batch["image_mask"])
    unmasked, masked = (out for _, out in vision)
    # text encoder: source, target, and the two MLM-masked captions, each once
    assert [t.data_ptr() for t in text] == [batch[k].data_ptr() for k in ("src_ids", "tgt_ids", "src_mlm_ids",
                                                                          "tgt_mlm_ids")]
    ptrs = [c.data_ptr() for c in contexts]
    assert ptrs.count(unmasked.data_ptr()) == 1
    assert ptrs.count(masked.data_ptr()) == (0 if "itm.use_mask=false" in overrides else 1)
    # the other two key/value computations are the D-MIM teacher's and student's captions
    assert len(contexts) - ptrs.count(unmasked.data_ptr()) - ptrs.count(masked.data_ptr()) == 2
