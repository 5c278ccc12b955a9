"""The vision-encoder JSON (``vision_config``): read and checked apart from the YAML,
because upstream ships it as a separate file with keys of its own."""
from __future__ import annotations

import json
import os
from typing import Any

from utils.config.report import ConfigError, did_you_mean, note_ignored

VISION_JSON_KEYS = {"vision_width": int, "patch_size": int, "depth": int, "num_heads": int,
                    "mlp_ratio": float, "drop_path_rate": float, "layer_scale_init": float, "ckpt": str, "image_res": int}


def load_vision_json(path: str, input_resolution: list[int] | None = None) -> dict[str, Any]:
    """Read and check the vision-encoder JSON; missing sizes default to BEiT-v2 base.

    Upstream's file may also hold ``ckpt`` (pre-training weights, which fine-tuning never
    loads: they come with model.resume), reported as ignored, and ``image_res``, which
    must agree with ``input_resolution`` (the size the encoder is built for) when given.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"vision_config: file not found: {path}")
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    # layer_scale_init: timm's beitv2_base value; pretrained checkpoints overwrite it, and a
    # larger value (0.1, BEiT-v2's pre-training value) lets a model trained from scratch use its blocks early
    out: dict[str, Any] = {"vision_width": 768, "patch_size": 16, "depth": 12, "num_heads": 12,
                           "mlp_ratio": 4.0, "drop_path_rate": 0.1, "layer_scale_init": 1e-5}
    for key, value in raw.items():
        if key not in VISION_JSON_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'{did_you_mean(key, VISION_JSON_KEYS)}")
        want = VISION_JSON_KEYS[key]
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or isinstance(value, bool):
            raise ConfigError(f"{path}: key '{key}' must be {want.__name__}, got {value!r}")
        out[key] = value
    if out["vision_width"] % out["num_heads"]:
        raise ConfigError(f"{path}: vision_width {out['vision_width']} is not divisible by num_heads {out['num_heads']}")
    if input_resolution is not None and out.get("image_res", input_resolution[0]) != input_resolution[0]:
        raise ConfigError(f"{path}: key 'image_res' is {out['image_res']} but experiment.input_resolution is "
                          f"{input_resolution}, which the vision encoder is built for; set it to {input_resolution[0]} "
                          "or remove it")
    if out.get("ckpt"):
        note_ignored(path, "ckpt", out["ckpt"], "the vision encoder's pretrained weights come with model.resume")
    return out
