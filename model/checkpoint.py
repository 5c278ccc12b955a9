"""Loading of the pretrained CCLM-X2VLM / LUPerson checkpoints and of this project's own.

Documented remaps of a pretrained state dict onto :class:`BiIRRA` names:

* ``module.`` prefixes are stripped; a ``'model'`` or ``'state_dict'`` wrapper is unwrapped.
* ``text_encoder.roberta.*`` / ``text_encoder.bert.*`` (same for ``cross_encoder``) lose the infix.
* Fusion layers: ``cross_encoder.encoder.layer.i.*`` -> ``cross_encoder.layer.i.*`` and
  ``text_encoder.encoder.layer.{start+i}.*`` -> ``cross_encoder.layer.i.*`` (start =
  ``text_fusion_start_at``).
* ``vision_encoder.*`` (original BEiT-v2 names) go through timm's ``checkpoint_filter_fn``:
  relative position tables are resized per axis to this model's patch grid (the 3 cls
  rows at the end are kept); resized keys are reported.
* Derived buffers (``relative_position_index``, ``position_ids``) are dropped silently.
* ``tl_text_proj`` is always copied from ``text_proj`` (as upstream; a ``tl_text_proj`` in the file is replaced).
* The MLM decoder shares the word embeddings iff the checkpoint's decoder equals them
  (or the checkpoint has no decoder); otherwise it is a separate parameter.
Anything else not in the model (``bbox_head.*`` ...) is reported as unexpected.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch
from timm.models.beit import checkpoint_filter_fn

from utils.checkpoint import CheckpointError, load_safe

from .bi_irra import BiIRRA

log = logging.getLogger(__name__)

DERIVED_BUFFERS = ("relative_position_index", "position_ids")
FRESH_PREFIXES = ("vision_encoder.mask_token", "mim_head.", "tl_text_proj.", "classifier.")
DECODER = "mlm_head.predictions.decoder.weight"
WORD_EMB = "text_encoder.embeddings.word_embeddings.weight"


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    mlm_decoder_tied: bool | None = None

    def unexpected_missing(self) -> list[str]:
        """Missing keys other than the parameters a correct pretrained load leaves fresh."""
        return [k for k in self.missing if not k.startswith(FRESH_PREFIXES)]

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unexpected", "resized", "copied"):
            items = getattr(self, name)
            lines.append(f"{name} ({len(items)}): {', '.join(items) if items else '-'}")
        if self.mlm_decoder_tied is not None:
            lines.append(f"mlm decoder tied to word embeddings: {self.mlm_decoder_tied}")
        return "\n".join(lines)


def _read(path: str) -> dict[str, torch.Tensor]:
    obj = load_safe(path)
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (optionally under 'model' or 'state_dict')")
    return obj


def _rename(key: str, fusion_start: int) -> str:
    key = key.removeprefix("module.")
    key = re.sub(r"^(text_encoder|cross_encoder)\.(roberta|bert)\.", r"\1.", key)
    key = re.sub(r"^cross_encoder\.encoder\.layer\.", "cross_encoder.layer.", key)
    m = re.match(r"^text_encoder\.encoder\.layer\.(\d+)\.(.*)$", key)
    if m and int(m.group(1)) >= fusion_start:
        key = f"cross_encoder.layer.{int(m.group(1)) - fusion_start}.{m.group(2)}"
    return key


def upstream_name(name: str, fusion_start: int) -> str:
    """The released code's name of one of our parameters (inverse of the fusion-layer remap).

    Upstream keeps the fusion layers inside the text encoder (``text_encoder.encoder.layer.
    {fusion_start + i}``); rules written on upstream names (optimizer groups) use this.
    """
    m = re.match(r"^cross_encoder\.layer\.(\d+)\.(.*)$", name)
    return f"text_encoder.encoder.layer.{fusion_start + int(m.group(1))}.{m.group(2)}" if m else name


def _vision(sd: dict[str, torch.Tensor], model: BiIRRA, report: LoadReport) -> dict[str, torch.Tensor]:
    """Original BEiT-v2 keys through timm's filter (table resizing), names kept."""
    prefix = "vision_encoder."
    sub = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    try:
        out = checkpoint_filter_fn(sub, model.vision_encoder)
    except (ValueError, RuntimeError, AssertionError) as e:
        key = next((k for k in sub if k.endswith("relative_position_bias_table")), "vision_encoder")
        raise CheckpointError(f"cannot resize vision_encoder.{key}: {str(e).splitlines()[0]}") from None
    for k, v in out.items():
        if v.shape != sub[k].shape:
            report.resized.append(f"{prefix}{k}: {tuple(sub[k].shape)} -> {tuple(v.shape)}")
    return {prefix + k: v for k, v in out.items()}


