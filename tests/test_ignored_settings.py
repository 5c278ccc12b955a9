"""No setting is accepted and then silently ignored: upstream keys either act, are refused
with one line, or (when they must keep loading unchanged) are reported once as ignored."""
from __future__ import annotations

import glob
import json

import pytest

import utils.config.report as config_report
from utils.config import ConfigError, load_config, load_vision_json


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    monkeypatch.setattr(config_report, "_NOTED", set())
    monkeypatch.delenv("RANK", raising=False)


@pytest.mark.parametrize("path", sorted(glob.glob("config/*.yaml")))
def test_every_shipped_config_loads_and_its_image_res_agrees(path, capsys):
    cfg = load_config(path)
    assert cfg.image_res == cfg.experiment.input_resolution[0]
    load_vision_json(cfg.vision_config, cfg.experiment.input_resolution)
    assert capsys.readouterr().err == ""  # nothing reported as ignored


@pytest.mark.parametrize("overrides, needle", [
    (["image_res=384"], "key 'image_res' is 384 but experiment.input_resolution is [224, 224], which the model is "
                        "built for; set image_res to its height 224"),
    (["experiment.input_resolution=[384,128]"], "key 'image_res' is 224 but experiment.input_resolution is [384, 128]"),
    (["use_clip_vit=true"], "key 'use_clip_vit' is not supported: Bi-IRRA uses BEiT-v2"),
    (["use_beit_v2=false"], "key 'use_beit_v2' must be true: BEiT-v2 is the only vision encoder"),
    (["schedule.save_every_steps=-1"], "key 'schedule.save_every_steps' must be >= 0"),
    (["schedule.steps_per_epoch=-1"], "key 'schedule.steps_per_epoch' must be >= 0"),
])
def test_settings_that_cannot_act_are_refused_in_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_config("config/config.yaml", overrides)
    assert str(e.value).startswith(f"config/config.yaml: {needle}")
    assert "\n" not in str(e.value)


def test_image_res_may_be_left_out_and_then_follows_the_input(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("experiment:\n  input_resolution: [384, 128]\n")
    assert load_config(p).image_res == 0  # not given: nothing to disagree with
    assert load_config("config/config.yaml", ["experiment.input_resolution=[384,128]", "image_res=384"]).image_res == 384


def test_distributed_url_other_than_env_is_reported_once(capsys, monkeypatch):
    load_config("config/config.yaml")
    assert capsys.readouterr().err == ""
    for _ in range(2):
        load_config("config/config.yaml", ["distributed.url=tcp://10.0.0.1:23456"])
    assert capsys.readouterr().err == ("warning: config/config.yaml: key 'distributed.url' ('tcp://10.0.0.1:23456') "
                                       "is ignored: processes join through torchrun's environment variables (env://)\n")
    monkeypatch.setattr(config_report, "_NOTED", set())
    monkeypatch.setenv("RANK", "1")  # other processes of a torchrun job stay quiet
    load_config("config/config.yaml", ["distributed.url=tcp://10.0.0.1:23456"])
    assert capsys.readouterr().err == ""


def vision(tmp_path, **extra) -> str:
    path = tmp_path / "vision.json"
    path.write_text(json.dumps({"vision_width": 768, "patch_size": 16, **extra}))
    return str(path)


def test_vision_json_ckpt_is_reported_once_and_image_res_must_agree(tmp_path, capsys):
    path = vision(tmp_path, ckpt="data/beitv2_base_patch16_224_pt1k.pth", image_res=224)
    for _ in range(2):
        assert load_vision_json(path, [224, 224])["ckpt"] == "data/beitv2_base_patch16_224_pt1k.pth"
    assert capsys.readouterr().err == (f"warning: {path}: key 'ckpt' ('data/beitv2_base_patch16_224_pt1k.pth') is "
                                       "ignored: the vision encoder's pretrained weights come with model.resume\n")
    with pytest.raises(ConfigError) as e:
        load_vision_json(vision(tmp_path, image_res=384), [224, 224])
    assert str(e.value) == (f"{tmp_path / 'vision.json'}: key 'image_res' is 384 but experiment.input_resolution is "
                            "[224, 224], which the vision encoder is built for; set it to 224 or remove it")


def test_the_model_reads_the_vision_json_against_the_input(tmp_path):
    cfg = load_config("config/config.yaml", [f"vision_config={vision(tmp_path, image_res=384)}"])
    with pytest.raises(ConfigError, match="key 'image_res' is 384"):
        cfg.vision_json()  # what model.architecture.resolve_architecture reads
