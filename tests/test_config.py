"""Config schema: shipped configs load, overrides are typed, every error class is one line."""
from __future__ import annotations

import pytest
import yaml

from utils.config import Config, ConfigError, check_paths, config_from_dict, load_config, load_vision_json, save_config


@pytest.mark.parametrize("path,text_length,batch", [("config/config.yaml", 77, 32), ("config/config_UFine.yaml", 168, 16)])
def test_shipped_configs_load_with_published_values(path, text_length, batch):
    cfg = load_config(path)
    assert cfg.experiment.text_length == text_length and cfg.data.batch_size == batch
    assert cfg.schedule.lr == 5e-5 and cfg.schedule.betas == [0.9, 0.98] and cfg.model.k_test == 256
    assert cfg.itm.weight == 4.0 and cfg.mim.mask_ratio == 0.5 and cfg.mlm.max_masks == 12
    assert cfg.text_num_hidden_layers == 18 and cfg.text_fusion_start_at == 12
    v = load_vision_json(cfg.vision_config)
    assert (v["vision_width"], v["patch_size"], v["depth"], v["num_heads"]) == (768, 16, 12, 12)


def test_upstream_style_file_loads_unchanged(tmp_path):
    raw = yaml.safe_load(open("config/config.yaml"))
    raw["schedule"]["lr"] = 1e-4  # a user's edit
    raw["data"]["target_language"] = "fr"
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    cfg = load_config(p)
    assert cfg.schedule.lr == 1e-4 and cfg.data.target_language == "fr"


def test_overrides_are_typed():
    cfg = load_config("config/config.yaml", ["data.batch_size=3", "schedule.lr=1e-3", "mim.use_mim=false",
                                             "experiment.input_resolution=[384,128]", "image_res=384",
                                             "model.saved_path=runs/x"])
    assert cfg.data.batch_size == 3 and cfg.schedule.lr == 1e-3 and cfg.mim.use_mim is False
    assert cfg.experiment.input_resolution == [384, 128] and cfg.model.saved_path == "runs/x"
    assert isinstance(cfg.schedule.lr, float)


