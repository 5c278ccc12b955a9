"""XLM-R text encoder and tokenizer from a local Hugging Face folder (offline).

Only the first ``text_fusion_start_at`` layers are text layers; the remaining layers of
the published 18-layer stack are the fusion layers (model/fusion.py).
"""
from __future__ import annotations

import copy
import logging
import os

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, XLMRobertaConfig, XLMRobertaModel

from utils.checkpoint import CheckpointError, load_safe
from utils.config import ConfigError

log = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


TOKENIZER_FILES = ("tokenizer.json", "sentencepiece.bpe.model")


def build_tokenizer(folder: str) -> PreTrainedTokenizerBase:
    """The tokenizer stored in ``folder`` (never downloads)."""
    if not any(os.path.isfile(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        raise ConfigError(f"text_encoder: no tokenizer in {folder} (expected {' or '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # a malformed tokenizer.json fails inside transformers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"text_encoder: cannot load the tokenizer in {folder}: {first}") from None
    split_on_spaces_only(tokenizer)
    return tokenizer


def split_on_spaces_only(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the fast XLM-R tokenizer split words where SentencePiece does: at U+0020 only.

    The released code used the SentencePiece-backed tokenizer: its normalizer (the
    model's precompiled charsmap, which the fast tokenizer applies too) turns the other
    Unicode spaces into U+0020 or drops them, then only U+0020 separates words. The
    fast tokenizer's ``WhitespaceSplit`` also splits at any Unicode whitespace the
    charsmap leaves alone, which for xlm-roberta-base is U+0085 (NEL): ``a`` NEL ``b``
    became ``a b``, not ``a <unk> b``. Splitting at U+0020 (runs and edge spaces dropped, as SentencePiece's
    ``remove_extra_whitespaces``) gives the SentencePiece ids on every BMP code point
    (tests/test_model_text.py ``test_tokenizer_matches_sentencepiece_on_every_bmp_code_point``),
    at the same speed. Any other pre-tokenizer is left as it is.
    """
    import json

    from tokenizers import pre_tokenizers

    pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
    if not isinstance(pre, pre_tokenizers.Sequence):
        return
    steps = [step.get("type") for step in json.loads(pre.__getstate__()).get("pretokenizers", [])]
    if steps == ["WhitespaceSplit", "Metaspace"]:
        pre[0] = pre_tokenizers.Split(" ", "removed")


def load_text_config(folder: str) -> XLMRobertaConfig:
    """``{folder}/config.json``; ``layer_norm_eps`` etc. come from the file (xlm-roberta-base: 1e-5)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"text_encoder: config not found: {path}")
    try:
        config = XLMRobertaConfig.from_json_file(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"text_encoder: invalid config {path}: {str(e).splitlines()[0]}") from None
    config._attn_implementation = "sdpa"
    return config


def _read_weights(folder: str) -> dict[str, torch.Tensor] | None:
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        return load_safe(path)
    return None


class TextEncoder(XLMRobertaModel):
    """XLM-R embeddings + text layers; always called with an explicit padding mask.

    Passing the mask keeps attention bidirectional and padding-aware on every attention
    backend (some paths fall back to a causal mask when none is given).

    Position ids: upstream fine-tunes with X2-VLM's BERT classes, so token i reads row i
    of the position table (``arange(L)``) and no row is a frozen padding row; that is the
    default. ``roberta_position_ids`` keeps Hugging Face's RoBERTa ids (from
    ``padding_idx + 1``, pads on row ``padding_idx``, which gets no gradient).
    """

    def __init__(self, config: XLMRobertaConfig, roberta_position_ids: bool = False) -> None:
        super().__init__(config, add_pooling_layer=False)
        self.roberta_position_ids = roberta_position_ids
        if not roberta_position_ids:
            self.embeddings.position_embeddings.padding_idx = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        position_ids = None
        if not self.roberta_position_ids:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state


def build_text_encoder(folder: str, num_layers: int, roberta_position_ids: bool = False,
                       config: XLMRobertaConfig | None = None) -> TextEncoder:
    """Text encoder with ``num_layers`` layers, initialised from ``folder``'s weights when present.

    ``config``: ``folder``'s config.json when the caller has read it already (it is not changed).
    Hugging Face xlm-roberta-base weights carry ``roberta.`` prefixes and an ``lm_head``;
    only the embeddings and the first ``num_layers`` layers are taken from them.
    """
    config = load_text_config(folder) if config is None else copy.deepcopy(config)
    config.num_hidden_layers = num_layers
    encoder = TextEncoder(config, roberta_position_ids)
    weights = _read_weights(folder)
    if weights is not None:
        own = encoder.state_dict()
        picked = {}
        for key, value in weights.items():
            key = key.removeprefix("roberta.")
            if key in own:
                if own[key].shape != value.shape:
                    raise CheckpointError(f"{folder}: weight '{key}' has shape {tuple(value.shape)}, "
                                     f"expected {tuple(own[key].shape)}")
                picked[key] = value
        missing = sorted(set(own) - set(picked))
        encoder.load_state_dict(picked, strict=False)
        log.info("text encoder: loaded %d tensors from %s; missing %s", len(picked), folder, missing or "none")
    return encoder


__all__ = ["build_tokenizer", "split_on_spaces_only", "load_text_config", "build_text_encoder", "TextEncoder"]
