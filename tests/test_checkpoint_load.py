"""Loading upstream CCLM-X2VLM / LUPerson layouts and this project's own checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import BiIRRA
from model.checkpoint import CheckpointError, load_finetuned, load_pretrained
from tests.model_fixtures import tiny_config, tiny_config_file
from tools.check_checkpoint import main as check_main

FRESH = ("vision_encoder.mask_token", "mim_head.", "tl_text_proj.")
START = 2  # text_fusion_start_at of the tiny config


def upstream_name(key: str, layout: str, infix: str) -> str:
    """Our parameter name -> the name the upstream checkpoint uses (inverse of the remap)."""
    if key.startswith("cross_encoder.layer."):
        i, rest = key[len("cross_encoder.layer."):].split(".", 1)
        if layout == "cross_encoder":
            return f"cross_encoder.{infix}encoder.layer.{i}.{rest}"
        return f"text_encoder.{infix}encoder.layer.{START + int(i)}.{rest}"
    if key.startswith("text_encoder."):
        return f"text_encoder.{infix}{key[len('text_encoder.'):]}"
    return key


def write_upstream(model: BiIRRA, path: Path, layout: str, infix: str, wrap: str | None, tied: bool = True,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the exact upstream key names; returns {our name: file tensor}."""
    g = torch.Generator().manual_seed(seed)
    state, expected = {}, {}
    for key, value in model.state_dict().items():
        if key.startswith(FRESH):
            continue
        tensor = torch.randn(value.shape, generator=g)
        expected[key] = tensor
        state[upstream_name(key, layout, infix)] = tensor
    word = f"text_encoder.{infix}embeddings.word_embeddings.weight"
    if tied:
        state["mlm_head.predictions.decoder.weight"] = state[word].clone()
        expected["mlm_head.predictions.decoder.weight"] = state[word]
    state[f"text_encoder.{infix}embeddings.position_ids"] = torch.arange(64)[None]
    for i in range(2):
        state[f"vision_encoder.blocks.{i}.attn.relative_position_index"] = torch.zeros(9, 9, dtype=torch.long)
    state["bbox_head.0.weight"] = torch.randn(4, 32, generator=g)
    state["bbox_head.0.bias"] = torch.randn(4, generator=g)
    torch.save({wrap: state, "epoch": 3} if wrap else state, path)
    return expected


@pytest.mark.parametrize("layout,infix,wrap", [
    ("cross_encoder", "", "model"),
    ("cross_encoder", "roberta.", None),
    ("text_encoder", "", None),
    ("text_encoder", "bert.", "model"),
    ("text_encoder", "roberta.", "state_dict"),
])
def test_upstream_layouts_load_exactly(tiny_text_dir, tmp_path, layout, infix, wrap) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path)
    expected = write_upstream(BiIRRA.from_config(cfg), tmp_path / "ckpt.th", layout, infix, wrap)
    model = BiIRRA.from_config(cfg)
    report = load_pretrained(model, str(tmp_path / "ckpt.th"))

    assert report.unexpected == ["bbox_head.0.bias", "bbox_head.0.weight"]
    assert report.missing == ["mim_head.0.bias", "mim_head.0.weight", "mim_head.1.bias", "mim_head.1.weight",
                              "mim_head.3.bias", "mim_head.3.weight", "vision_encoder.mask_token"]
    assert report.unexpected_missing() == []
    assert report.resized == []
    assert report.copied == ["tl_text_proj.weight <- text_proj.weight", "tl_text_proj.bias <- text_proj.bias"]
    assert report.mlm_decoder_tied is True
    own = model.state_dict()
    for key, tensor in expected.items():
        assert torch.equal(own[key], tensor), key
    assert torch.equal(own["tl_text_proj.weight"], expected["text_proj.weight"])
    assert model.mlm_head.is_tied_to(model.text_encoder.embeddings.word_embeddings)
    assert model.cross_encoder.layer[1].crossattention.self.key.weight.data_ptr() != \
        model.cross_encoder.layer[0].crossattention.self.key.weight.data_ptr()


