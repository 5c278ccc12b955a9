"""Typed configuration: YAML -> dataclasses, validated on load.

Every key of the published Bi-IRRA ``config.yaml`` has a field here with the published
default (except ``image_res``: unset, it follows the input resolution), so a user's edited
upstream file loads unchanged; keys that cannot act are refused or reported as ignored
(docs/reliability.md). Any problem (unknown key,
wrong type, invalid value, missing path) raises :class:`ConfigError` whose message is a
single line naming the file and the dotted key; ``main.py`` prints it without a traceback.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.errors import InputError

LANGUAGES = ("en", "ch", "fr", "de")  # the languages of the published annotation files; others work when their files exist
LANGUAGE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # becomes part of a file name: {split}_reid_{code}.json

AMP_MODES = ("fp16", "bf16", "fp32")  # schedule.amp ("off" would read as false in YAML)
RERANK_SCORES = ("logit", "log_odds")  # model.rerank_score
ITM_NEGATIVES = ("hard", "random")  # itm.negatives


class ConfigError(InputError):
    """A configuration problem, reported as one line."""


@dataclass
class Misc:
    seed: int = 1
    deterministic: bool = False  # PyTorch deterministic algorithms (slower on CUDA)


@dataclass
class Experiment:
    input_resolution: list[int] = field(default_factory=lambda: [224, 224])
    text_length: int = 77


@dataclass
class Schedule:
    lr: float = 5e-5
    epoch: int = 10
    epoch_warmup: int = 1
    lr_start: float = 1e-6
    lr_end: float = 5e-6
    weight_decay: float = 0.02
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    ratio_factor: float = 1.0
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    skip_nonfinite: bool = False  # skip (and count) steps with a non-finite loss instead of stopping
    amp: str = "fp16"  # CUDA training precision: fp16 (autocast + GradScaler, upstream) | bf16 | fp32
    save_every_steps: int = 0  # also write checkpoint_last.pth every N steps inside an epoch; 0 = end of epoch only
    steps_per_epoch: int = 0  # N > 0: an epoch ends after N steps (evaluation, checkpoint, schedule); 0 = one full pass


@dataclass
class Model:
    resume: str = ""
    saved_path: str = "runs/bi_irra"
    use_gather: bool = True
    embed_dim: int = 256
    temp: float = 0.07
    k_test: int = 256
    grad_checkpointing: bool = False
    gather_with_grad: bool = False  # ITC/SDM gather returns the other processes' gradients too (upstream: local slice only)
    roberta_position_ids: bool = False  # text position ids from padding_idx + 1 (HF/CCLM); upstream fine-tunes with arange(L)
    rerank_score: str = "logit"  # re-rank by the raw match logit (upstream) | log_odds (match minus non-match logit)
    eval_amp: bool = False  # evaluate under the training autocast dtype on CUDA (upstream: fp32)


@dataclass
class Itm:
    weight: float = 4.0
    use_mask: bool = True
    negatives: str = "hard"  # hard: drawn by ITC similarity (upstream) | random: any other person, uniformly


@dataclass
class Mim:
    weight: float = 4.0
    use_mim: bool = True
    mask_ratio: float = 0.5
    per_sample_mask: bool = False  # one block mask per sample (upstream: one per batch)


@dataclass
class Mlm:
    is_mlm: bool = True
    mask_prob: float = 0.4
    max_masks: int = 12
    skipgram_prb: float = 0.2
    skipgram_size: int = 3
    protect_special: bool = False  # never mask <s>/</s> nor draw special tokens as replacements (upstream does)


@dataclass
class Sdm:
    use_sdm: bool = False
    weight: float = 1.0


@dataclass
class Id:
    use_id: bool = False
    weight: float = 1.0


@dataclass
class Log:
    print_period: int = 50


@dataclass
class Data:
    batch_size: int = 32
    test_batch_size: int = 128
    num_workers: int = 8
    source_language: str = "en"
    target_language: str = "ch"
    on_bad_image: str = "error"  # error | skip
    num_instances: int = 0  # K > 0: identity-balanced batches of K samples per person; 0: random (upstream)
    unicode_cleaning: bool = False  # captions: every Unicode punctuation/symbol -> space (upstream: ten ASCII characters)
    eval_languages: list[str] = field(default_factory=list)  # query languages evaluated; empty = source and target
    tl_proj_languages: list[str] = field(default_factory=list)  # extra query languages that use tl_text_proj


@dataclass
class Distributed:
    backend: str = "nccl"
    url: str = "env://"  # upstream's init_method; processes always join through torchrun's env://
    virtual_processes: int = 1  # V > 1: each process runs V virtual processes per optimizer step


@dataclass
class Config:
    device: str | int = "cuda"  # cuda | cuda:N | cpu | N (upstream's form: CUDA device N); torchrun: LOCAL_RANK decides
    misc: Misc = field(default_factory=Misc)
    experiment: Experiment = field(default_factory=Experiment)
    schedule: Schedule = field(default_factory=Schedule)
    model: Model = field(default_factory=Model)
    itm: Itm = field(default_factory=Itm)
    mim: Mim = field(default_factory=Mim)
    mlm: Mlm = field(default_factory=Mlm)
    sdm: Sdm = field(default_factory=Sdm)
    id: Id = field(default_factory=Id)
    vision_config: str = "config/config_beit2_base.json"
    use_clip_vit: bool = False  # upstream's encoder switches: only the BEiT-v2 setting is accepted
    use_beit_v2: bool = True
    image_res: int = 0  # upstream's square image size (published: 224); when set, must equal the input height
    patch_size: int = 16
    text_encoder: str = "data/xlm-roberta-base"
    text_num_hidden_layers: int = 18
    text_fusion_start_at: int = 12
    use_one_cl_proj_only: bool = False
    log: Log = field(default_factory=Log)
    data: Data = field(default_factory=Data)
    distributed: Distributed = field(default_factory=Distributed)
    anno_dir: str = "data/CUHK-PEDES/annos"
    image_dir: str = "data/CUHK-PEDES/imgs"
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def vision_json(self) -> dict[str, Any]:
        """The parsed ``vision_config`` JSON (sizes of the vision encoder)."""
        return load_vision_json(self.vision_config, self.experiment.input_resolution)


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
            raise ConfigError(f"{path}: unknown key '{key}'{_suggest(key, VISION_JSON_KEYS)}")
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


_NOTED: set[tuple[str, str]] = set()


def note_ignored(where: str, key: str, value: Any, why: str) -> None:
    """Say once per process, on rank 0 only, that an upstream key which must keep loading
    unchanged is not used (so a value the user set does not pass silently)."""
    if (key, repr(value)) in _NOTED or os.environ.get("RANK", "0") != "0":
        return
    _NOTED.add((key, repr(value)))
    print(f"warning: {where}: key '{key}' ({value!r}) is ignored: {why}", file=sys.stderr)


def _suggest(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


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


def _check(ok: bool, cfg: Config, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{cfg.source}: key '{key}' {msg}")


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express."""
    d, s, e = cfg.data, cfg.schedule, cfg.experiment
    codes = [("source_language", d.source_language), ("target_language", d.target_language)]
    codes += [(key, lang) for key in ("eval_languages", "tl_proj_languages") for lang in getattr(d, key)]
    for key, lang in codes:
        _check(bool(LANGUAGE_CODE.fullmatch(lang)), cfg, f"data.{key}",
               f"must hold language codes of annotation files ({', '.join(LANGUAGES)} are published), got '{lang}'")
    _check(d.source_language != d.target_language, cfg, "data.target_language",
           f"must differ from data.source_language ('{d.source_language}')")
    _check(d.source_language not in d.tl_proj_languages, cfg, "data.tl_proj_languages",
           f"must not hold the source language '{d.source_language}' (its queries use text_proj)")
    for lang in d.tl_proj_languages:
        _check(lang in query_languages(cfg), cfg, "data.tl_proj_languages",
               f"names '{lang}', which is not evaluated; add it to data.eval_languages")
    _check(d.on_bad_image in ("error", "skip"), cfg, "data.on_bad_image", f"must be 'error' or 'skip', got '{d.on_bad_image}'")
    for key in ("batch_size", "test_batch_size"):
        _check(getattr(d, key) > 0, cfg, f"data.{key}", f"must be positive, got {getattr(d, key)}")
    _check(d.num_workers >= 0, cfg, "data.num_workers", f"must be >= 0, got {d.num_workers}")
    _check(d.num_instances >= 0 and (d.num_instances == 0 or d.batch_size % d.num_instances == 0), cfg,
           "data.num_instances", f"must be 0 or divide data.batch_size ({d.batch_size}), got {d.num_instances}")
    _check(device_ok(cfg.device), cfg, "device",
           f"must be 'cuda', 'cuda:N', 'cpu' or a CUDA device number N, got {cfg.device!r}")
    _check(len(e.input_resolution) == 2 and all(v > 0 for v in e.input_resolution), cfg,
           "experiment.input_resolution", f"must be [height, width] of positive ints, got {e.input_resolution}")
    for v in e.input_resolution:
        _check(v % cfg.patch_size == 0, cfg, "experiment.input_resolution",
               f"{e.input_resolution} must be divisible by patch_size {cfg.patch_size}")
    _check(e.text_length >= 4, cfg, "experiment.text_length", f"must be >= 4, got {e.text_length}")
    for key in ("lr", "lr_start", "lr_end", "eps"):
        _check(getattr(s, key) >= 0, cfg, f"schedule.{key}", f"must be >= 0, got {getattr(s, key)}")
    _check(s.lr > 0, cfg, "schedule.lr", f"must be positive, got {s.lr}")
    _check(s.epoch > 0, cfg, "schedule.epoch", f"must be positive, got {s.epoch}")
    _check(0 <= s.epoch_warmup <= s.epoch, cfg, "schedule.epoch_warmup", f"must be in [0, schedule.epoch], got {s.epoch_warmup}")
    _check(s.weight_decay >= 0, cfg, "schedule.weight_decay", f"must be >= 0, got {s.weight_decay}")
    _check(len(s.betas) == 2 and all(0 <= b < 1 for b in s.betas), cfg, "schedule.betas",
           f"must be two values in [0, 1), got {s.betas}")
    _check(s.ratio_factor > 0, cfg, "schedule.ratio_factor", f"must be positive, got {s.ratio_factor}")
    _check(s.grad_clip >= 0, cfg, "schedule.grad_clip", f"must be >= 0, got {s.grad_clip}")
    _check(cfg.distributed.virtual_processes >= 1, cfg, "distributed.virtual_processes",
           f"must be >= 1, got {cfg.distributed.virtual_processes}")
    _check(s.amp in AMP_MODES, cfg, "schedule.amp", f"must be one of {', '.join(AMP_MODES)}, got '{s.amp}'")
    m = cfg.model
    _check(m.rerank_score in RERANK_SCORES, cfg, "model.rerank_score",
           f"must be one of {', '.join(RERANK_SCORES)}, got '{m.rerank_score}'")
    _check(cfg.itm.negatives in ITM_NEGATIVES, cfg, "itm.negatives",
           f"must be one of {', '.join(ITM_NEGATIVES)}, got '{cfg.itm.negatives}'")
    _check(m.k_test > 0, cfg, "model.k_test", f"must be positive, got {m.k_test}")
    _check(m.embed_dim > 0, cfg, "model.embed_dim", f"must be positive, got {m.embed_dim}")
    _check(m.temp > 0, cfg, "model.temp", f"must be positive, got {m.temp}")
    _check(bool(m.saved_path), cfg, "model.saved_path", "must name an output folder")
    for key in ("mim.mask_ratio", "mlm.mask_prob", "mlm.skipgram_prb"):
        sec, name = key.split(".")
        v = getattr(getattr(cfg, sec), name)
        _check(0 <= v <= 1, cfg, key, f"must be in [0, 1], got {v}")
    _check(cfg.mlm.max_masks > 0, cfg, "mlm.max_masks", f"must be positive, got {cfg.mlm.max_masks}")
    _check(cfg.mlm.skipgram_size >= 1, cfg, "mlm.skipgram_size", f"must be >= 1, got {cfg.mlm.skipgram_size}")
    for key in ("itm.weight", "mim.weight", "sdm.weight", "id.weight"):
        sec, name = key.split(".")
        v = getattr(getattr(cfg, sec), name)
        _check(v >= 0, cfg, key, f"must be >= 0, got {v}")
    _check(0 < cfg.text_fusion_start_at < cfg.text_num_hidden_layers, cfg, "text_fusion_start_at",
           f"must be in (0, text_num_hidden_layers={cfg.text_num_hidden_layers}), got {cfg.text_fusion_start_at}")
    _check(not cfg.use_clip_vit, cfg, "use_clip_vit", "is not supported: Bi-IRRA uses BEiT-v2 (set use_beit_v2: true)")
    _check(cfg.use_beit_v2, cfg, "use_beit_v2", "must be true: BEiT-v2 is the only vision encoder")
    _check(cfg.image_res in (0, e.input_resolution[0]), cfg, "image_res",
           f"is {cfg.image_res} but experiment.input_resolution is {e.input_resolution}, which the model is built "
           f"for; set image_res to its height {e.input_resolution[0]}")
    if cfg.distributed.url != "env://":
        note_ignored(cfg.source, "distributed.url", cfg.distributed.url,
                     "processes join through torchrun's environment variables (env://)")
    _check(s.save_every_steps >= 0, cfg, "schedule.save_every_steps",
           f"must be >= 0 (0: checkpoint at the end of each epoch only), got {s.save_every_steps}")
    _check(s.steps_per_epoch >= 0, cfg, "schedule.steps_per_epoch",
           f"must be >= 0 (0: one full pass over the training set), got {s.steps_per_epoch}")
    _check(cfg.patch_size > 0, cfg, "patch_size", f"must be positive, got {cfg.patch_size}")
    _check(cfg.log.print_period > 0, cfg, "log.print_period", f"must be positive, got {cfg.log.print_period}")


