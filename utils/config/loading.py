"""From YAML (or a checkpoint's dict) to a validated :class:`Config`, and back: type
coercion with one-line errors naming the dotted key, ``key.sub=value`` overrides, and
did-you-mean hints for unknown keys. Any problem raises :class:`ConfigError`, which
``main.py`` prints without a traceback."""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from typing import Any

import yaml

from utils.config.report import ConfigError
from utils.config.schema import Config, validate


def _alternatives(tp: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``str | int``), or () for any other annotation."""
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else ()


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if _alternatives(tp):
        return " or ".join(_type_name(a) for a in _alternatives(tp))
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats; unions take the first member that fits."""
    origin = typing.get_origin(tp)
    if _alternatives(tp):
        for alt in _alternatives(tp):
            try:
                return _coerce(value, alt, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a {_type_name(tp)}, got {value!r}")
        return [_coerce(v, inner, where) for v in value]
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "5e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a float, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an int, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    section = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{section}' must be a mapping, got {raw!r}")
    fields = _fields(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggest_key(prefix, key, fields)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, f"{dotted}.", source)
        else:
            kwargs[key] = _coerce(value, tp, f"{source}: key '{dotted}'")
    return cls(**kwargs)


def _suggest_key(prefix: str, key: str, fields: typing.Iterable[str]) -> str:
    """The hint for an unknown ``prefix + key``, looking across levels as well as within the section.

    Upstream's README puts ``resume`` at the top level; users write ``lr`` or ``batch_size``
    without their section. So the same name at another level comes first (resume ->
    model.resume), else the closest name, of the same section (schedule.lrr -> schedule.lr)
    or of any level (batchsize -> data.batch_size); a tie goes to the same section.
    """
    everywhere = _all_keys(sections=True)
    same = [k for k in everywhere if _leaf(k) == key]
    if not same:
        siblings = {prefix + f for f in fields}
        scored = [(difflib.SequenceMatcher(None, key, _leaf(k)).ratio(), k in siblings, k) for k in everywhere]
        scored = [c for c in scored if c[0] >= (0.5 if c[1] else 0.6)]
        same = [max(scored)[2]] if scored else []
    return f" (did you mean {' or '.join(repr(k) for k in same)}?)" if same else ""


def _leaf(dotted: str) -> str:
    return dotted.rsplit(".", 1)[-1]


def _all_keys(cls: type = Config, prefix: str = "", sections: bool = False) -> list[str]:
    """Dotted names of every key (and, with ``sections``, of every section too)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for name in _fields(cls):
        if dataclasses.is_dataclass(hints[name]):
            keys += [prefix + name] if sections else []
            keys += _all_keys(hints[name], f"{prefix}{name}.", sections)
        else:
            keys.append(prefix + name)
    return keys


def apply_override(raw: dict[str, Any], override: str, source: str = "command line") -> None:
    """Apply one ``key.sub=value`` override to the raw mapping; the value is parsed as YAML."""
    if "=" not in override:
        raise ConfigError(f"{source}: override '{override}' must look like key.sub=value")
    dotted, text = override.split("=", 1)
    parts = dotted.strip().split(".")
    cls: type = Config
    node = raw
    for i, part in enumerate(parts):
        fields = _fields(cls)
        if part not in fields:
            prefix = "".join(f"{p}." for p in parts[:i])
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggest_key(prefix, part, fields)}")
        tp = typing.get_type_hints(cls)[part]
        last = i == len(parts) - 1
        if dataclasses.is_dataclass(tp):
            if last:
                raise ConfigError(f"{source}: '{dotted}' is a section; override one of its keys")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node, cls = node[part], tp
        elif not last:
            raise ConfigError(f"{source}: unknown key '{dotted}' ('{'.'.join(parts[:i + 1])}' is not a section)")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node[parts[-1]] = value


def load_config(path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load ``path`` (or the defaults when None), apply overrides, validate values."""
    raw: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    for ov in overrides:
        apply_override(raw, ov)
    cfg = _build(Config, raw, "", source)
    cfg.source = source
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically), so a run records what it used."""
    from utils.checkpoint import atomic_write  # imports torch; --check does not need it

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def config_from_dict(raw: dict[str, Any], source: str = "<checkpoint>") -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. stored in a checkpoint)."""
    cfg = _build(Config, raw, "", source)
    cfg.source = source
    validate(cfg)
    return cfg
