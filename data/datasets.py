"""Training and evaluation datasets.

Every random choice of a training sample (augmentation, image mask, MLM masks) comes from
one generator seeded by (misc.seed, epoch, index), so a sample is the same whatever the
number of processes or loader workers, and a resumed run sees the same data. Every sample
draws its own image mask; ``collate_train`` decides whether a batch shares one (upstream).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from data.annotations import DataError, Entry, Pair, load_language, load_split, person_indices
from data.text import clean_for, mask_tokens, token_ids, tokenize
from data.transforms import build_transforms
from utils.config import Config

log = logging.getLogger(__name__)

# Person re-id images are trusted local files; PIL's decompression-bomb guard would reject
# legitimately huge scans, so it is lifted for this reader.
Image.MAX_IMAGE_PIXELS = None


def open_image(path: str, size_hint: tuple[int, int]) -> Image.Image:
    """Decode an image file; JPEGs are decoded at reduced scale when far larger than needed."""
    try:
        img = Image.open(path)
        if img.format == "JPEG":
            img.draft("RGB", (size_hint[1] * 2, size_hint[0] * 2))
        img.load()
        return img
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


class BadImageLog:
    """Bad images seen by any loader worker: each file logged once, skips counted.

    Shared-memory counters, so the counts made inside worker processes reach the main one.
    """

    def __init__(self, num_files: int):
        ctx = multiprocessing.get_context()
        self._seen = ctx.RawArray("b", max(num_files, 1))
        self._skips = ctx.RawValue("q", 0)
        self._lock = ctx.Lock()

    def record(self, file_index: int, error: DataError) -> None:
        """Note a file that failed to load; the first time, log it."""
        with self._lock:
            first = not self._seen[file_index]
            self._seen[file_index] = 1
        if first:
            log.warning("skipping bad image (data.on_bad_image=skip): %s", error)

    def count_skip(self) -> None:
        with self._lock:
            self._skips.value += 1

    @property
    def skips(self) -> int:
        """How many times a sample was replaced because its image was bad."""
        return int(self._skips.value)

    @property
    def bad_files(self) -> int:
        """How many distinct image files failed to load."""
        return int(sum(self._seen))


class TokenTable:
    """Token ids of many captions in one flat array (cheap to share with forked workers)."""

    def __init__(self, ids: list[list[int]]):
        self.offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum([len(x) for x in ids])
        self.flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(self.offsets[-1]))

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()


def _mask_generator(cfg: Config):
    """The model's block-wise image mask generator for this input's patch grid (imported lazily)."""
    from model.vision import BlockMaskGenerator

    h, w = cfg.experiment.input_resolution
    return BlockMaskGenerator(grid=(h // cfg.patch_size, w // cfg.patch_size), mask_ratio=cfg.mim.mask_ratio)


class TrainDataset(Dataset):
    """One sample per (image, caption k): image, image mask, source/target caption k, person index."""

    def __init__(self, cfg: Config, tokenizer, pairs: list[Pair] | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        pairs = load_split(cfg, "train") if pairs is None else pairs
        pid_of = person_indices([p.id for p in pairs])
        self.paths = [os.path.join(cfg.image_dir, p.file_path) for p in pairs]
        self.num_persons = len(pid_of)
        self.image_of = np.array([i for i, p in enumerate(pairs) for _ in p.src_captions], dtype=np.int64)
        self.pid_of = np.array([pid_of[pairs[i].id] for i in self.image_of], dtype=np.int64)
        length, clean = cfg.experiment.text_length, clean_for(cfg)
        self.src = TokenTable(token_ids(tokenizer, [clean(c) for p in pairs for c in p.src_captions], length))
        self.tgt = TokenTable(token_ids(tokenizer, [clean(c) for p in pairs for c in p.tgt_captions], length))
        self.transform = build_transforms(cfg, train=True)
        self.mask_gen = _mask_generator(cfg)
        self.bad = BadImageLog(len(self.paths))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.image_of)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.cfg.misc.seed, self.epoch, index])
        torch_seed = int(rng.integers(2**62))
        for k in range(len(self)):
            j = (index + k) % len(self)
            try:
                img = open_image(self.paths[self.image_of[j]], self.cfg.experiment.input_resolution)
                break
            except DataError as e:
                if self.cfg.data.on_bad_image == "error":
                    raise
                self.bad.record(int(self.image_of[j]), e)
        else:
            raise DataError(f"no readable training image under {self.cfg.image_dir}")
        if j != index:
            self.bad.count_skip()
        with torch.random.fork_rng(devices=[]):
            # CPU generator only: torch.manual_seed also queues a CUDA seeding call whose stack
            # capture costs 0.2-0.7 ms a sample where CUDA is not initialised (every worker)
            torch.random.default_generator.manual_seed(torch_seed)
            image = self.transform(img)
        item = {"image": image, "image_mask": torch.from_numpy(np.asarray(self.mask_gen(rng), dtype=bool).reshape(-1)),
                "src_ids": self.src[j], "tgt_ids": self.tgt[j], "pid": int(self.pid_of[j]), "index": j}
        if self.cfg.mlm.is_mlm:
            item["src_mlm_ids"], item["src_mlm_labels"] = mask_tokens(item["src_ids"], rng, self.cfg.mlm, self.tokenizer)
            item["tgt_mlm_ids"], item["tgt_mlm_labels"] = mask_tokens(item["tgt_ids"], rng, self.cfg.mlm, self.tokenizer)
        return item

    @property
    def skipped(self) -> int:
        """Samples replaced because of bad images (all workers together)."""
        return self.bad.skips


class GalleryDataset(Dataset):
    """Gallery images with test transforms; yields (image, gallery index)."""

    def __init__(self, cfg: Config, paths: list[str]):
        self.cfg, self.paths = cfg, paths
        self.transform = build_transforms(cfg, train=False)
        self.bad = BadImageLog(len(paths))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            img = open_image(self.paths[index], self.cfg.experiment.input_resolution)
        except DataError as e:
            if self.cfg.data.on_bad_image == "error":
                raise
            self.bad.record(index, e)
            self.bad.count_skip()
            h, w = self.cfg.experiment.input_resolution
            return torch.zeros(3, h, w), index
        return self.transform(img), index

    @property
    def skipped(self) -> int:
        """Gallery images replaced by a blank (mean-colour) image because they were unreadable."""
        return self.bad.skips


@dataclass
class EvalData:
    """One (split, language) test set: gallery images and query captions, matched by person id.

    A bad gallery image under on_bad_image=skip becomes a blank image so indices stay fixed.
    """
    split: str
    lang: str
    gallery: GalleryDataset
    gallery_pids: torch.Tensor
    gallery_paths: list[str]
    captions: list[str]
    query_pids: torch.Tensor
    query_ids: torch.Tensor
    query_mask: torch.Tensor


def build_eval_data(cfg: Config, split: str, lang: str, tokenizer) -> EvalData:
    """Gallery = one entry per image; queries = every caption of the file."""
    entries: list[Entry] = load_language(cfg, split, lang)
    paths = [os.path.join(cfg.image_dir, e.file_path) for e in entries]
    clean = clean_for(cfg)
    captions = [clean(c) for e in entries for c in e.captions]
    ids, mask = tokenize(tokenizer, captions, cfg.experiment.text_length)
    return EvalData(
        split=split, lang=lang, gallery=GalleryDataset(cfg, paths),
        gallery_pids=torch.tensor([e.id for e in entries], dtype=torch.long), gallery_paths=paths,
        captions=captions, query_pids=torch.tensor([e.id for e in entries for _ in e.captions], dtype=torch.long),
        query_ids=ids, query_mask=mask)
