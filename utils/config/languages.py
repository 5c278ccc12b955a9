"""Language policy: which query languages are evaluated, and which of them use ``tl_text_proj``.
One place, so training, evaluation, ``--check`` and the config checks agree."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from utils.config.schema import Config, Data

LANGUAGES = ("en", "ch", "fr", "de")  # the languages of the published annotation files; others work when their files exist
LANGUAGE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # becomes part of a file name: {split}_reid_{code}.json


def evaluated_languages(data: Data) -> list[str]:
    """:func:`query_languages` from the ``data`` section alone (what its own checks need)."""
    return list(dict.fromkeys([data.source_language, data.target_language, *data.eval_languages]))


def query_languages(cfg: Config) -> list[str]:
    """Every evaluated query language: the source and the target (they select the best
    checkpoints), then ``data.eval_languages`` in the order given."""
    return evaluated_languages(cfg.data)


def projection_name(cfg: Config, lang: str) -> str:
    """The projection ``lang``'s queries go through (see :func:`uses_tl_proj`), as reports name it."""
    return "tl_text_proj" if uses_tl_proj(cfg, lang) else "text_proj"


def uses_tl_proj(cfg: Config, lang: str) -> bool:
    """Whether ``lang``'s queries use ``tl_text_proj``: the target language and ``data.tl_proj_languages``.

    Other languages use ``text_proj``, the projection of the pretrained checkpoint (CCLM
    pretrains it on many languages) and of the source language; ``tl_text_proj`` is a copy
    fine-tuned on the target language alone.
    """
    return lang == cfg.data.target_language or lang in cfg.data.tl_proj_languages
