"""benchmarks.rerank_pairs: split-pair accuracies by hand, and parity with the evaluation's re-ranking."""
from __future__ import annotations

import pytest
import torch

from benchmarks.rerank_pairs import candidates, main, pair_table
from data.loader import build_eval_data
from engine.evaluate import evaluate
from engine.retriever import Retriever
from tests.retrieval_fixtures import trained_run  # noqa: F401
from utils.config import uses_tl_proj

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pair_table_by_hand():
    correct = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    itm = torch.tensor([[0.0, 1.0, 2.0],   # split pair, ITC right, ITM wrong; top 3 picks the wrong third
                        [0.0, 1.0, 0.5],   # split pair, ITC wrong, ITM right
                        [3.0, 2.0, 1.0],   # not a split pair (neither of the top 2 is right)
                        [0.0, 0.0, 5.0],   # not a split pair (both right)
                        [1.0, 1.0, 0.0]])  # split pair, tie: ITC's order kept, so ITM wrong
    t = pair_table(correct, itm, [2, 3])
    assert t["R1_itc"] == pytest.approx(40.0)  # rows 0 and 3
    assert t["R1_top2"] == pytest.approx(40.0)  # rows 1 and 3
    assert t["R1_top3"] == pytest.approx(20.0)  # row 1 only
    assert t["split_pairs"] == 3
    assert t["itc_acc"] == pytest.approx(1 / 3) and t["itm_acc"] == pytest.approx(1 / 3)


def test_pair_table_without_split_pairs_has_no_accuracies():
    t = pair_table(torch.ones(2, 2, dtype=torch.bool), torch.zeros(2, 2), [2])
    assert t["split_pairs"] == 0 and "itm_acc" not in t and t["R1_top2"] == 100.0


@pytest.mark.parametrize("lang", ["en", "ch"])
def test_r1_matches_the_evaluation_at_every_depth(trained_run, lang):
    r = Retriever.from_checkpoint(trained_run.checkpoint)
    correct, itm, sim = candidates(r, "test", lang, 4)
    assert correct.shape == itm.shape == sim.shape == (correct.shape[0], 4)
    assert (sim[:, :-1] >= sim[:, 1:]).all()  # candidates in ITC order
    t = pair_table(correct, itm, [2, 4])
    data = build_eval_data(r.cfg, "test", lang, r.tokenizer)
    for k in (2, 4):
        ev = evaluate(r.model, data, target=uses_tl_proj(r.cfg, lang), k_test=k, batch_size=32)
        assert t[f"R1_top{k}"] == pytest.approx(ev.metrics["R1"])
        assert t["R1_itc"] == pytest.approx(ev.itc_metrics["R1"])


def test_cli_prints_one_line_per_language(trained_run, capsys):
    main(["--checkpoint", str(trained_run.checkpoint), "--split", "test", "--k", "3", "--k", "2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("en ", "ch "))]
    assert [line.split()[0] for line in lines] == ["en", "ch"]
    assert all("top2" in line and "top3" in line and "split pairs" in line for line in lines)
    with pytest.raises(SystemExit, match="at least 2"):
        main(["--checkpoint", str(trained_run.checkpoint), "--k", "1"])
