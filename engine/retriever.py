"""Text-to-image search with a trained Bi-IRRA checkpoint, for people rather than benchmarks.

    r = Retriever.from_checkpoint("runs/demo/best_en.pth")
    r.index("my_photos/", cache="cache/")          # folder (recursive) or list of image paths
    for path, score in r.search("a woman in a red coat", top_k=5):
        print(path, score)

Search follows the evaluation protocol (docs/design.md) for one query: the caption is cleaned
and tokenized like the training data, ranked against the gallery by cosine similarity,
and its top ``model.k_test`` images (at most the gallery size) are re-ranked by the ITM
head. Each hit has its cosine similarity and, for re-ranked images, its re-ranking score
(``Hit.itm``; ``model.rerank_score``: the raw match logit by default); ``Hit.score`` is the
one it was ranked by.

Language: any language code (XLM-R reads about 100 languages). Captions in the config's
target language and in ``data.tl_proj_languages`` go through ``tl_text_proj``; every other
language, including fr/de for a model trained on en/ch, goes through ``text_proj``, as
source-language captions do in training (``utils.config.uses_tl_proj``, as evaluation).
``lang`` defaults to the source language.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data.datasets import GalleryDataset
from data.text import clean_for, has_words, tokenize
from engine.amp import autocast, eval_dtype
from engine.rerank import rerank_fast
from model import build_model, load_finetuned
from utils.checkpoint import CheckpointError, load_safe, read_checkpoint, save_atomic
from utils.config import Config, apply_override, config_from_dict, uses_tl_proj
from utils.errors import InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CACHE_VERSION = 1  # bump when the cached content changes meaning


class RetrievalError(InputError):
    """A search problem (missing gallery, empty query, ...), reported as one line."""


@dataclass(frozen=True)
class Hit:
    """One search result: the image path (as indexed), its cosine similarity and, when it was
    re-ranked, its ITM score. Both are kept so a display never mixes the two scales in one
    column; ``score`` (the one it was ranked by) and unpacking as ``(path, score)`` keep
    older callers working."""
    path: str
    cosine: float
    itm: float | None = None

    @property
    def score(self) -> float:
        """The score the hit was ranked by: ITM when re-ranked, else cosine similarity."""
        return self.cosine if self.itm is None else self.itm

    def __iter__(self) -> Iterator:
        return iter((self.path, self.score))

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> str | float:
        return (self.path, self.score)[i]


@dataclass
class GalleryIndex:
    """Encoded gallery: image embeddings [G, 1+N, D] for re-ranking, features [G, E] for ranking."""
    paths: list[str]
    embeds: torch.Tensor
    feats: torch.Tensor


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive), sorted, so an index is reproducible."""
    root = Path(folder)
    if not root.is_dir():
        raise RetrievalError(f"gallery folder not found: {folder}")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise RetrievalError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return paths


def file_stamp(path: str | os.PathLike) -> list:
    """(absolute path, size, mtime in ns): changes whenever the file is replaced or edited."""
    st = os.stat(path)
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns]