def test_untied_decoder_stays_separate(tiny_text_dir, tmp_path) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path)
    expected = write_upstream(BiIRRA.from_config(cfg), tmp_path / "ckpt.th", "cross_encoder", "", "model", tied=False)
    model = BiIRRA.from_config(cfg)
    report = load_pretrained(model, str(tmp_path / "ckpt.th"))
    assert report.mlm_decoder_tied is False
    assert not model.mlm_head.is_tied_to(model.text_encoder.embeddings.word_embeddings)
    own = model.state_dict()
    assert torch.equal(own["mlm_head.predictions.decoder.weight"], expected["mlm_head.predictions.decoder.weight"])
    assert torch.equal(own["text_encoder.embeddings.word_embeddings.weight"],
                       expected["text_encoder.embeddings.word_embeddings.weight"])


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's interpolation helper warns about indexing style
def test_relative_position_tables_resized_per_axis_keep_cls_rows(tiny_text_dir, tmp_path) -> None:
    """A 14x14-grid table loads into a 24x8 grid (e.g. 384x128 at patch 16); cls rows kept."""
    cfg14 = tiny_config(tiny_text_dir, tmp_path, resolution=(112, 112))
    expected = write_upstream(BiIRRA.from_config(cfg14), tmp_path / "ckpt.th", "cross_encoder", "", "model")
    model = BiIRRA.from_config(tiny_config(tiny_text_dir, tmp_path, resolution=(192, 64)))
    assert model.vision_encoder.grid_size == (24, 8)
    report = load_pretrained(model, str(tmp_path / "ckpt.th"))
    key = "vision_encoder.blocks.0.attn.relative_position_bias_table"
    assert f"{key}: (732, 2) -> (708, 2)" in report.resized and len(report.resized) == 2
    for i in range(2):
        key = f"vision_encoder.blocks.{i}.attn.relative_position_bias_table"
        old, new = expected[key], model.state_dict()[key]
        assert new.shape == (47 * 15 + 3, 2)
        assert torch.equal(new[-3:], old[-3:])  # cls->token, token->cls, cls->cls
        torch.testing.assert_close(new[23 * 15 + 7], old[13 * 27 + 13])  # offset (0, 0) is kept
    images = torch.randn(1, 3, 192, 64)
    assert model.encode_image(images).shape == (1, 1 + 24 * 8, 32)


def test_unmappable_shape_is_an_error_naming_the_key(tiny_text_dir, tmp_path) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path)
    model = BiIRRA.from_config(cfg)
    write_upstream(model, tmp_path / "ckpt.th", "cross_encoder", "", "model")
    state = torch.load(tmp_path / "ckpt.th", weights_only=True)
    state["model"]["vision_proj.weight"] = torch.randn(8, 32)
    torch.save(state, tmp_path / "bad.th")
    with pytest.raises(CheckpointError, match="'vision_proj.weight' has shape \\(8, 32\\)") as info:
        load_pretrained(model, str(tmp_path / "bad.th"))
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(model, str(tmp_path / "nope.th"))


def test_finetuned_checkpoint_roundtrip(tiny_text_dir, tmp_path) -> None:
    cfg = tiny_config(tiny_text_dir, tmp_path)
    torch.manual_seed(0)
    trained = BiIRRA.from_config(cfg)
    trained.mlm_head.untie()
    with torch.no_grad():
        trained.mlm_head.predictions.decoder.weight.add_(1.0)
    torch.save({"model": trained.state_dict(), "optimizer": {"state": {}}, "epoch": 2, "config": cfg.to_dict()},
               tmp_path / "best.pth")
    fresh = BiIRRA.from_config(cfg)
    report = load_finetuned(fresh, str(tmp_path / "best.pth"))
    assert report.missing == [] and report.unexpected == [] and report.mlm_decoder_tied is False
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    other = BiIRRA.from_config(tiny_config(tiny_text_dir, tmp_path, "mim.use_mim=false"))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_finetuned(other, str(tmp_path / "best.pth"))


def test_check_checkpoint_tool(tiny_text_dir, tmp_path, capsys) -> None:
    cfg_path = tiny_config_file(tiny_text_dir, tmp_path / "run", f"model.resume={tmp_path / 'ckpt.th'}")
    from utils.config import load_config

    write_upstream(BiIRRA.from_config(load_config(cfg_path)), tmp_path / "ckpt.th", "text_encoder", "", "model")
    assert check_main(["--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "unexpected (2): bbox_head.0.bias, bbox_head.0.weight" in out and "total" in out

    state = torch.load(tmp_path / "ckpt.th", weights_only=True)
    del state["model"]["itm_head.0.weight"]
    torch.save(state, tmp_path / "partial.th")
    assert check_main(["--config", str(cfg_path), f"model.resume={tmp_path / 'partial.th'}"]) == 1
    assert "itm_head.0.weight" in capsys.readouterr().out

    assert check_main(["--config", str(cfg_path), f"model.resume={tmp_path / 'missing.th'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert check_main(["--config", str(cfg_path), "mim.no_such_key=1"]) == 2