@pytest.mark.parametrize("override,needle", [
    ("data.batchsize=3", "unknown key 'data.batchsize' (did you mean 'data.batch_size'?)"),
    ("data.batch_size=abc", "'data.batch_size' must be an int"),
    ("data.batch_size=0", "'data.batch_size' must be positive"),
    ("mim.use_mim=maybe", "'mim.use_mim' must be true or false"),
    ("data.source_language=e n", "'data.source_language' must hold language codes of annotation files"),
    ("data.eval_languages=[fr,../x]", "'data.eval_languages' must hold language codes"),
    ("data.tl_proj_languages=[en]", "'data.tl_proj_languages' must not hold the source language 'en'"),
    ("data.tl_proj_languages=[fr]", "'data.tl_proj_languages' names 'fr', which is not evaluated"),
    ("device=gpu", "'device' must be 'cuda', 'cuda:N', 'cpu' or a CUDA device number N, got 'gpu'"),
    ("device=-1", "'device' must be 'cuda', 'cuda:N', 'cpu' or a CUDA device number N, got -1"),
    ("device=cuda:x", "'device' must be"),
    ("device=true", "'device' must be str or int, got True"),
    ("resume=/x.th", "unknown key 'resume' (did you mean 'model.resume'?)"),
    ("batch_size=8", "unknown key 'batch_size' (did you mean 'data.batch_size'?)"),
    ("lr=1e-4", "unknown key 'lr' (did you mean 'schedule.lr'?)"),
    ("model.batch_size=8", "unknown key 'model.batch_size' (did you mean 'data.batch_size'?)"),
    ("batchsize=8", "unknown key 'batchsize' (did you mean 'data.batch_size'?)"),
    ("data.target_language=en", "'data.target_language' must differ"),
    ("mim.mask_ratio=1.5", "'mim.mask_ratio' must be in [0, 1]"),
    ("mlm.mask_prob=-0.1", "'mlm.mask_prob' must be in [0, 1]"),
    ("model.k_test=0", "'model.k_test' must be positive"),
    ("experiment.input_resolution=[224,100]", "must be divisible by patch_size"),
    ("schedule.betas=[0.9]", "'schedule.betas' must be two values"),
    ("data=3", "'data' is a section"),
    ("nosuchkey=1", "unknown key 'nosuchkey'"),
    ("data.on_bad_image=ignore", "'data.on_bad_image' must be 'error' or 'skip'"),
    ("text_fusion_start_at=18", "'text_fusion_start_at' must be in"),
])
def test_errors_are_one_line_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("config/config.yaml", [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_key_in_file_names_file_and_suggests(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("schedule:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'schedule.lrr' \(did you mean 'schedule.lr'\?\)"):
        load_config(p)


@pytest.mark.parametrize("text,suggestion", [
    ("resume: /path/to/CCLM-X2VLM\n", "unknown key 'resume' (did you mean 'model.resume'?)"),  # upstream README
    ("batch_size: 16\n", "unknown key 'batch_size' (did you mean 'data.batch_size'?)"),
    ("lr: 1.0e-4\n", "unknown key 'lr' (did you mean 'schedule.lr'?)"),
    ("data:\n  lr: 1.0e-4\n", "unknown key 'data.lr' (did you mean 'schedule.lr'?)"),
    ("weight: 2.0\n", "(did you mean 'itm.weight' or 'mim.weight' or 'sdm.weight' or 'id.weight'?)"),
    ("data:\n  batchsize: 16\n", "unknown key 'data.batchsize' (did you mean 'data.batch_size'?)"),
])
def test_unknown_key_suggestions_look_across_levels(tmp_path, text, suggestion):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).endswith(suggestion)


@pytest.mark.parametrize("device", [5, 0, "cuda", "cuda:3", "cpu"])
def test_device_forms_load_and_round_trip(tmp_path, device):
    raw = yaml.safe_load(open("config/config.yaml"))
    raw["device"] = device  # upstream's published config.yaml says `device: 5`
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    cfg = load_config(p)
    assert cfg.device == device and type(cfg.device) is type(device)
    assert config_from_dict(cfg.to_dict()).device == device


def test_invalid_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_check_paths_names_missing_paths(tmp_path):
    cfg = load_config("config/config.yaml", [f"anno_dir={tmp_path}/nope"])
    with pytest.raises(ConfigError, match="key 'anno_dir': annotation folder not found"):
        check_paths(cfg)
    (tmp_path / "annos").mkdir()
    cfg = load_config("config/config.yaml", [f"anno_dir={tmp_path}/annos"])
    with pytest.raises(ConfigError, match="train_reid_en.json"):
        check_paths(cfg)


def test_any_language_code_with_files_is_accepted(tmp_path):
    annos = tmp_path / "annos"
    annos.mkdir()
    for split in ("train", "test"):
        for lang in ("en", "es", "pt-BR"):
            (annos / f"{split}_reid_{lang}.json").write_text("[]")
    cfg = load_config("config/config.yaml", [f"anno_dir={annos}", "data.target_language=es",
                                             "data.eval_languages=[pt-BR]", f"image_dir={tmp_path}/nope"])
    with pytest.raises(ConfigError, match="key 'image_dir'"):  # every annotation file was found
        check_paths(cfg)
    cfg = load_config("config/config.yaml", [f"anno_dir={annos}", "data.target_language=jp"])
    with pytest.raises(ConfigError) as e:
        check_paths(cfg)
    assert str(e.value).endswith(f"key 'data.target_language': no annotation files for language 'jp' in {annos} "
                                 "(expected train_reid_jp.json; languages there: en, es, pt-BR)")
    cfg = load_config("config/config.yaml", [f"anno_dir={annos}", "data.target_language=es", "data.eval_languages=[de]"])
    with pytest.raises(ConfigError, match="key 'data.eval_languages': no annotation files for language 'de'"):
        check_paths(cfg)
    (annos / "test_reid_es.json").unlink()  # the language exists, one of its files does not
    cfg = load_config("config/config.yaml", [f"anno_dir={annos}", "data.target_language=es"])
    with pytest.raises(ConfigError, match=f"key 'anno_dir': annotation file not found: {annos}/test_reid_es.json"):
        check_paths(cfg)


def test_vision_json_errors(tmp_path):
    p = tmp_path / "v.json"
    p.write_text('{"vision_widht": 768}')
    with pytest.raises(ConfigError, match="unknown key 'vision_widht' \\(did you mean 'vision_width'\\?\\)"):
        load_vision_json(str(p))
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_vision_json(str(p))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("config/config.yaml", ["data.target_language=de"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    assert Config().to_dict().keys() == cfg.to_dict().keys()
