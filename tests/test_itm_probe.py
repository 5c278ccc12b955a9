"""benchmarks.itm_probe: only the fusion layers and the ITM head learn; negatives drawn as asked."""
from __future__ import annotations

import pytest
import torch

import model.bi_irra as bi_irra
from benchmarks.itm_probe import freeze_towers, itm_loss, main, probe
from data.loader import build_train_loader
from engine.retriever import Retriever
from tests.retrieval_fixtures import trained_run  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def trainable_part(name: str) -> bool:
    return name.startswith(("cross_encoder.", "itm_head."))


def test_probe_trains_fusion_and_itm_head_only(trained_run):
    r = Retriever.from_checkpoint(trained_run.checkpoint)
    before = {k: v.clone() for k, v in r.model.state_dict().items()}
    rows = list(probe(r, steps=3, every=3, sharpness=1.0, lr=1e-3, split="test", log_every=1))
    assert [(row["step"], "pairs" in row) for row in rows] == [(0, True), (1, False), (2, False), (3, False), (3, True)]
    assert all(0 < row["itm"] < 5 for row in rows if "itm" in row)
    after = r.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(trainable_part(k) for k in changed)
    assert any(k.startswith("itm_head.") for k in changed) and any(k.startswith("cross_encoder.") for k in changed)
    first, last = rows[0]["pairs"], rows[-1]["pairs"]
    for lang in first:  # frozen towers: ITC ranks as before
        assert last[lang]["R1_itc"] == first[lang]["R1_itc"]
        assert last[lang]["split_pairs"] == first[lang]["split_pairs"]


def test_freeze_towers_returns_exactly_the_trainable_parameters(trained_run):
    model = Retriever.from_checkpoint(trained_run.checkpoint).model
    params = freeze_towers(model)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(trainable_part(n) for n in names)
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("sharpness", [0.0, 0.5, 1.0])
def test_negatives_weighed_by_sharpness(trained_run, monkeypatch, sharpness):
    r = Retriever.from_checkpoint(trained_run.checkpoint)
    r.model.cfg.itm.negatives = "hard"
    seen = []

    def record(sim, pids_row, pids_col, temp):
        seen.append(torch.softmax(sim.float() / temp.float(), dim=1))
        return real(sim, pids_row, pids_col, temp)

    real = bi_irra.sample_negatives
    monkeypatch.setattr(bi_irra, "sample_negatives", record)
    batch = next(iter(build_train_loader(r.cfg, r.tokenizer)))
    itm_loss(r.model, batch, sharpness)
    with torch.no_grad():
        enc = r.model.encode_batch(batch)
        image_feat, src_feat, _ = enc.features()
        expected = torch.softmax(sharpness * (src_feat @ image_feat.t()) / r.model.temperature(), dim=1)
    assert len(seen) == 4  # text->image and image->text, for each language
    torch.testing.assert_close(seen[0], expected, atol=1e-5, rtol=1e-4)
    if sharpness == 0:
        assert torch.allclose(seen[0], torch.full_like(seen[0], 1 / seen[0].shape[1]))


def test_cli_prints_losses_and_pair_figures(trained_run, capsys):
    main(["--checkpoint", str(trained_run.checkpoint), "--steps", "2", "--every", "2", "--split", "test"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split("|")[0].strip() for line in out if "|" in line] == ["step 0", "step 2"]
    assert any(line.startswith("step 2: ITM loss") for line in out)
    assert all("split pairs" in line for line in out if "|" in line)
    with pytest.raises(SystemExit, match="positive"):
        main(["--checkpoint", str(trained_run.checkpoint), "--steps", "0"])


def test_evaluating_does_not_change_what_is_trained(trained_run):
    weights = []
    for every in (1, 4):
        r = Retriever.from_checkpoint(trained_run.checkpoint)
        list(probe(r, steps=4, every=every, sharpness=1.0, lr=1e-3, split="test"))
        weights.append(r.model.itm_head.state_dict())
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)
