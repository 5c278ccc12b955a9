"""Where the run's inputs live, and the ``--check`` contract that they all exist: kept
apart from loading because only a run (not every config load) needs the files."""
from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

from utils.config.languages import query_languages
from utils.config.report import ConfigError
from utils.config.schema import Config
from utils.config.vision_json import load_vision_json
from utils.tensorboard import TENSORBOARD_PIN, tensorboard_missing

TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model")  # as model.text.TOKENIZER_FILES


def annotation_path(cfg: Config, split: str, lang: str) -> Path:
    return Path(cfg.anno_dir) / f"{split}_reid_{lang}.json"


def _missing(cfg: Config, key: str, path: str, kind: str) -> NoReturn:
    raise ConfigError(f"{cfg.source}: key '{key}': {kind} not found: {path}")


def _check_annotations(cfg: Config, need_train: bool) -> None:
    """Train files for the source and target languages (when training), test files for every evaluated one."""
    d = cfg.data
    needed = [("train", d.source_language), ("train", d.target_language)] if need_train else []
    needed += [("test", lang) for lang in query_languages(cfg)]
    for split, lang in needed:
        path = annotation_path(cfg, split, lang)
        if path.is_file():
            continue
        if not any(Path(cfg.anno_dir).glob(f"*_reid_{lang}.json")):
            key = ("data.source_language" if lang == d.source_language else
                   "data.target_language" if lang == d.target_language else "data.eval_languages")
            there = sorted({f.stem.rsplit("_reid_", 1)[1] for f in Path(cfg.anno_dir).glob("*_reid_*.json")})
            raise ConfigError(f"{cfg.source}: key '{key}': no annotation files for language '{lang}' in {cfg.anno_dir} "
                              f"(expected {path.name}; languages there: {', '.join(there) or 'none'})")
        _missing(cfg, "anno_dir", str(path), "annotation file")


def _check_text_encoder(cfg: Config) -> None:
    """The text encoder folder holds its config.json and a tokenizer."""
    if not os.path.isdir(cfg.text_encoder):
        _missing(cfg, "text_encoder", cfg.text_encoder, "text encoder folder")
    if not os.path.isfile(os.path.join(cfg.text_encoder, "config.json")):
        _missing(cfg, "text_encoder", os.path.join(cfg.text_encoder, "config.json"), "file")
    if not any(os.path.isfile(os.path.join(cfg.text_encoder, t)) for t in TOKENIZER_FILES):
        raise ConfigError(f"{cfg.source}: key 'text_encoder': no tokenizer in {cfg.text_encoder} "
                          f"(expected {' or '.join(TOKENIZER_FILES)})")


def check_paths(cfg: Config, need_train: bool = True) -> None:
    """Every file and folder the run will read exists (the ``--check`` contract).

    Annotation files: train for the source and the target language (when training), test
    for every evaluated language (``query_languages``). A language code with no file in
    ``anno_dir`` at all is reported against the key that names it. ``log.tensorboard``
    needs its optional package (a run checks here, before any training time is spent).
    """
    if not os.path.isdir(cfg.anno_dir):
        _missing(cfg, "anno_dir", cfg.anno_dir, "annotation folder")
    _check_annotations(cfg, need_train)
    if not os.path.isdir(cfg.image_dir):
        _missing(cfg, "image_dir", cfg.image_dir, "image folder")
    _check_text_encoder(cfg)
    load_vision_json(cfg.vision_config, cfg.experiment.input_resolution)
    if cfg.model.resume and not os.path.isfile(cfg.model.resume):
        _missing(cfg, "model.resume", cfg.model.resume, "checkpoint")
    if cfg.log.tensorboard and tensorboard_missing():
        raise ConfigError(f"{cfg.source}: key 'log.tensorboard' is true but the tensorboard package is not "
                          f"installed: pip install {TENSORBOARD_PIN}")
