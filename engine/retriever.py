"""Text-to-image search with a trained Bi-IRRA checkpoint, for people rather than benchmarks.

    r = Retriever.from_checkpoint("runs/demo/best_en.pth")
    r.index("my_photos/")                      # in memory: a folder (recursive) or a list of image paths
    r.open_index("my_index/", "my_photos/")    # or saved on disk, updated, and reused (engine/gallery_index.py)
    for hit in r.search("a woman in a red coat", top_k=5):
        print(hit.path, hit.itm, hit.cosine)

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
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from data.datasets import GalleryDataset
from data.text import has_words, tokenize_caption
from engine.amp import autocast, eval_dtype
from engine.gallery_index import SavedIndex, SyncReport, sync_index, top_rows
from engine.rerank import rerank_fast
from model import build_model, load_finetuned
from utils.checkpoint import CheckpointError, read_checkpoint
from utils.config import Config, apply_override, config_from_dict, uses_tl_proj
from utils.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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
class MemoryGallery:
    """A gallery encoded in memory: image tokens [G, 1+N, D] for re-ranking, features [G, E] for ranking."""
    image_paths: list[str]
    embeds: torch.Tensor
    feats: torch.Tensor

    def __len__(self) -> int:
        return len(self.image_paths)

    def top(self, query: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cosine similarities, rows) of the ``n`` best images, as ``SavedIndex.top``."""
        return top_rows(iter([self.feats]), query.to(self.feats.device), n)

    def paths(self, rows: Sequence[int]) -> list[str]:
        return [self.image_paths[r] for r in rows]


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive), sorted, so an index is reproducible."""
    root = Path(folder)
    if not root.is_dir():
        raise RetrievalError(f"gallery folder not found: {folder}")
    paths = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise RetrievalError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return paths


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: names a checkpoint wherever it is copied, and changes with any edit."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class Retriever:
    """A fine-tuned model, its tokenizer and config, and a gallery to search (in memory or a saved index)."""

    def __init__(self, model, tokenizer, cfg: Config, device: torch.device, checkpoint: str | None = None) -> None:
        self.model, self.tokenizer, self.cfg, self.device = model.eval(), tokenizer, cfg, device
        self.checkpoint = checkpoint  # the file the weights came from (names saved indexes and calibrations)
        self._sha256: str | None = None
        self.gallery: MemoryGallery | SavedIndex | None = None

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
        return cls(model.to(device), tokenizer, cfg, device, str(path))

    @property
    def checkpoint_sha256(self) -> str:
        """SHA-256 of the checkpoint file (computed once: about a second per GB)."""
        if self.checkpoint is None:
            raise RetrievalError("this retriever was not made from a checkpoint file")
        if self._sha256 is None:
            self._sha256 = file_sha256(self.checkpoint)
        return self._sha256

    def fingerprint(self, images_only: bool = False) -> str:
        """Names what scores depend on: the checkpoint's bytes, the evaluation precision and the config
        it runs with (overrides included; ``images_only``: only the image size, all that the test-time
        image transform and so a saved index's features depend on besides the weights)."""
        settings = self.cfg.experiment.input_resolution if images_only else self.cfg.to_dict()
        what = [self.checkpoint_sha256, str(eval_dtype(self.cfg, self.device)), settings]
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()

    # ----------------------------------------------------------------------------- gallery
    def index(self, images: str | os.PathLike | Sequence[str | os.PathLike]) -> int:
        """Encode a gallery in memory (a folder, searched recursively, or a list of image paths); returns its size.

        Unreadable images follow ``data.on_bad_image`` of the stored config (error, or skip =
        blank image). For galleries searched again and again, :meth:`open_index` keeps the
        encoding on disk.
        """
        paths = self._gallery_paths(images)
        embeds, feats = self._encode(paths)
        self.gallery = MemoryGallery(paths, embeds, feats)
        return len(paths)

    def open_index(self, folder: str | os.PathLike, images: str | os.PathLike | Sequence[str] | None = None,
                   root: str | os.PathLike | None = None, progress: bool = True) -> SyncReport | None:
        """Search the saved index in ``folder`` from now on; returns what was updated, if anything.

        With ``images`` (a folder, or full paths under one folder), the index is first made
        to hold exactly those images: new or changed ones are encoded, removed ones dropped,
        and all are encoded again when the checkpoint differs from the one that built it
        (``engine.gallery_index.sync_index``). Paths are stored relative to ``root`` (default:
        the folder, or the deepest folder holding every listed image). Without ``images``,
        the index is used as it is, and must have been built with this checkpoint.
        """
        report = None
        if images is not None:
            paths = self._gallery_paths(images)
            if root is None:
                root = images if isinstance(images, (str, os.PathLike)) else os.path.commonpath(
                    [os.path.dirname(os.path.realpath(p)) for p in paths])
            root = os.path.realpath(root)
            rels = [os.path.relpath(os.path.realpath(p), root) for p in paths]
            report = sync_index(folder, root, rels, self.fingerprint(images_only=True),
                                self.model.vision_proj.out_features,
                                lambda batch: self._encode(batch, tokens=False)[1], progress=progress)
        index = SavedIndex.open(folder)
        if index.encoder != self.fingerprint(images_only=True):
            raise RetrievalError(f"{folder}: built with another checkpoint or other settings; pass the gallery "
                                 "again to re-encode it")
        self.gallery = index
        return report

    def _gallery_paths(self, images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
        if isinstance(images, (str, os.PathLike)):
            return list_images(images)
        paths = [str(p) for p in images]
        if not paths:
            raise RetrievalError("empty list of gallery images")
        missing = next((p for p in paths if not os.path.isfile(p)), None)
        if missing is not None:
            raise RetrievalError(f"gallery image not found: {missing}")
        return paths

    @torch.no_grad()
    def _encode(self, paths: list[str], tokens: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(image tokens [n, 1+N, D] when ``tokens``, features [n, E]) with the test-time transforms,
        in batches of ``data.test_batch_size``, as in evaluation."""
        loader = DataLoader(GalleryDataset(self.cfg, paths), batch_size=self.cfg.data.test_batch_size,
                            num_workers=self.cfg.data.num_workers, shuffle=False)
        embeds, feats = [], []
        for images, _ in loader:
            with autocast(self.device, eval_dtype(self.cfg, self.device)):
                e = self.model.encode_image(images.to(self.device))
                f = self.model.image_feature(e)
            if tokens:
                embeds.append(e.float())
            feats.append(f.float())
        return (torch.cat(embeds) if tokens else None), torch.cat(feats)

    # ------------------------------------------------------------------------------ search
    @torch.no_grad()
    def search(self, text: str, top_k: int = 10, rerank: bool = True, lang: str | None = None) -> list[Hit]:
        """The ``top_k`` best gallery images for a caption in ``lang`` (default: the source language).

        With ``rerank``, the top ``model.k_test`` images by cosine similarity are ordered
        by ITM score and carry that score as ``itm``; every hit carries its cosine similarity.
        A saved index encodes those k images again for their tokens; its hits' paths are real
        paths under the index's root (in memory: the paths as given).
        """
        g = self.gallery
        if g is None:
            raise RetrievalError("no gallery indexed: call index() or open_index() first")
        if len(g) == 0:
            raise RetrievalError("the saved index holds no images yet: pass the gallery to encode it")
        if top_k < 1:
            raise RetrievalError(f"top_k must be at least 1, got {top_k}")
        embeds, mask, feat = self.encode_query(text, lang)
        k = min(self.cfg.model.k_test, len(g)) if rerank else 0
        cosine, rows = g.top(feat, min(max(top_k, k), len(g)))
        paths = g.paths(rows.tolist())
        order, itm_of = list(range(len(paths))), {}
        if k:
            images = g.embeds[rows[:k].to(self.device)] if isinstance(g, MemoryGallery) else self._encode(paths[:k])[0]
            dtype = eval_dtype(self.cfg, self.device)
            itm = rerank_fast(self.model, lambda start, stop: (embeds, mask), torch.arange(k)[None], images,
                              chunk=1, batch_size=self.cfg.data.test_batch_size, device=self.device, dtype=dtype,
                              score=self.cfg.model.rerank_score)[0]
            perm = torch.sort(itm, descending=True, stable=True).indices.tolist()
            itm_of = dict(enumerate(itm.tolist()))
            order = perm + order[k:]
        cosine = cosine.tolist()
        return [Hit(paths[i], cosine[i], itm_of.get(i)) for i in order[:top_k]]

    @torch.no_grad()
    def encode_query(self, text: str, lang: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token embeddings [1, L, D], mask [1, L], normalised feature [E]) of a caption, cleaned and
        tokenized like the training data and projected as ``lang``'s captions are."""
        lang = lang or self.cfg.data.source_language
        if not has_words(text):
            raise RetrievalError(f"the query is empty after cleaning (punctuation and symbols are removed): {text!r}")
        ids, mask = (t.to(self.device) for t in tokenize_caption(self.tokenizer, self.cfg, text))
        with autocast(self.device, eval_dtype(self.cfg, self.device)):
            embeds = self.model.encode_text(ids, mask)
            feat = self.model.text_feature(embeds, target=uses_tl_proj(self.cfg, lang))
        return embeds.float(), mask, feat.float()[0]


__all__ = ["Hit", "IMAGE_EXTENSIONS", "MemoryGallery", "RetrievalError", "Retriever", "file_sha256",
           "list_images"]
