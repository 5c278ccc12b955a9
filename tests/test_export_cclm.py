"""tools/export_cclm.py: a checkpoint of this project, written in the CCLM-X2VLM layout, loads through model.resume."""
from __future__ import annotations

import pytest
import torch

from model.bi_irra import BiIRRA
from model.checkpoint import load_pretrained
from tests.model_fixtures import tiny_config
from tools.export_cclm import export

pytestmark = pytest.mark.usefixtures("one_thread")


def test_export_loads_like_the_pretrained_checkpoint(tiny_text_dir, tmp_path):
    cfg = tiny_config(tiny_text_dir, tmp_path)
    torch.manual_seed(0)
    trained = BiIRRA.from_config(cfg)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))  # weights no fresh model has
    torch.save({"model": trained.state_dict(), "config": cfg.to_dict()}, tmp_path / "run.pth")
    n = export(str(tmp_path / "run.pth"), str(tmp_path / "cclm.th"))

    saved = torch.load(tmp_path / "cclm.th", weights_only=True)["model"]
    assert len(saved) == n
    start = cfg.text_fusion_start_at
    assert f"text_encoder.encoder.layer.{start}.crossattention.self.query.weight" in saved  # fusion inside the text encoder
    assert not any(k.startswith(("cross_encoder.", "tl_text_proj.", "mim_head.", "vision_encoder.mask_token")) for k in saved)

    torch.manual_seed(1)
    fresh = BiIRRA.from_config(cfg)
    report = load_pretrained(fresh, str(tmp_path / "cclm.th"))
    assert report.unexpected == [] and report.unexpected_missing() == []
    assert report.copied == ["tl_text_proj.weight <- text_proj.weight", "tl_text_proj.bias <- text_proj.bias"]
    want, got = trained.state_dict(), fresh.state_dict()
    for key in want:
        if key.startswith(("tl_text_proj.", "mim_head.", "vision_encoder.mask_token")):
            continue
        assert torch.equal(want[key], got[key]), key
    assert torch.equal(got["tl_text_proj.weight"], want["text_proj.weight"])


def test_export_refuses_a_file_without_config(tmp_path):
    from utils.checkpoint import CheckpointError

    torch.save({"model": {"w": torch.zeros(1)}}, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="no 'model' and 'config'"):
        export(str(tmp_path / "bare.pth"), str(tmp_path / "out.th"))
