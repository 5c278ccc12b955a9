"""``main.py --check``: load and validate everything a run would read, cheaply, and summarise it.

Every annotation file is read by the very functions training uses (data/annotations.py),
the training batch sampler is built, the tokenizer and the text config are loaded, so an
input that training would reject fails here first, with the same one-line message. Images
are only looked up, not decoded: every one named must exist (with ``data.on_bad_image:
skip`` missing ones are a warning, as training would skip them).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from data.annotations import DataError, Entry, has_split, load_language, load_split, split_languages
from utils.config import Config

MISSING_SHOWN = 3  # missing image paths named in the message


@dataclass(frozen=True)
class SplitSummary:
    """What one (split, language) holds."""
    split: str
    lang: str
    images: int
    people: int
    captions: int

    @classmethod
    def of_entries(cls, split: str, lang: str, entries: list[Entry]) -> SplitSummary:
        """The counts of one annotation file's entries."""
        return cls(split, lang, len(entries), len({e.id for e in entries}), sum(len(e.captions) for e in entries))


def check_data(cfg: Config, need_train: bool) -> list[SplitSummary]:
    """Validate the annotation files (train pairs when ``need_train``, val and test per
    evaluated language), the images they name, the batch size and the text encoder's
    tokenizer and config; return one summary row per (split, language)."""
    from data.sampler import GlobalBatchSampler  # torch: imported only once the config is valid
    from model.text import build_tokenizer, load_text_config

    rows: list[SplitSummary] = []
    images: dict[str, None] = {}  # ordered set of every image path named
    if need_train:
        pairs = load_split(cfg, "train")
        people = len({p.id for p in pairs})
        for lang, caps in ((cfg.data.source_language, [p.src_captions for p in pairs]),
                           (cfg.data.target_language, [p.tgt_captions for p in pairs])):
            rows.append(SplitSummary("train", lang, len(pairs), people, sum(len(c) for c in caps)))
        images.update(dict.fromkeys(os.path.join(cfg.image_dir, p.file_path) for p in pairs))
        person = [p.id for p in pairs for _ in p.src_captions]
        try:  # one process; under torchrun the global batch is larger still
            GlobalBatchSampler(len(person), cfg.data.batch_size * cfg.distributed.virtual_processes, persons=person,
                               instances=cfg.data.num_instances, max_batches=cfg.schedule.steps_per_epoch)
        except ValueError as e:
            raise DataError(str(e)) from None
    for split in (["val"] if need_train and has_split(cfg, "val") else []) + ["test"]:
        for lang in split_languages(cfg, split):
            entries = load_language(cfg, split, lang)
            rows.append(SplitSummary.of_entries(split, lang, entries))
            images.update(dict.fromkeys(os.path.join(cfg.image_dir, e.file_path) for e in entries))
    check_images(cfg, list(images))
    build_tokenizer(cfg.text_encoder)
    load_text_config(cfg.text_encoder)
    return rows


def check_images(cfg: Config, paths: list[str]) -> None:
    """Every image exists; else one line with how many are missing and the first few."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return
    shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
    msg = f"{len(missing)} of {len(paths)} images named in the annotation files are missing under {cfg.image_dir}: {shown}"
    if cfg.data.on_bad_image == "error":
        raise DataError(msg)
    print(f"warning: {msg} (data.on_bad_image=skip: training skips them)", file=sys.stderr)


def format_summary(rows: list[SplitSummary]) -> str:
    """Plain-text table, one row per (split, language)."""
    head = f"{'split':<7}{'lang':<6}{'images':>9}{'people':>9}{'captions':>10}"
    return "\n".join([head, *(f"{r.split:<7}{r.lang:<6}{r.images:>9}{r.people:>9}{r.captions:>10}" for r in rows)])
