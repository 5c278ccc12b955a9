"""engine.retriever: search a briefly trained tiny model's gallery, in memory and from a saved index; languages; errors."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engine.retriever import Hit, RetrievalError, Retriever, list_images
from tests.retrieval_fixtures import TrainedRun
from utils.checkpoint import CheckpointError
from utils.config import ConfigError

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # trained_run: main.py in a subprocess


@pytest.fixture(scope="module")
def retriever(trained_run) -> Retriever:
    return Retriever.from_checkpoint(trained_run.checkpoint)


def train_gallery(run: TrainedRun, lang: str = "en") -> tuple[list[str], dict[str, int]]:
    entries = run.train_entries(lang)
    paths = [str(run.data / "imgs" / e["file_path"]) for e in entries]
    return paths, dict(zip(paths, (e["id"] for e in entries)))


def test_easy_caption_finds_its_person_in_the_top_5(trained_run, retriever):
    paths, ids = train_gallery(trained_run)
    assert retriever.index(paths) == len(paths) == 36
    i, j = trained_run.easy_query()
    entry = trained_run.train_entries("en")[i]
    hits = retriever.search(entry["captions"][j], top_k=5)
    assert len(hits) == 5 and all(isinstance(h, Hit) for h in hits)
    assert entry["id"] in [ids[h.path] for h in hits], hits
    found = [e["id"] in [ids[h.path] for h in retriever.search(c, top_k=5)]
             for e in trained_run.train_entries("en") for c in e["captions"]]
    assert sum(found) >= 0.9 * len(found)  # the model learnt, not one lucky caption (chance: about 36%)


def test_scores_itm_for_the_reranked_top_k_and_cosine_below(trained_run, retriever):
    paths, _ = train_gallery(trained_run)
    retriever.index(paths)
    caption = trained_run.train_entries("en")[0]["captions"][0]
    k = retriever.cfg.model.k_test
    plain = retriever.search(caption, top_k=len(paths), rerank=False)
    scores = [h.score for h in plain]
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert sorted(h.path for h in plain) == sorted(paths)
    reranked = retriever.search(caption, top_k=len(paths))
    assert {h.path for h in reranked[:k]} == {h.path for h in plain[:k]}  # re-ranking only reorders the top k
    assert reranked[k:] == plain[k:]
    itm = [h.score for h in reranked[:k]]
    assert itm == sorted(itm, reverse=True)
    assert retriever.search(caption, top_k=3) == reranked[:3]


def test_target_language_uses_its_projection(retriever, monkeypatch):
    retriever.index(list_images(Path(retriever.cfg.image_dir) / "test"))
    seen = []
    original = retriever.model.text_feature
    monkeypatch.setattr(retriever.model, "text_feature",
                        lambda embeds, target: seen.append(target) or original(embeds, target))
    for lang in (None, "en", "ch", "fr", "de"):
        query = "一个穿红色衬衫的男人" if lang == "ch" else "a man in a red shirt"
        retriever.search(query, lang=lang, rerank=False)
    assert retriever.cfg.data.target_language == "ch"
    assert seen == [False, False, True, False, False]


def same_hits(a: list[Hit], b: list[Hit]) -> None:
    """Equal rankings: same images in the same order, scores equal up to float rounding."""
    assert [os.path.realpath(h.path) for h in a] == [os.path.realpath(h.path) for h in b]
    for x, y in zip(a, b):
        assert x.cosine == pytest.approx(y.cosine, abs=1e-5)
        assert (x.itm is None) == (y.itm is None) and (x.itm is None or x.itm == pytest.approx(y.itm, abs=1e-4))


def copy_images(paths, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        (folder / Path(p).name).write_bytes(Path(p).read_bytes())


def queries(run: TrainedRun) -> list[str]:
    return [e["captions"][0] for e in run.train_entries("en")[::5]]


def test_saved_index_ranks_like_memory_after_added_images_and_a_checkpoint_change(trained_run, tmp_path, monkeypatch):
    gallery, ix = tmp_path / "gallery", tmp_path / "index"
    copy_images(sorted((trained_run.data / "imgs" / "test").iterdir()), gallery)
    memory = Retriever.from_checkpoint(trained_run.checkpoint)
    saved = Retriever.from_checkpoint(trained_run.checkpoint)

    def compare(images: int) -> None:
        assert memory.index(gallery) == len(saved.gallery) == images
        for q in queries(trained_run):
            same_hits(saved.search(q, top_k=images), memory.search(q, top_k=images))
            same_hits(saved.search(q, top_k=5, rerank=False), memory.search(q, top_k=5, rerank=False))

    report = saved.open_index(ix, gallery, progress=False)
    assert (report.added, report.reason) == (18, "new index")
    compare(18)
    fresh = Retriever.from_checkpoint(trained_run.checkpoint)
    encoded = []
    original = fresh._encode
    monkeypatch.setattr(fresh, "_encode", lambda paths, tokens=True: encoded.append(len(paths)) or original(paths, tokens))
    assert fresh.open_index(ix) is None  # searched as it is: nothing encoded to open it
    fresh.search(queries(trained_run)[0], top_k=3)
    assert encoded == [fresh.cfg.model.k_test]  # re-ranking encodes its top k images only

    copy_images(sorted((trained_run.data / "imgs" / "train").iterdir())[:3], gallery)
    encoded.clear()
    report = fresh.open_index(ix, gallery, progress=False)
    assert (report.kept, report.added, report.changed, report.removed) == (18, 3, 0, 0) and encoded == [3]
    saved.open_index(ix)
    compare(21)

    changed = tmp_path / "changed.pth"
    ckpt = torch.load(trained_run.checkpoint, weights_only=True)
    ckpt["model"]["vision_proj.weight"] = ckpt["model"]["vision_proj.weight"].flip(0)
    torch.save(ckpt, changed)
    memory, saved = Retriever.from_checkpoint(changed), Retriever.from_checkpoint(changed)
    with pytest.raises(RetrievalError, match="built with another checkpoint or other settings"):
        saved.open_index(ix)
    assert saved.open_index(ix, gallery, progress=False).reason == "the checkpoint or its settings changed"
    compare(21)
    other = Retriever.from_checkpoint(changed, overrides=["model.k_test=3"])
    assert other.fingerprint(images_only=True) == saved.fingerprint(images_only=True)
    assert other.fingerprint() != saved.fingerprint()  # calibrations depend on k_test, image features do not
    assert other.open_index(ix, gallery, progress=False).kept == 21


def test_overrides_apply_to_the_stored_config(trained_run, retriever):
    r = Retriever.from_checkpoint(trained_run.checkpoint, overrides=["model.k_test=3"])
    assert r.cfg.model.k_test == 3 != retriever.cfg.model.k_test
    assert all(torch.equal(a, b) for a, b in zip(r.model.state_dict().values(), retriever.model.state_dict().values()))
    with pytest.raises(ConfigError, match="model.k_tset"):
        Retriever.from_checkpoint(trained_run.checkpoint, overrides=["model.k_tset=3"])


def test_errors_are_input_errors(trained_run, tmp_path, retriever):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Retriever.from_checkpoint(tmp_path / "missing.pth")
    torch.save({"model": {}}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="not a Bi-IRRA fine-tuned checkpoint"):
        Retriever.from_checkpoint(tmp_path / "foreign.pth")
    with pytest.raises(RetrievalError, match="gallery folder not found"):
        retriever.index(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RetrievalError, match="no images"):
        retriever.index(tmp_path / "empty")
    with pytest.raises(RetrievalError, match="gallery image not found"):
        retriever.index([str(tmp_path / "a.png")])
    fresh = Retriever(retriever.model, retriever.tokenizer, retriever.cfg, retriever.device)
    with pytest.raises(RetrievalError, match="call index"):
        fresh.search("a man")
    retriever.index(list_images(trained_run.data / "imgs" / "test"))
    with pytest.raises(RetrievalError, match="empty after cleaning"):
        retriever.search(" ,.!? ")
    # any language code: one outside the published four goes through text_proj, like the source language
    assert [h.path for h in retriever.search("a man", top_k=3, lang="es")] == \
        [h.path for h in retriever.search("a man", top_k=3, lang=retriever.cfg.data.source_language)]
