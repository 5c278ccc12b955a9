"""Typed configuration: YAML -> dataclasses, validated on load.

Every key of the published Bi-IRRA ``config.yaml`` has a field with the published default,
so a user's edited upstream file loads unchanged; keys that cannot act are refused or
reported as ignored (docs/reliability.md). Any problem (unknown key, wrong type, invalid
value, missing path) raises :class:`ConfigError`, a single line naming the file and the
dotted key; ``main.py`` prints it without a traceback.

The parts: ``schema`` (sections and their checks), ``loading`` (YAML, overrides, coercion),
``languages`` (query-language policy), ``paths`` (``--check``), ``vision_json`` (the
vision encoder's JSON) and ``report`` (errors and notes). This module re-exports them.
"""
from __future__ import annotations

from utils.config.languages import LANGUAGES, projection_name, query_languages, uses_tl_proj
from utils.config.loading import apply_override, config_from_dict, load_config, save_config
from utils.config.paths import annotation_path, check_paths
from utils.config.report import ConfigError, note_ignored
from utils.config.schema import Config, Mlm, Schedule, device_ok, validate
from utils.config.vision_json import load_vision_json

__all__ = ["Config", "ConfigError", "LANGUAGES", "Mlm", "Schedule", "load_config", "apply_override", "validate",
           "check_paths", "save_config", "config_from_dict", "annotation_path", "load_vision_json", "note_ignored",
           "projection_name", "query_languages", "uses_tl_proj", "device_ok"]