def _apply_tying(model: BiIRRA, tied: bool) -> None:
    head = model.mlm_head
    word = model.text_encoder.embeddings.word_embeddings
    if tied and not head.is_tied_to(word):
        head.tie(word)
    elif not tied and head.is_tied_to(word):
        head.untie()


def load_pretrained(model: BiIRRA, path: str) -> LoadReport:
    """Load a CCLM-X2VLM / LUPerson checkpoint (either fusion layout); returns and logs the report."""
    raw = _read(path)
    start = model.arch.text_layers
    renamed: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if key.endswith(DERIVED_BUFFERS):
            continue
        new = _rename(key, start)
        if new in renamed:
            raise CheckpointError(f"{path}: keys map to the same parameter '{new}' (one is '{key}')")
        renamed[new] = value
    report = LoadReport()
    vision = _vision(renamed, model, report)
    renamed = {k: v for k, v in renamed.items() if not k.startswith("vision_encoder.")} | vision

    if model.mlm_head is not None:
        decoder = renamed.get(DECODER)
        tied = decoder is None or (WORD_EMB in renamed and torch.equal(decoder, renamed[WORD_EMB]))
        _apply_tying(model, tied)
        report.mlm_decoder_tied = tied
        if tied:
            renamed.pop(DECODER, None)
    if model.tl_text_proj is not None:  # upstream: always a copy of text_proj, even if the file has its own
        for name in ("weight", "bias"):
            if f"text_proj.{name}" in renamed:
                renamed[f"tl_text_proj.{name}"] = renamed[f"text_proj.{name}"]
                report.copied.append(f"tl_text_proj.{name} <- text_proj.{name}")

    own = model.state_dict()
    if report.mlm_decoder_tied:
        own.pop(DECODER, None)
    to_load = {}
    for key, value in renamed.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if value.shape != own[key].shape:
            raise CheckpointError(f"{path}: '{key}' has shape {tuple(value.shape)} in the checkpoint, "
                                  f"the model needs {tuple(own[key].shape)}")
        to_load[key] = value
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = sorted(set(own) - set(to_load))
    report.unexpected.sort()
    log.info("loaded pretrained checkpoint %s\n%s", path, report.summary())
    return report


def load_finetuned(model: BiIRRA, path: str, obj: dict | None = None) -> LoadReport:
    """Load the ``'model'`` entry of a checkpoint saved by this project; every key must match.

    ``obj`` is the already-read file when the caller needs its other entries too (resuming
    reads optimizer state from the same file), so it is read once.
    """
    if obj is None:
        obj = load_safe(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path}: not a Bi-IRRA checkpoint (no 'model' state dict)")
    state = obj["model"]
    report = LoadReport()
    if model.mlm_head is not None and DECODER in state and WORD_EMB in state:
        report.mlm_decoder_tied = bool(torch.equal(state[DECODER], state[WORD_EMB]))
        _apply_tying(model, report.mlm_decoder_tied)
    own = model.state_dict()
    report.missing = sorted(set(own) - set(state))
    report.unexpected = sorted(set(state) - set(own))
    if report.missing or report.unexpected:
        first = (report.missing or report.unexpected)[0]
        raise CheckpointError(f"{path}: does not match this model ({len(report.missing)} missing, "
                              f"{len(report.unexpected)} unexpected keys, e.g. '{first}')")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise CheckpointError(f"{path}: '{key}' has shape {tuple(value.shape)}, the model needs "
                                  f"{tuple(own[key].shape)}")
    model.load_state_dict(state)
    report.loaded = sorted(state)
    log.info("loaded fine-tuned checkpoint %s (%d tensors)", path, len(report.loaded))
    return report


__all__ = ["CheckpointError", "LoadReport", "load_pretrained", "load_finetuned", "upstream_name"]