def device_ok(device: str | int) -> bool:
    """``device`` is cuda, cuda:N, cpu or a CUDA device number (upstream's ``device: 5``)."""
    if isinstance(device, int):
        return device >= 0
    return device in ("cuda", "cpu") or bool(re.fullmatch(r"cuda:\d+", device))


def query_languages(cfg: Config) -> list[str]:
    """Every evaluated query language: the source and the target (they select the best
    checkpoints), then ``data.eval_languages`` in the order given."""
    d = cfg.data
    return list(dict.fromkeys([d.source_language, d.target_language, *d.eval_languages]))


def uses_tl_proj(cfg: Config, lang: str) -> bool:
    """Whether ``lang``'s queries use ``tl_text_proj``: the target language and ``data.tl_proj_languages``.

    Other languages use ``text_proj``, the projection of the pretrained checkpoint (CCLM
    pretrains it on many languages) and of the source language; ``tl_text_proj`` is a copy
    fine-tuned on the target language alone.
    """
    return lang == cfg.data.target_language or lang in cfg.data.tl_proj_languages


def annotation_path(cfg: Config, split: str, lang: str) -> Path:
    return Path(cfg.anno_dir) / f"{split}_reid_{lang}.json"


def check_paths(cfg: Config, need_train: bool = True) -> None:
    """Every file and folder the run will read exists (the ``--check`` contract).

    Annotation files: train for the source and the target language (when training), test
    for every evaluated language (``query_languages``). A language code with no file in
    ``anno_dir`` at all is reported against the key that names it.
    """
    def missing(key: str, path: str, kind: str) -> None:
        raise ConfigError(f"{cfg.source}: key '{key}': {kind} not found: {path}")

    if not os.path.isdir(cfg.anno_dir):
        missing("anno_dir", cfg.anno_dir, "annotation folder")
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
        missing("anno_dir", str(path), "annotation file")
    if not os.path.isdir(cfg.image_dir):
        missing("image_dir", cfg.image_dir, "image folder")
    if not os.path.isdir(cfg.text_encoder):
        missing("text_encoder", cfg.text_encoder, "text encoder folder")
    if not os.path.isfile(os.path.join(cfg.text_encoder, "config.json")):
        missing("text_encoder", os.path.join(cfg.text_encoder, "config.json"), "file")
    tok_files = ("tokenizer.json", "sentencepiece.bpe.model")  # as model.text.TOKENIZER_FILES
    if not any(os.path.isfile(os.path.join(cfg.text_encoder, t)) for t in tok_files):
        raise ConfigError(f"{cfg.source}: key 'text_encoder': no tokenizer in {cfg.text_encoder} "
                          f"(expected {' or '.join(tok_files)})")
    load_vision_json(cfg.vision_config, cfg.experiment.input_resolution)
    if cfg.model.resume and not os.path.isfile(cfg.model.resume):
        missing("model.resume", cfg.model.resume, "checkpoint")


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


__all__ = ["Config", "ConfigError", "LANGUAGES", "load_config", "apply_override", "validate", "check_paths",
           "save_config", "config_from_dict", "annotation_path", "load_vision_json", "query_languages", "uses_tl_proj",
           "device_ok"]
