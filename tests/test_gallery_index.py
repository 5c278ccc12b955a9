"""engine.gallery_index: top rows, and keeping a saved index equal to its image folder (fake encoder)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from engine.gallery_index import INDEX_FILE, GalleryIndexError, SavedIndex, sync_index, top_rows

DIM = 8


def fake_feature(path: str) -> torch.Tensor:
    """A feature that depends on the image's pixels, so a changed image gets a changed row."""
    with Image.open(path) as im:
        pixels = torch.tensor(np.asarray(im.convert("RGB"), dtype=np.float32)).flatten()
    g = torch.Generator().manual_seed(int(pixels.sum()) % 2**31)
    return torch.nn.functional.normalize(torch.randn(DIM, generator=g), dim=0)


class Encoder:
    def __init__(self, fail_after: int | None = None) -> None:
        self.seen: list[str] = []
        self.fail_after = fail_after

    def __call__(self, paths: list[str]) -> torch.Tensor:
        if self.fail_after is not None and len(self.seen) >= self.fail_after:
            raise KeyboardInterrupt  # an interrupted encoding
        self.seen += paths
        return torch.stack([fake_feature(p) for p in paths])


def write_image(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 8), (value, 255 - value, (7 * value) % 256)).save(path)


def rels_of(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def check_rows(index: SavedIndex, root) -> None:
    """Every row holds the feature of the image its line names, and every image of ``root`` is there once."""
    paths = index.paths(range(len(index)))
    assert sorted(os.path.relpath(p, index.root) for p in paths) == rels_of(root)
    feats = torch.from_numpy(np.array(index.features()))
    for p, f in zip(paths, feats):
        assert torch.allclose(f, fake_feature(p))


@pytest.mark.parametrize("block", [1, 3, 64])
def test_top_rows_equals_a_stable_sort_of_all_scores(block):
    g = torch.Generator().manual_seed(0)
    feats = torch.randint(-3, 4, (50, 4), generator=g).float()  # many equal scores
    query = torch.tensor([1.0, 0.5, -1.0, 2.0])
    scores = feats @ query
    ref = torch.sort(scores, descending=True, stable=True)
    for n in (1, 7, 50):
        s, r = top_rows(iter(feats.split(block)), query, n)
        assert torch.equal(r, ref.indices[:n]) and torch.equal(s, ref.values[:n])


def test_sync_encodes_only_new_changed_images_and_drops_removed_ones(tmp_path):
    root, folder = tmp_path / "imgs", tmp_path / "index"
    for i in range(5):
        write_image(root / "a" / f"{i}.png", 10 * i)
    enc = Encoder()
    report = sync_index(folder, root, rels_of(root), "ckpt-1", DIM, enc, chunk=2, progress=False)
    assert (report.added, report.kept, report.reason) == (5, 0, "new index") and len(enc.seen) == 5
    index = SavedIndex.open(folder)
    check_rows(index, root)
    assert index.meta["generation"] == 1

    write_image(root / "b" / "new.png", 200)
    write_image(root / "b" / "new2.png", 201)
    enc = Encoder()
    report = sync_index(folder, root, rels_of(root), "ckpt-1", DIM, enc, progress=False)
    assert (report.added, report.kept, report.changed, report.removed) == (2, 5, 0, 0)
    assert sorted(os.path.relpath(p, root) for p in enc.seen) == ["b/new.png", "b/new2.png"]
    assert SavedIndex.open(folder).meta["generation"] == 1  # appended in place

    write_image(root / "a" / "1.png", 99)  # edited: other pixels, other size or mtime
    os.utime(root / "a" / "1.png", ns=(1, 10**18))
    (root / "a" / "3.png").unlink()
    enc = Encoder()
    report = sync_index(folder, root, rels_of(root), "ckpt-1", DIM, enc, progress=False)
    assert (report.added, report.kept, report.changed, report.removed) == (0, 5, 1, 1)
    assert [os.path.relpath(p, root) for p in enc.seen] == ["a/1.png"]
    index = SavedIndex.open(folder)
    check_rows(index, root)
    assert index.meta["generation"] == 2 and not (folder / "features-1.f32").exists()
    assert report.kept == 5 and len(index) == 6

    enc = Encoder()
    report = sync_index(folder, root, rels_of(root), "ckpt-2", DIM, enc, progress=False)
    assert report.reason == "the checkpoint or its settings changed" and len(enc.seen) == 6
    check_rows(SavedIndex.open(folder), root)
    assert SavedIndex.open(folder).encoder == "ckpt-2"
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "features-3.f32", "images-3.jsonl", "images_offsets-3.i64",
                                                         "index.json"]  # no other generation left


def test_an_interrupted_encoding_keeps_its_finished_chunks(tmp_path):
    root, folder = tmp_path / "imgs", tmp_path / "index"
    for i in range(7):
        write_image(root / f"{i}.png", 30 * i)
    with pytest.raises(KeyboardInterrupt):
        sync_index(folder, root, rels_of(root), "c", DIM, Encoder(fail_after=4), chunk=2, progress=False)
    assert len(SavedIndex.open(folder)) == 4  # two chunks of two were finished
    with open(folder / SavedIndex.open(folder).meta["features"], "ab") as f:
        f.write(b"\0" * 13)  # a torn write past the counted rows
    enc = Encoder()
    sync_index(folder, root, rels_of(root), "c", DIM, enc, chunk=2, progress=False)
    assert len(enc.seen) == 3
    index = SavedIndex.open(folder)
    check_rows(index, root)
    assert os.path.getsize(folder / index.meta["features"]) == 7 * DIM * 4


