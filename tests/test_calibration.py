"""engine.calibration and search's "no match": open-set trials equal real searches, the stated
false-match rate, the stored calibration, and "no match" for a query whose person is absent."""
from __future__ import annotations

import json
import re

import pytest

from data.datasets import build_eval_data
from engine.calibration import Calibration, CalibrationError, CalibrationStore, calibrate, stored_or_calibrate
from engine.evaluate import evaluate_language
from engine.retriever import Retriever
from tools import search

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # trained_run: main.py in a subprocess


@pytest.fixture(scope="module")
def retriever(trained_run) -> Retriever:
    return Retriever.from_checkpoint(trained_run.checkpoint)


@pytest.fixture(scope="module")
def trials(retriever) -> dict:
    data = build_eval_data(retriever.cfg, "train", "en", retriever.tokenizer)
    return evaluate_language(retriever.model, retriever.cfg, data, False, retriever.device, open_set=True).open_set


def images_of(run, keep) -> list[str]:
    return [str(run.data / "imgs" / e["file_path"]) for e in run.train_entries("en") if keep(e["id"])]


def test_trials_are_searches_with_and_without_the_person(trained_run, retriever, trials):
    """Each query's trial scores equal what search answers on the full gallery and without its person."""
    queries = [(e["id"], c) for e in trained_run.train_entries("en") for c in e["captions"]]
    assert len(trials["itm_best"]) == len(queries) == 72
    retriever.index(images_of(trained_run, lambda pid: True))
    full = [retriever.search(c, top_k=1)[0] for _, c in queries]
    ids = {p: e["id"] for e in trained_run.train_entries("en") for p in [str(trained_run.data / "imgs" / e["file_path"])]}
    assert [h.itm for h in full] == pytest.approx(trials["itm_best"].tolist(), abs=1e-4)
    assert [ids[h.path] == pid for h, (pid, _) in zip(full, queries)] == trials["itm_right"].tolist()
    for n, (pid, caption) in enumerate(queries[::7]):
        retriever.index(images_of(trained_run, lambda other: other != pid))
        hit = retriever.search(caption, top_k=1)[0]
        assert hit.itm == pytest.approx(float(trials["itm_absent"][7 * n]), abs=1e-4)
        plain = retriever.search(caption, top_k=1, rerank=False)[0]
        assert plain.cosine == pytest.approx(float(trials["cosine_absent"][7 * n]), abs=1e-5)


@pytest.mark.parametrize("fmr", [0.05, 0.1])
def test_calibrated_threshold_gives_the_stated_false_match_rate(retriever, trials, fmr):
    cal = calibrate(retriever, "en", split="train", fmr=fmr)
    n = cal.queries
    assert n == 72
    for score in ("cosine", "itm"):
        above = int((trials[f"{score}_absent"] > cal.thresholds[score]).sum())
        assert above == int(fmr * n + 1e-9)  # as many impostor trials above it as the rate allows, no more
        assert cal.reached_fmr[score] == pytest.approx(100 * above / n)
        assert fmr * 100 - 100 / n < cal.reached_fmr[score] <= fmr * 100
    assert cal.threshold(reranked=True)[0] == "itm" and cal.threshold(reranked=False)[0] == "cosine"


def test_calibration_is_stored_and_reused(retriever, tmp_path, monkeypatch):
    store = CalibrationStore(tmp_path / "calibration.json")
    first, fresh = stored_or_calibrate(retriever, store, "en", "train", 0.1)
    assert fresh and store.find(first) == first
    monkeypatch.setattr("engine.calibration.calibrate", lambda *a, **k: pytest.fail("stored calibration not used"))
    again, fresh = stored_or_calibrate(retriever, store, "en", "train", 0.1)
    assert not fresh and again == first
    saved = json.loads(store.path.read_text())
    assert saved[0]["fingerprint"] == retriever.fingerprint() and saved[0]["fmr"] == 0.1
    other = Calibration(**{**saved[0], "fingerprint": "another"})
    store.add(other)
    assert len(store.load()) == 2 and store.find(first) == first  # one file, many checkpoints
    store.path.write_text(json.dumps([{"checkpoint": "an older layout"}, *saved]), encoding="utf-8")
    assert store.load() == [first]  # an entry of another layout is left out, not an error
    assert CalibrationStore.beside("runs/demo/best_en.pth").path.name == "best_en.calibration.json"
    with pytest.raises(CalibrationError, match="val_reid_en.json not found"):
        calibrate(retriever, "en", split="val")


def test_search_says_no_match_when_the_person_is_absent(trained_run, retriever, trials, tmp_path, capsys):
    cal = calibrate(retriever, "en", split="train", fmr=0.05)
    t = cal.thresholds["itm"]
    entries = trained_run.train_entries("en")
    queries = [(e["id"], c) for e in entries for c in e["captions"]]
    absent_q = next(q for q in range(len(queries)) if trials["itm_absent"][q] <= t)  # 95% of the queries
    present_q = next(q for q in range(len(queries)) if trials["itm_right"][q] and trials["itm_best"][q] > t)
    pid, caption = queries[absent_q]
    without = tmp_path / "without.json"
    without.write_text(json.dumps([e for e in entries if e["id"] != pid]), encoding="utf-8")
    common = ["--checkpoint", str(trained_run.checkpoint), "--gallery", str(trained_run.data / "imgs"),
              "--threshold", "auto", "--calibration-split", "train", "--index", str(tmp_path / "ix"), "--top-k", "3"]
    search.main([*common, "--annotations", str(without), "--query", caption, "--query-id", str(pid),
                 "--out", str(tmp_path / "no.png")])
    out = capsys.readouterr().out
    assert f"calibrated {tmp_path / 'ix' / 'calibration.json'}: itm threshold {t:.4f}" in out
    assert f"no match above threshold ITM > {t:.3f} (5% false matches on train)" in out
    assert "[above threshold]" not in out
    pid, caption = queries[present_q]
    annotations = trained_run.data / "annos" / "train_reid_en.json"
    search.main([*common, "--annotations", str(annotations), "--query", caption, "--out", str(tmp_path / "yes.png")])
    out = capsys.readouterr().out
    assert "calibration from" in out and re.search(r"^[123] hit\(s\) above threshold ITM", out, re.M), out
    assert "33 kept, 3 added" in out  # the person's images joined the saved index
    first = next(line for line in out.splitlines() if line.lstrip().startswith("1  ITM"))
    assert first.endswith("match  [above threshold]")
    with search.Image.open(tmp_path / "yes.png") as im:
        assert im.size == search.grid_size(3, header_lines=4)
