"""Transfer table (engine/transfer.py, python -m tools.transfer): cells equal main.py --eval-only,
missing language files become empty cells with their reason, one gallery encoding per dataset."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from engine import transfer
from engine.transfer import Cell, DatasetRow, DatasetSpec, TransferTable
from tests.engine_fixtures import ROOT, env, run_main
from tools import transfer as cli
from utils.config import Config

LANGS = ["en", "ch", "fr", "de"]
METRICS = ("R1", "R5", "R10", "mAP", "mINP")


def stub_table() -> TransferTable:
    m = {"R1": 50.0, "R5": 75.5, "R10": 100.0, "mAP": 60.25, "mINP": 40.0, "num_queries": 4}
    chance = {"R1": 10.0, "R5": 40.0, "R10": 70.0, "mAP": 20.0, "mINP": 5.0}
    rows = [DatasetRow(DatasetSpec("a", "A", "I"), {"en": Cell(m, "text_proj"), "fr": Cell(m, "text_proj")}, chance),
            DatasetRow(DatasetSpec("b", "B", "I"), {"en": Cell(m, "text_proj"),
                                                    "fr": Cell(None, "text_proj", "no test_reid_fr.json")}, chance)]
    settings = {"k_test": 8, "rerank_score": "logit", "precision": "fp32", "device": "cpu"}
    return TransferTable("ck.pth", "test", ["en", "fr"], settings, rows)


def test_markdown_and_json_of_a_table_with_an_empty_cell(tmp_path: Path) -> None:
    table = stub_table()
    lines = transfer.to_markdown(table).splitlines()
    assert "| dataset | en (text_proj) | fr (text_proj) | chance |" in lines
    assert "| a | 50.00 / 75.50 / 100.00 / 60.25 | 50.00 / 75.50 / 100.00 / 60.25 | 10.00 / 40.00 / 70.00 / 20.00 |" in lines
    assert "| b | 50.00 / 75.50 / 100.00 / 60.25 | — (no test_reid_fr.json) | 10.00 / 40.00 / 70.00 / 20.00 |" in lines
    paths = transfer.write_outputs(table, tmp_path / "out")
    assert [p.name for p in paths] == ["transfer.md", "transfer.json", "transfer_r1.png"]
    js = json.loads(paths[1].read_text(encoding="utf-8"))
    assert js["datasets"]["b"]["cells"]["fr"] == {"metrics": None, "projection": "text_proj",
                                                  "reason": "no test_reid_fr.json"}
    assert js["datasets"]["a"]["cells"]["en"]["metrics"]["mAP"] == 60.25
    assert js["datasets"]["a"]["chance"]["R5"] == 40.0 and js["settings"]["k_test"] == 8
    got = transfer.r1_matrix(table)
    assert got[0] == [50.0, 50.0] and got[1][0] == 50.0 and math.isnan(got[1][1])
    with Image.open(paths[2]) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_missing_reason_names_the_absent_file(tmp_path: Path) -> None:
    (tmp_path / "test_reid_en.json").write_text("[]")
    cfg = transfer.dataset_config(Config(), DatasetSpec("x", str(tmp_path), str(tmp_path)))
    assert cfg.anno_dir == str(tmp_path) and Config().anno_dir != str(tmp_path)
    assert transfer.missing_reason(cfg, "test", "en") is None
    assert transfer.missing_reason(cfg, "test", "fr") == "no test_reid_fr.json"
    assert transfer.missing_reason(cfg, "val", "en") == "no val_reid_en.json"


def test_empty_cells_and_gallery_sharing_with_a_stub_evaluation(tmp_path: Path, monkeypatch) -> None:
    """en and ch share one image list (one encoding); de has another (its own); fr has no file."""
    for lang in ("en", "ch", "de"):
        (tmp_path / f"test_reid_{lang}.json").write_text("[]")
    encoded, evaluated = [], []

    def build(cfg, split, lang, tokenizer):
        paths = ["b.jpg"] if lang == "de" else ["a.jpg"]
        return SimpleNamespace(gallery_paths=paths, gallery_pids=torch.tensor([0]), query_pids=torch.tensor([0, 1]))

    def encode(model, data, *args):
        encoded.append(tuple(data.gallery_paths))
        return ("embeds", data.gallery_paths[0])

    def evaluate_language(model, cfg, data, target, device, gallery):
        evaluated.append((data.gallery_paths[0], target, gallery))
        return SimpleNamespace(metrics={"R1": 100.0 if target else 0.0})

    monkeypatch.setattr(transfer, "build_eval_data", build)
    monkeypatch.setattr(transfer, "encode_gallery", encode)
    monkeypatch.setattr(transfer, "evaluate_language", evaluate_language)
    row = transfer.evaluate_dataset(None, None, Config(), DatasetSpec("x", str(tmp_path), str(tmp_path)), LANGS,
                                    "test", torch.device("cpu"))
    assert encoded == [("a.jpg",), ("b.jpg",)]
    assert evaluated == [("a.jpg", False, ("embeds", "a.jpg")), ("a.jpg", True, ("embeds", "a.jpg")),
                         ("b.jpg", False, ("embeds", "b.jpg"))]
    assert row.cells["fr"] == Cell(None, "text_proj", "no test_reid_fr.json")
    assert row.cells["ch"] == Cell({"R1": 100.0}, "tl_text_proj") and row.cells["en"].metrics == {"R1": 0.0}
    assert row.chance["R1"] == pytest.approx(100.0)  # one gallery image: the query with a match finds it first


@pytest.mark.parametrize("data, message", [
    ("nameonly", "error: --data 'nameonly' must look like NAME=ANNO_DIR:IMAGE_DIR"),
    ("x=only_one_dir", "error: --data 'x=only_one_dir' must look like NAME=ANNO_DIR:IMAGE_DIR"),
    ("x=/no/such/annos:/tmp", "error: --data 'x': annotation folder not found: /no/such/annos"),
])
def test_cli_refuses_malformed_data_in_one_line(tmp_path: Path, capsys, data: str, message: str) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--checkpoint", str(tmp_path / "none.pth"), "--data", data, "--out", str(tmp_path / "o")])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_missing_checkpoint(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--checkpoint", str(tmp_path / "none.pth"), "--data", f"x={tmp_path}:{tmp_path}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: checkpoint not found: {tmp_path / 'none.pth'}"]


# ------------------------------------------------------------------------ with the trained model
@pytest.fixture(scope="module")
def eval_only(trained_run, tmp_path_factory) -> dict[str, dict[str, float]]:
    """main.py --eval-only's metrics.json for the checkpoint on its own test split, four languages."""
    out = tmp_path_factory.mktemp("eval_only")
    r = run_main("--eval-only", "--resume", str(trained_run.checkpoint), f"model.saved_path={out}",
                 "data.eval_languages=[en,ch,fr,de]")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def no_fr(trained_run, tmp_path_factory) -> Path:
    """A copy of the annotations without test_reid_fr.json (the images are shared)."""
    annos = tmp_path_factory.mktemp("no_fr") / "annos"
    shutil.copytree(trained_run.data / "annos", annos)
    (annos / "test_reid_fr.json").unlink()
    return annos


