"""A "no match" threshold for search, calibrated on a labelled split and stored for reuse.

``calibrate`` evaluates the checkpoint on one split and language with the open-set trials
of engine/open_set.py (every query against the full gallery, and against the gallery
without its own person) and keeps, for the cosine score and for the re-ranked ITM score,
the threshold whose false-match rate on that split is the target (default 5%).

A calibration belongs to one model (``Retriever.fingerprint()``: the checkpoint's bytes, the
config it runs with, e.g. ``model.k_test`` and ``model.rerank_score``, and the evaluation
precision), one annotation file (its SHA-256), query language, split and target rate;
``CalibrationStore`` keeps any number of them in one JSON file: ``calibration.json`` in a
saved index folder, or ``<checkpoint>.calibration.json`` beside the checkpoint.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from data.annotations import annotation_path
from data.datasets import build_eval_data
from engine.evaluate import evaluate_language
from engine.retriever import file_sha256
from engine.open_set import rates, threshold_at
from utils.checkpoint import atomic_write
from utils.config import uses_tl_proj
from utils.errors import InputError

DEFAULT_FMR = 0.05


class CalibrationError(InputError):
    """A calibration that cannot be made (no labelled split, ...), reported as one line."""


@dataclass(frozen=True)
class Calibration:
    """Thresholds at a target false-match rate, with what they were measured on."""
    fingerprint: str  # Retriever.fingerprint() of the model
    data: str  # SHA-256 of the split's annotation file
    lang: str
    split: str
    fmr: float  # target false-match rate, a fraction
    k_test: int
    rerank_score: str
    queries: int  # labelled queries whose person is in the gallery
    thresholds: dict[str, float]  # per score: "cosine" (similarity), "itm" (re-ranked first hit; when k_test > 0)
    tmr: dict[str, float]  # true-match rate at the threshold on the calibration split, percent
    reached_fmr: dict[str, float]  # false-match rate reached on the calibration split, percent

    def key(self) -> tuple:
        return self.fingerprint, self.data, self.lang, self.split, self.fmr

    def threshold(self, reranked: bool) -> tuple[str, float]:
        """(score name, threshold) for a search with or without re-ranking."""
        score = "itm" if reranked and "itm" in self.thresholds else "cosine"
        return score, self.thresholds[score]


def labelled_queries(retriever, lang: str, split: str) -> Path:
    """The annotation file a calibration reads, or a one-line error naming it."""
    path = annotation_path(retriever.cfg, split, lang)
    if not path.is_file():
        raise CalibrationError(f"calibration needs labelled {lang} queries of the {split} split: {path} not found "
                               "(choose another split with --calibration-split)")
    return path


def calibration_key(retriever, lang: str, split: str, fmr: float) -> tuple:
    """What a stored calibration must match to be reused (``Calibration.key``)."""
    return retriever.fingerprint(), file_sha256(labelled_queries(retriever, lang, split)), lang, split, fmr


def calibrate(retriever, lang: str, split: str = "val", fmr: float = DEFAULT_FMR) -> Calibration:
    """Thresholds at ``fmr`` from ``split``'s ``lang`` queries with the retriever's model, config and device."""
    cfg = retriever.cfg
    if not 0 < fmr < 1:
        raise CalibrationError(f"the false-match rate must be between 0 and 1, got {fmr}")
    fingerprint, data_sha, *_ = calibration_key(retriever, lang, split, fmr)
    data = build_eval_data(cfg, split, lang, retriever.tokenizer)
    trials = evaluate_language(retriever.model, cfg, data, uses_tl_proj(cfg, lang), retriever.device,
                               open_set=True).open_set
    thresholds, tmr, reached = {}, {}, {}
    for score in ("cosine", "itm"):
        if f"{score}_absent" in trials:
            thresholds[score] = threshold_at(trials[f"{score}_absent"], fmr)
            tmr[score], reached[score] = rates(trials, score, thresholds[score])
    return Calibration(fingerprint, data_sha, lang, split, fmr, cfg.model.k_test, cfg.model.rerank_score,
                       len(trials["cosine_best"]), thresholds, tmr, reached)


class CalibrationStore:
    """Calibrations kept in one JSON file, looked up by what they were made for."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def beside(cls, checkpoint: str | os.PathLike) -> CalibrationStore:
        """``<checkpoint without suffix>.calibration.json``."""
        return cls(Path(checkpoint).with_suffix(".calibration.json"))

    def load(self) -> list[Calibration]:
        """The stored calibrations; entries of another layout (an older version) are left out, and
        dropped at the next :meth:`add`."""
        if not self.path.is_file():
            return []
        try:
            items = json.loads(self.path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise CalibrationError(f"{self.path}: unreadable calibration file ({e}); delete it to calibrate again") \
                from None
        fields = set(Calibration.__dataclass_fields__)
        return [Calibration(**item) for item in items if isinstance(item, dict) and set(item) == fields]

    def find(self, like: Calibration | tuple) -> Calibration | None:
        key = like.key() if isinstance(like, Calibration) else like
        return next((c for c in self.load() if c.key() == key), None)

    def add(self, cal: Calibration) -> None:
        items = [asdict(c) for c in self.load() if c.key() != cal.key()] + [asdict(cal)]
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(items, indent=1), encoding="utf-8"))


def stored_or_calibrate(retriever, store: CalibrationStore, lang: str, split: str = "val",
                        fmr: float = DEFAULT_FMR) -> tuple[Calibration, bool]:
    """(calibration, whether it was computed now): the stored one for this checkpoint and setup, else a new
    one, which is then stored."""
    found = store.find(calibration_key(retriever, lang, split, fmr))
    if found is not None:
        return found, False
    cal = calibrate(retriever, lang, split, fmr)
    store.add(cal)
    return cal, True


__all__ = ["Calibration", "CalibrationError", "CalibrationStore", "DEFAULT_FMR", "calibrate", "calibration_key",
           "labelled_queries", "stored_or_calibrate"]