class Retriever:
    """A fine-tuned model, its tokenizer and config, and an indexed gallery to search."""

    def __init__(self, model, tokenizer, cfg: Config, device: torch.device, stamp: list) -> None:
        self.model, self.tokenizer, self.cfg, self.device = model.eval(), tokenizer, cfg, device
        self.stamp = stamp  # identifies the checkpoint in gallery cache keys
        self.gallery: GalleryIndex | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                        overrides: Sequence[str] = ()) -> Retriever:
        """Model, tokenizer and config from a checkpoint written by training (best_<lang>.pth ...).

        The stored config names the text encoder folder and the vision JSON; relative paths
        in it are relative to the folder training ran in. ``overrides`` (``key.sub=value``)
        apply to the stored config, as ``main.py --resume`` applies them.
        """
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RetrievalError(f"device {device} requested but CUDA is not available")
        ckpt = read_checkpoint(path)
        if "config" not in ckpt:
            raise CheckpointError(f"{path}: stores no config (written by this project's training?)")
        raw = ckpt["config"]
        for override in overrides:
            apply_override(raw, override)
        cfg = config_from_dict(raw, source=f"{path} (stored config)")
        cfg.model.resume = ""  # the fine-tuned weights replace any pretrained ones
        for key, needed in (("text_encoder", cfg.text_encoder), ("vision_config", cfg.vision_config)):
            if not os.path.exists(needed):
                raise RetrievalError(f"{path}: its config's {key} '{needed}' does not exist here "
                                     "(relative paths are relative to where training ran)")
        model, tokenizer = build_model(cfg, num_ids=int(ckpt.get("num_ids", 0)))
        load_finetuned(model, str(path), ckpt)
        return cls(model.to(device), tokenizer, cfg, device, file_stamp(path))

    # ----------------------------------------------------------------------------- gallery
    def index(self, images: str | os.PathLike | Sequence[str | os.PathLike],
              cache: str | os.PathLike | None = None) -> int:
        """Encode a gallery (a folder, searched recursively, or a list of image paths); returns its size.

        With ``cache`` (a folder), the encoded gallery is stored as
        ``gallery-<key>.pt``, keyed by the checkpoint and every image's path, size and
        modification time, and reused when all of them are unchanged. Unreadable images
        follow ``data.on_bad_image`` of the stored config (error, or skip = blank image).
        """
        if isinstance(images, (str, os.PathLike)):
            paths = list_images(images)
        else:
            paths = [str(p) for p in images]
            if not paths:
                raise RetrievalError("empty list of gallery images")
            missing = next((p for p in paths if not os.path.isfile(p)), None)
            if missing is not None:
                raise RetrievalError(f"gallery image not found: {missing}")
        cache_file, key = None, ""
        if cache is not None:
            key = hashlib.sha256(json.dumps([CACHE_VERSION, self.stamp, [file_stamp(p) for p in paths]])
                                 .encode()).hexdigest()[:24]
            cache_file = Path(cache) / f"gallery-{key}.pt"
            self.gallery = self._load_cache(cache_file, key, paths)
            if self.gallery is not None:
                return len(paths)
        embeds, feats = self._encode(paths)
        self.gallery = GalleryIndex(paths, embeds, feats)
        if cache_file is not None:
            save_atomic({"version": CACHE_VERSION, "key": key, "paths": paths,
                         "embeds": embeds.cpu(), "feats": feats.cpu()}, cache_file)
        return len(paths)

    def _load_cache(self, file: Path, key: str, paths: list[str]) -> GalleryIndex | None:
        if not file.is_file():
            return None
        try:
            obj = load_safe(file)
        except CheckpointError as e:
            log.warning("ignoring unreadable gallery cache: %s", e)
            return None
        if not isinstance(obj, dict) or obj.get("key") != key or obj.get("paths") != paths:
            return None
        return GalleryIndex(paths, obj["embeds"].to(self.device), obj["feats"].to(self.device))

    @torch.no_grad()
    def _encode(self, paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Test-time transforms and batches of ``data.test_batch_size``, as in evaluation."""
        loader = DataLoader(GalleryDataset(self.cfg, paths), batch_size=self.cfg.data.test_batch_size,
                            num_workers=self.cfg.data.num_workers, shuffle=False)
        embeds, feats = [], []
        for images, _ in loader:
            with autocast(self.device, eval_dtype(self.cfg, self.device)):
                e = self.model.encode_image(images.to(self.device))
                f = self.model.image_feature(e)
            embeds.append(e.float())
            feats.append(f.float())
        return torch.cat(embeds), torch.cat(feats)

    # ------------------------------------------------------------------------------ search
    @torch.no_grad()
    def search(self, text: str, top_k: int = 10, rerank: bool = True, lang: str | None = None) -> list[Hit]:
        """The ``top_k`` best gallery images for a caption in ``lang`` (default: the source language).

        With ``rerank``, the top ``model.k_test`` images by cosine similarity are ordered
        by ITM score and carry that score as ``itm``; every hit carries its cosine similarity.
        """
        if self.gallery is None:
            raise RetrievalError("no gallery indexed: call index() first")
        if top_k < 1:
            raise RetrievalError(f"top_k must be at least 1, got {top_k}")
        lang = lang or self.cfg.data.source_language
        if not has_words(text):
            raise RetrievalError(f"the query is empty after cleaning (punctuation and symbols are removed): {text!r}")
        ids, mask = tokenize(self.tokenizer, [clean_for(self.cfg)(text)], self.cfg.experiment.text_length)
        length = int(mask.sum())
        ids, mask = ids[:, :length].to(self.device), mask[:, :length].to(self.device)
        g = self.gallery
        with autocast(self.device, eval_dtype(self.cfg, self.device)):
            embeds = self.model.encode_text(ids, mask)
            feat = self.model.text_feature(embeds, target=uses_tl_proj(self.cfg, lang))
        sim = (feat.float() @ g.feats.t())[0]
        order = torch.sort(sim, descending=True, stable=True).indices
        itm_of: dict[int, float] = {}
        k = min(self.cfg.model.k_test, len(g.paths))
        if rerank:
            text_embeds = embeds.float()
            itm = rerank_fast(self.model, lambda start, stop: (text_embeds, mask), order[None, :k], g.embeds,
                              chunk=1, batch_size=self.cfg.data.test_batch_size, device=self.device,
                              dtype=eval_dtype(self.cfg, self.device), score=self.cfg.model.rerank_score)[0]
            perm = torch.sort(itm, descending=True, stable=True).indices
            itm_of = dict(zip(order[:k].tolist(), itm.tolist()))
            order = torch.cat([order[:k][perm], order[k:]])
        cosine = sim.tolist()
        return [Hit(g.paths[i], cosine[i], itm_of.get(i)) for i in order[:top_k].tolist()]


__all__ = ["GalleryIndex", "Hit", "IMAGE_EXTENSIONS", "RetrievalError", "Retriever",
           "file_stamp", "list_images"]
