"""Bi-IRRA model package: ``build_model(cfg)`` returns the model and its tokenizer."""
from __future__ import annotations

import logging

from transformers import PreTrainedTokenizerBase

from utils.config import Config, ConfigError
from .architecture import Architecture, resolve_architecture
from .bi_irra import BiIRRA
from .checkpoint import CheckpointError, LoadReport, load_finetuned, load_pretrained
from .objective import BiIRRALoss
from .text import build_tokenizer
from .vision import BlockMaskGenerator

log = logging.getLogger(__name__)


def build_model(cfg: Config, num_ids: int = 0,
                tokenizer: PreTrainedTokenizerBase | None = None) -> tuple[BiIRRA, PreTrainedTokenizerBase]:
    """Model and tokenizer from ``cfg.text_encoder``; loads ``cfg.model.resume`` when set.

    The architecture (vision JSON, text config.json, optional heads) is resolved here,
    once (model.architecture); the objective that trains the model is ``BiIRRALoss(cfg)``.

    ``num_ids`` (number of training identities) is only needed with ``id.use_id``;
    ``tokenizer``, when the caller already loaded it, is reused instead of read again.
    """
    tokenizer = build_tokenizer(cfg.text_encoder) if tokenizer is None else tokenizer
    model = BiIRRA(resolve_architecture(cfg, num_ids))
    vocab = model.text_encoder.config.vocab_size
    if len(tokenizer) > vocab:
        raise ConfigError(f"{cfg.source}: key 'text_encoder': tokenizer has {len(tokenizer)} tokens but "
                          f"config.json's vocab_size is {vocab}")
    model.load_report = None  # what the pretrained load did, for the run card (engine/run_card.py)
    if cfg.model.resume:
        model.load_report = load_pretrained(model, cfg.model.resume)
    else:
        log.info("model.resume is empty: no pretrained checkpoint loaded")
    return model, tokenizer


__all__ = ["Architecture", "BiIRRA", "BiIRRALoss", "resolve_architecture", "build_model", "build_tokenizer", "BlockMaskGenerator", "CheckpointError", "LoadReport",
           "load_pretrained", "load_finetuned"]