def test_an_interrupted_compaction_leaves_the_previous_index_whole(tmp_path, monkeypatch):
    import engine.gallery_index as gi

    root, folder = tmp_path / "imgs", tmp_path / "index"
    for i in range(6):
        write_image(root / f"{i}.png", 20 * i)
    sync_index(folder, root, rels_of(root), "c", DIM, Encoder(), progress=False)
    (root / "0.png").unlink()
    monkeypatch.setattr(gi, "SCAN_ROWS", 2)
    real, calls = gi._append_data, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(gi, "_append_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sync_index(folder, root, rels_of(root), "c", DIM, Encoder(), progress=False)
    index = SavedIndex.open(folder)
    assert index.meta["generation"] == 1 and len(index) == 6  # the old index, complete, still current
    monkeypatch.undo()
    enc = Encoder()
    report = sync_index(folder, root, rels_of(root), "c", DIM, enc, progress=False)
    assert (report.kept, report.removed, enc.seen) == (5, 1, [])
    check_rows(SavedIndex.open(folder), root)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "features-2.f32", "images-2.jsonl", "images_offsets-2.i64",
                                                         "index.json"]  # generation 2 rewritten, generation 1 gone


def test_file_names_with_tabs_line_breaks_and_undecodable_bytes(tmp_path):
    root, folder = tmp_path / "imgs", tmp_path / "index"
    names = ["a\tb.png", "c\nd.png", "e\x85f\u2028.png", os.fsdecode(b"caf\xe9.png"), "plain.png"]
    for i, name in enumerate(names):
        write_image(root / name, 50 * i)
    sync_index(folder, root, names, "c", DIM, Encoder(), progress=False)
    index = SavedIndex.open(folder)
    assert index.paths(range(5)) == [os.path.join(os.path.realpath(root), n) for n in names]
    check_rows(index, root)
    enc = Encoder()
    assert sync_index(folder, root, names, "c", DIM, enc, progress=False).kept == 5 and enc.seen == []


def test_a_moved_gallery_keeps_its_rows_and_search_reads_only_its_hits(tmp_path):
    root, folder = tmp_path / "imgs", tmp_path / "index"
    for i in range(4):
        write_image(root / f"{i}.png", 40 * i)
    sync_index(folder, root, rels_of(root), "c", DIM, Encoder(), progress=False)
    moved = tmp_path / "moved"
    root.rename(moved)
    enc = Encoder()
    sync_index(folder, moved, rels_of(moved), "c", DIM, enc, progress=False)
    index = SavedIndex.open(folder)
    assert enc.seen == [] and index.root == os.path.realpath(moved)
    query = fake_feature(str(moved / "2.png"))
    scores, rows = index.top(query, 2)
    assert index.paths(rows.tolist())[0] == os.path.join(os.path.realpath(moved), "2.png")
    assert scores[0] == pytest.approx(1.0, abs=1e-6)


def test_unusable_index_folders_are_one_line_errors(tmp_path):
    with pytest.raises(GalleryIndexError, match="no gallery index in"):
        SavedIndex.open(tmp_path)
    (tmp_path / INDEX_FILE).write_text("{", encoding="utf-8")
    with pytest.raises(GalleryIndexError, match="unreadable index"):
        SavedIndex.open(tmp_path)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"version": 0}), encoding="utf-8")
    with pytest.raises(GalleryIndexError, match="not an index of this version"):
        SavedIndex.open(tmp_path)
    root = tmp_path / "imgs"
    write_image(root / "0.png", 1)
    sync_index(tmp_path / "ix", root, ["0.png"], "c", DIM, Encoder(), progress=False)
    index = SavedIndex.open(tmp_path / "ix")
    with pytest.raises(GalleryIndexError, match="features have size 8, the model's 4"):
        index.top(torch.ones(4), 1)
    assert top_rows(iter([torch.ones(3, 8)]), torch.ones(8), 0)[1].numel() == 0
    (tmp_path / "ix" / index.meta["images"]).unlink()
    with pytest.raises(GalleryIndexError, match="is missing"):
        SavedIndex.open(tmp_path / "ix")


def test_benchmark_index_is_a_real_index_of_unit_rows_naming_real_images(tmp_path):
    from benchmarks.search_index import write_index

    root = tmp_path / "imgs"
    for i in range(3):
        write_image(root / f"{i}.png", i)
    write_index(tmp_path / "ix", str(root), rows=70_000, dim=4, encoder="c")  # more than one block of rows
    index = SavedIndex.open(tmp_path / "ix")
    assert len(index) == 70_000 and index.dim == 4
    feats = torch.from_numpy(np.array(index.features()))
    assert torch.allclose(feats.norm(dim=1), torch.ones(70_000), atol=1e-5)
    assert [os.path.basename(p) for p in index.paths([0, 1, 2, 3, 69_999])] == ["0.png", "1.png", "2.png", "0.png",
                                                                            "0.png"]
    scores, rows = index.top(feats[12_345], 3)
    assert rows[0] == 12_345 and scores[0] == pytest.approx(1.0, abs=1e-5)


def test_a_second_process_cannot_update_an_index_being_updated(tmp_path):
    import fcntl

    root, folder = tmp_path / "imgs", tmp_path / "index"
    write_image(root / "0.png", 1)
    sync_index(folder, root, ["0.png"], "c", DIM, Encoder(), progress=False)
    with open(folder / ".lock", "w") as held:  # another open file description: as another process would hold it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(GalleryIndexError, match="another process is updating this index"):
            sync_index(folder, root, ["0.png"], "c", DIM, Encoder(), progress=False)
    assert sync_index(folder, root, ["0.png"], "c", DIM, Encoder(), progress=False).kept == 1
