"""Datasets and loaders: sample contents, per-sample determinism, collate, evaluation data, bad images."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from data.annotations import DataError
from data.datasets import TrainDataset
from data.loader import build_eval_data, build_train_loader, collate_train
from data.text import IGNORE_INDEX, clean_caption, clean_caption_unicode
from tests.model_fixtures import tiny_config

DATA = ("experiment.text_length=32", "data.batch_size=4")  # the settings these tests were written for
KEYS = {"images", "image_mask", "src_ids", "src_mask", "tgt_ids", "tgt_mask", "src_mlm_ids", "src_mlm_labels",
        "tgt_mlm_ids", "tgt_mlm_labels", "pids", "index"}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def test_train_item_contents(synthetic_root, tokenizer, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path, *DATA)
    ds = TrainDataset(cfg, tokenizer)
    assert len(ds) == 4 * 2 * 2 and ds.num_persons == 4
    item = ds[3]
    assert item["image"].shape == (3, 32, 16)
    assert item["image_mask"].dtype == torch.bool and item["image_mask"].shape == (8,)
    assert int(item["image_mask"].sum()) <= int(cfg.mim.mask_ratio * 8)
    assert item["src_ids"][0] == tokenizer.bos_token_id and item["src_ids"][-1] == tokenizer.eos_token_id
    assert len(item["src_ids"]) <= cfg.experiment.text_length and len(item["tgt_ids"]) <= cfg.experiment.text_length
    assert item["index"] == 3 and sorted({int(p) for p in ds.pid_of}) == [0, 1, 2, 3]
    assert len(item["src_mlm_ids"]) == len(item["src_mlm_labels"]) == len(item["src_ids"])


def test_same_seed_epoch_index_same_sample_other_epoch_differs(synthetic_root, tokenizer, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path, *DATA)
    a, b = TrainDataset(cfg, tokenizer), TrainDataset(cfg, tokenizer)
    b[0], b[5]  # consuming other samples first changes nothing
    for i in range(len(a)):
        assert _same(a[i], b[i])
    a.set_epoch(1)
    differs = [not torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a))]
    assert sum(differs) >= len(a) - 1
    cfg2 = tiny_config(synthetic_root, tmp_path, *DATA)
    cfg2.misc.seed = 2
    assert not torch.equal(TrainDataset(cfg2, tokenizer)[0]["image"], b[0]["image"])


def _epoch(cfg, tokenizer, epoch, rank=0, world_size=1):
    loader = build_train_loader(cfg, tokenizer, rank, world_size)
    loader.batch_sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    return list(loader)


def test_batches_do_not_depend_on_workers_or_processes(synthetic_root, tokenizer, tmp_path):
    cfg0 = tiny_config(synthetic_root, tmp_path, *DATA, "data.num_workers=0")
    cfg2 = tiny_config(synthetic_root, tmp_path, *DATA, "data.num_workers=2")
    b0, b2 = _epoch(cfg0, tokenizer, 3), _epoch(cfg2, tokenizer, 3)
    assert len(b0) == 16 // 4 and all(_same(x, y) for x, y in zip(b0, b2))
    assert not _same(_epoch(cfg0, tokenizer, 0)[0], b0[0])
    # two processes with batch 2 see exactly the halves of one process's batch 4
    cfg_half = tiny_config(synthetic_root, tmp_path, *DATA, "data.num_workers=0", "data.batch_size=2")
    r0, r1 = _epoch(cfg_half, tokenizer, 3, 0, 2), _epoch(cfg_half, tokenizer, 3, 1, 2)
    for full, x, y in zip(b0, r0, r1):
        assert torch.equal(full["index"], torch.cat([x["index"], y["index"]]))
        assert torch.equal(full["images"], torch.cat([x["images"], y["images"]]))
        assert torch.equal(full["src_mlm_ids"][:2, :x["src_mlm_ids"].shape[1]], x["src_mlm_ids"])


def test_collate_keys_padding_and_masks(synthetic_root, tokenizer, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path, *DATA)
    ds = TrainDataset(cfg, tokenizer)
    items = [ds[i] for i in range(5)]
    batch = collate_train(items, pad_id=tokenizer.pad_token_id)
    assert set(batch) == KEYS
    assert batch["images"].shape == (5, 3, 32, 16) and batch["image_mask"].shape == (5, 8)
    for lang in ("src", "tgt"):
        ids, mask = batch[f"{lang}_ids"], batch[f"{lang}_mask"]
        assert ids.dtype == mask.dtype == torch.long
        assert ids.shape[1] == max(len(it[f"{lang}_ids"]) for it in items)
        for row, m, it in zip(ids, mask, items):
            n = len(it[f"{lang}_ids"])
            assert row[:n].tolist() == it[f"{lang}_ids"] and (row[n:] == tokenizer.pad_token_id).all()
            assert m[:n].all() and not m[n:].any()
        labels = batch[f"{lang}_mlm_labels"]
        assert labels.shape == ids.shape and (labels[mask == 0] == IGNORE_INDEX).all()
    assert batch["pids"].tolist() == [it["pid"] for it in items] and batch["index"].tolist() == list(range(5))


def _fake_items(masks: list[list[bool]]) -> list[dict]:
    return [{"image": torch.full((3, 2, 2), float(i)), "image_mask": torch.tensor(m), "src_ids": [0, 5, 2],
             "tgt_ids": [0, 6, 2], "pid": i, "index": i} for i, m in enumerate(masks)]


MASKS = [[True, False, False], [False, True, False], [False, False, True], [True, True, False],
         [False, True, True], [True, False, True]]


def test_collate_shares_one_mask_per_group_by_default():
    items = _fake_items(MASKS)
    one = collate_train(items)["image_mask"]
    assert one.shape == (6, 3) and one.dtype == torch.bool
    assert (one == torch.tensor(MASKS[0])).all()  # one mask per (process) batch, as upstream
    three = collate_train(items, groups=3)["image_mask"]
    assert three.tolist() == [MASKS[0]] * 2 + [MASKS[2]] * 2 + [MASKS[4]] * 2
    # a group's masks depend on its own items only, not on how groups are batched together
    assert torch.equal(three[4:], collate_train(items[4:])["image_mask"])
    assert collate_train(items, groups=3, per_sample_mask=True)["image_mask"].tolist() == MASKS
    with pytest.raises(ValueError, match="6 samples cannot form 4 equal groups"):
        collate_train(items, groups=4)


def test_loader_masks_per_process_batch_virtual_processes_and_per_sample(synthetic_root, tokenizer, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path, *DATA)
    batches = _epoch(cfg, tokenizer, 0)
    ds = TrainDataset(cfg, tokenizer)
    for b in batches:
        first = ds[int(b["index"][0])]["image_mask"]
        assert (b["image_mask"] == first).all()
    assert len({tuple(b["image_mask"][0].tolist()) for b in batches}) > 1  # batches differ
    # one process running two virtual processes of 2 == two processes of 2: one mask per half batch
    half = tiny_config(synthetic_root, tmp_path, *DATA, "data.batch_size=2")
    r0, r1 = _epoch(half, tokenizer, 0, 0, 2), _epoch(half, tokenizer, 0, 1, 2)
    half.distributed.virtual_processes = 2
    virtual = _epoch(half, tokenizer, 0)
    assert len(virtual) == len(r0) == 4
    for v, x, y in zip(virtual, r0, r1):
        assert torch.equal(v["index"], torch.cat([x["index"], y["index"]]))
        assert torch.equal(v["image_mask"], torch.cat([x["image_mask"], y["image_mask"]]))
    assert any(not torch.equal(v["image_mask"][0], v["image_mask"][2]) for v in virtual)  # the halves differ
    cfg.mim.per_sample_mask = True
    for b in _epoch(cfg, tokenizer, 0):
        assert torch.equal(b["image_mask"], torch.stack([ds[int(i)]["image_mask"] for i in b["index"]]))


def test_mlm_off_and_batch_too_large(synthetic_root, tokenizer, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path, *DATA)
    cfg.mlm.is_mlm = False
    batch = next(iter(build_train_loader(cfg, tokenizer)))
    assert set(batch) == KEYS - {"src_mlm_ids", "src_mlm_labels", "tgt_mlm_ids", "tgt_mlm_labels"}
    cfg.data.batch_size = 9
    with pytest.raises(DataError, match="16 samples, fewer than one global batch .*lower data.batch_size"):
        build_train_loader(cfg, tokenizer, world_size=2)


@pytest.mark.parametrize("lang", ["en", "ch"])
def test_eval_data(synthetic_root, tokenizer, tmp_path, lang):
    cfg = tiny_config(synthetic_root, tmp_path, *DATA)
    ev = build_eval_data(cfg, "test", lang, tokenizer)
    assert len(ev.gallery) == 6 and ev.gallery_pids.shape == (6,) and len(ev.gallery_paths) == 6
    assert ev.query_pids.shape == (12,) and len(ev.captions) == 12
    assert ev.query_ids.shape == ev.query_mask.shape == (12, cfg.experiment.text_length)
    assert ev.query_ids.dtype == ev.query_mask.dtype == torch.long
    img, idx = ev.gallery[4]
    assert img.shape == (3, 32, 16) and idx == 4
    assert ev.query_pids[8].item() == ev.gallery_pids[4].item()  # captions 8, 9 describe image 4
    assert all(c == c.lower() and "." not in c for c in ev.captions)


def _raw_captions(root, split: str, lang: str) -> list[str]:
    import json
    entries = json.loads((root / "annos" / f"{split}_reid_{lang}.json").read_text(encoding="utf-8"))
    return [c for e in entries for c in e["captions"]]


def test_eval_and_train_captions_follow_the_cleaning_option(synthetic_root, tokenizer, tmp_path):
    raw = _raw_captions(synthetic_root, "test", "ch")
    cfg = tiny_config(synthetic_root, tmp_path, *DATA)
    upstream = build_eval_data(cfg, "test", "ch", tokenizer).captions
    assert upstream == [clean_caption(c, 32) for c in raw] and any("，" in c for c in upstream)
    tgt = _raw_captions(synthetic_root, "train", "ch")[0]
    up_ids, uni_ids = (tokenizer([clean(tgt, 32)], max_length=32, truncation=True)["input_ids"][0]
                       for clean in (clean_caption, clean_caption_unicode))
    assert up_ids != uni_ids and TrainDataset(cfg, tokenizer).tgt[0] == up_ids
    cfg.data.unicode_cleaning = True
    unicode = build_eval_data(cfg, "test", "ch", tokenizer).captions
    assert unicode == [clean_caption_unicode(c, 32) for c in raw] and not any("，" in c for c in unicode)
    assert TrainDataset(cfg, tokenizer).tgt[0] == uni_ids


def _broken_copy(src, dst):
    """A copy whose first training image (that of samples 0 and 1) is not an image; returns its name too."""
    shutil.copytree(src, dst)
    name = json.loads((dst / "annos" / "train_reid_en.json").read_text())[0]["file_path"]
    (dst / "imgs" / name).write_bytes(b"not an image")
    return dst, Path(name).name


def test_bad_image_error_and_skip(synthetic_root, tokenizer, tmp_path, caplog):
    root, name = _broken_copy(synthetic_root, tmp_path / "broken")
    cfg = tiny_config(root, tmp_path, *DATA)
    ds = TrainDataset(cfg, tokenizer)
    with pytest.raises(DataError, match=f"cannot read image .*{name}"):
        ds[0]
    cfg = tiny_config(root, tmp_path, *DATA, "data.on_bad_image=skip")
    ds = TrainDataset(cfg, tokenizer)
    with caplog.at_level(logging.WARNING, logger="data.datasets"):
        first, again, other = ds[0], ds[0], ds[1]
    assert first["index"] == 2 and _same(first, again) and other["index"] == 2
    assert ds.skipped == 3 and ds.bad.bad_files == 1
    assert sum(name in r.getMessage() for r in caplog.records) == 1
    cfg.data.num_workers = 2
    loader = build_train_loader(cfg, tokenizer, dataset=TrainDataset(cfg, tokenizer))
    seen = torch.cat([b["index"] for b in loader])
    assert 0 not in seen.tolist() and 1 not in seen.tolist() and loader.dataset.skipped == 2


def test_bad_gallery_image(synthetic_root, tokenizer, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(synthetic_root, root)
    name = json.loads((root / "annos" / "test_reid_en.json").read_text())[3]["file_path"]
    path = root / "imgs" / name
    path.write_bytes(b"")
    ev = build_eval_data(tiny_config(root, tmp_path, *DATA), "test", "en", tokenizer)
    i = ev.gallery_paths.index(str(path))
    with pytest.raises(DataError, match=f"cannot read image .*{Path(name).name}"):
        ev.gallery[i]
    ev = build_eval_data(tiny_config(root, tmp_path, *DATA, "data.on_bad_image=skip"), "test", "en", tokenizer)
    img, idx = ev.gallery[i]
    assert idx == i and not img.any() and ev.gallery.skipped == 1


def test_identity_balanced_batches_hold_k_samples_per_person():
    from data.sampler import GlobalBatchSampler

    persons = [p for p in range(10) for _ in range(7)]  # 10 people x 7 samples; runs of 3 use 6 of each
    one = GlobalBatchSampler(len(persons), 12, seed=3, persons=persons, instances=3)
    two = [GlobalBatchSampler(len(persons), 6, rank=r, world_size=2, seed=3, persons=persons, instances=3) for r in (0, 1)]
    batches = list(one)
    assert len(batches) == len(one) == 60 // 12
    for b in batches:
        counts = {}
        for i in b:
            counts[persons[i]] = counts.get(persons[i], 0) + 1
        assert all(c % 3 == 0 for c in counts.values()), counts
    assert len({i for b in batches for i in b}) == 60  # no sample twice in an epoch
    # the same global batches whatever the number of processes
    assert [a + b for a, b in zip(*two)] == batches
    one.set_epoch(1)
    assert list(one) != batches


def test_steps_per_epoch_cuts_each_epoch_of_the_full_order():
    from data.sampler import GlobalBatchSampler

    persons = [p for p in range(10) for _ in range(6)]
    full = GlobalBatchSampler(len(persons), 4, seed=5, persons=persons, instances=2)
    cut = GlobalBatchSampler(len(persons), 4, seed=5, persons=persons, instances=2, max_batches=3)
    for epoch in (0, 1):
        full.set_epoch(epoch)
        cut.set_epoch(epoch)
        assert len(cut) == 3 and list(cut) == list(full)[:3]  # the first batches of the same order
    cut.set_epoch(1, start_batch=2)  # a resume inside the cut epoch
    assert len(cut) == 1 and list(cut) == list(full)[2:3]
    assert len(GlobalBatchSampler(len(persons), 4, max_batches=15)) == 15  # exactly one pass
    with pytest.raises(ValueError, match="schedule.steps_per_epoch is 16, but one pass over the training set is 15 "
                                         "batches; set it between 1 and 15, or 0 for the full pass"):
        GlobalBatchSampler(len(persons), 4, max_batches=16)