@pytest.mark.slow
def test_cells_equal_eval_only_and_gallery_encoded_once_per_dataset(trained_run, eval_only, no_fr, monkeypatch,
                                                                     one_thread) -> None:
    from engine.retriever import Retriever

    r = Retriever.from_checkpoint(trained_run.checkpoint)
    calls = {"gallery": 0, "batches": 0}
    encode, image = transfer.encode_gallery, r.model.encode_image

    def count_gallery(*args, **kw):
        calls["gallery"] += 1
        return encode(*args, **kw)

    def count_batches(*args, **kw):
        calls["batches"] += 1
        return image(*args, **kw)

    monkeypatch.setattr(transfer, "encode_gallery", count_gallery)
    monkeypatch.setattr(r.model, "encode_image", count_batches)
    specs = [DatasetSpec("full", str(trained_run.data / "annos"), str(trained_run.data / "imgs")),
             DatasetSpec("twice", str(trained_run.data / "annos"), str(trained_run.data / "imgs")),
             DatasetSpec("no_fr", str(no_fr), str(trained_run.data / "imgs"))]
    table = transfer.transfer_table(r.model, r.tokenizer, r.cfg, specs, LANGS)
    gallery = len(json.loads((trained_run.data / "annos" / "test_reid_en.json").read_text()))
    assert calls == {"gallery": 3, "batches": 3 * -(-gallery // r.cfg.data.test_batch_size)}
    for row in table.rows:
        for lang in LANGS:
            if row.spec.name == "no_fr" and lang == "fr":
                assert row.cells[lang] == Cell(None, "text_proj", "no test_reid_fr.json")
                continue
            got, want = row.cells[lang].metrics, eval_only[lang]
            assert got["num_queries"] == want["num_queries"]
            for key in METRICS:
                assert got[key] == pytest.approx(want[key], abs=1e-6), (row.spec.name, lang, key)
    assert [row.cells["ch"].projection for row in table.rows] == ["tl_text_proj"] * 3
    assert table.rows[0].chance["R1"] == pytest.approx(100.0 * 3 / gallery)  # 3 views of each test person


@pytest.mark.slow
def test_cli_writes_the_three_files(trained_run, eval_only, no_fr, tmp_path: Path) -> None:
    out = tmp_path / "transfer"
    imgs = trained_run.data / "imgs"
    r = subprocess.run([sys.executable, "-m", "tools.transfer", "--checkpoint", str(trained_run.checkpoint),
                        "--data", f"synthetic={trained_run.data / 'annos'}:{imgs}", "--data", f"no_fr={no_fr}:{imgs}",
                        "--out", str(out), "--device", "cpu"], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["transfer.json", "transfer.md", "transfer_r1.png"]
    js = json.loads((out / "transfer.json").read_text(encoding="utf-8"))
    assert js["languages"] == LANGS and list(js["datasets"]) == ["synthetic", "no_fr"]
    for lang in LANGS:
        assert js["datasets"]["synthetic"]["cells"][lang]["metrics"]["R1"] == pytest.approx(eval_only[lang]["R1"],
                                                                                             abs=1e-6)
    assert js["datasets"]["no_fr"]["cells"]["fr"]["reason"] == "no test_reid_fr.json"
    md = (out / "transfer.md").read_text(encoding="utf-8")
    assert "— (no test_reid_fr.json)" in md and f"{eval_only['en']['R1']:.2f} / " in md
    with Image.open(out / "transfer_r1.png") as im:
        assert im.format == "PNG"
