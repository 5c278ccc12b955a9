"""Batching: the training collate function and loader, and the evaluation data entry point."""
from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from data.annotations import DataError
from data.datasets import EvalData, TrainDataset, build_eval_data
from data.sampler import GlobalBatchSampler
from data.text import IGNORE_INDEX
from utils.config import Config


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad id lists to the longest one."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate_train(items: list[dict[str, Any]], pad_id: int = 1, groups: int = 1,
                  per_sample_mask: bool = False) -> dict[str, torch.Tensor]:
    """Stack training samples; captions are padded per language to the longest in the batch.

    The items form ``groups`` consecutive equal groups (the (virtual) processes' batches).
    Upstream draws one D-MIM mask per process batch, so by default every row of a group
    takes the mask of the group's first item; with ``per_sample_mask`` each row keeps its
    own. Masks thus depend on the group's samples only, not on how groups map to processes.
    """
    if groups < 1 or len(items) % groups:
        raise ValueError(f"a batch of {len(items)} samples cannot form {groups} equal groups")
    masks = torch.stack([it["image_mask"] for it in items])
    if not per_sample_mask:
        size = len(items) // groups
        masks = masks[::size].repeat_interleave(size, dim=0)
    batch = {"images": torch.stack([it["image"] for it in items]), "image_mask": masks}
    for lang in ("src", "tgt"):
        ids = pad([it[f"{lang}_ids"] for it in items], pad_id)
        batch[f"{lang}_ids"], batch[f"{lang}_mask"] = ids, pad([[1] * len(it[f"{lang}_ids"]) for it in items], 0)
    if "src_mlm_ids" in items[0]:
        for lang in ("src", "tgt"):
            batch[f"{lang}_mlm_ids"] = pad([it[f"{lang}_mlm_ids"] for it in items], pad_id)
            batch[f"{lang}_mlm_labels"] = pad([it[f"{lang}_mlm_labels"] for it in items], IGNORE_INDEX)
    batch["pids"] = torch.tensor([it["pid"] for it in items], dtype=torch.long)
    batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return batch


def build_train_loader(cfg: Config, tokenizer, rank: int = 0, world_size: int = 1,
                       dataset: TrainDataset | None = None) -> DataLoader:
    """Loader over this process's slice of each global batch (see GlobalBatchSampler).

    The engine calls ``loader.batch_sampler.set_epoch(e, start_batch)`` and
    ``loader.dataset.set_epoch(e)`` before each epoch; workers are not persistent so the
    dataset's epoch reaches them.
    """
    ds = TrainDataset(cfg, tokenizer) if dataset is None else dataset
    try:
        sampler = GlobalBatchSampler(len(ds), cfg.data.batch_size * cfg.distributed.virtual_processes, rank,
                                     world_size, cfg.misc.seed,
                                     persons=ds.pid_of, instances=cfg.data.num_instances,
                                     max_batches=cfg.schedule.steps_per_epoch)
    except ValueError as e:
        raise DataError(str(e)) from None
    return DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                      collate_fn=partial(collate_train, pad_id=tokenizer.pad_token_id,
                                         groups=cfg.distributed.virtual_processes,
                                         per_sample_mask=cfg.mim.per_sample_mask),
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


__all__ = ["collate_train", "build_train_loader", "build_eval_data", "EvalData", "pad"]
