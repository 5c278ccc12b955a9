"""tools/prepare_data.py on small files in each official raw format, plus translation merging."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.annotations import pair_entries, read_entries
from tests.data_fixtures import write_json
from tools.prepare_data import main

CAPS = ["A man in a red shirt.", "He wears black shoes."]


def _cuhk_like():
    return [
        {"split": "train", "id": 1, "file_path": "CUHK01/0001001.png", "captions": CAPS, "processed_tokens": [[]]},
        {"split": "train", "id": 1, "file_path": "CUHK01/0001002.png", "captions": ["A man in red.", " ... "]},
        {"split": "train", "id": 2, "file_path": "CUHK01/0002001.png", "captions": ["A woman."]},
        {"split": "val", "id": 3, "file_path": "CUHK03/3_1.png", "captions": ["A child."]},
        {"split": "test", "id": 4, "file_path": "test_query/p4_s1.jpg", "captions": CAPS},
        {"split": "test", "id": 5, "file_path": "test_query/p5_s1.jpg", "captions": ["A tall man."]},
    ]


def _icfg_like():
    return [{"split": s, "id": i, "file_path": f"{s}/{i:04d}/{i:04d}_{k}.jpg", "captions": [f"person {i} view {k}"]}
            for s, ids in (("train", (0, 1)), ("test", (7,))) for i in ids for k in range(2)]


def _rstp_like():
    return [{"split": s, "id": i, "img_path": f"{i:04d}_c1_{k}.jpg", "captions": [f"a person {i}", f"another {k}"]}
            for s, ids in (("train", (3903,)), ("val", (10,)), ("test", (11, 12))) for i in ids for k in range(2)]


def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_cuhk_format_counts_and_missing_images(tmp_path, capsys):
    raw = write_json(tmp_path / "reid_raw.json", _cuhk_like())
    imgs = tmp_path / "imgs" / "CUHK01"
    imgs.mkdir(parents=True)
    (imgs / "0001001.png").write_bytes(b"x")
    assert main(["--raw", str(raw), "--out", str(tmp_path / "annos"), "--image-dir", str(tmp_path / "imgs")]) == 0
    out = capsys.readouterr().out
    train = _load(tmp_path / "annos" / "train_reid_en.json")
    assert train[0] == {"file_path": "CUHK01/0001001.png", "id": 1, "captions": CAPS}
    assert train[1]["captions"] == ["A man in red."]  # the punctuation-only caption is dropped
    assert len(_load(tmp_path / "annos" / "val_reid_en.json")) == 1
    assert "train:      2 ids       3 images       4 captions" in out
    assert "test :      2 ids       2 images       3 captions" in out
    assert "dropped 1 empty caption" in out
    assert "5 image file(s) missing" in out and "  CUHK01/0002001.png" in out
    assert (tmp_path / "annos" / "missing_images.txt").read_text().count("\n") == 5
    read_entries(tmp_path / "annos" / "train_reid_en.json")  # loads through the project's reader


def test_icfg_format(tmp_path, capsys):
    raw = write_json(tmp_path / "ICFG-PEDES.json", _icfg_like())
    assert main(["--raw", str(raw), "--out", str(tmp_path / "annos")]) == 0
    assert "train:      2 ids       4 images       4 captions" in capsys.readouterr().out
    assert not (tmp_path / "annos" / "val_reid_en.json").exists()
    assert len(read_entries(tmp_path / "annos" / "test_reid_en.json")) == 2


def test_rstp_format_with_translations(tmp_path, capsys):
    raw = write_json(tmp_path / "data_captions.json", _rstp_like())
    ch = {e["img_path"]: [f"中文描述{j}" for j in range(len(e["captions"]))] for e in _rstp_like()}
    de = {e["img_path"]: [f"Beschreibung {j}" for j in range(len(e["captions"]))] for e in _rstp_like()}
    write_json(tmp_path / "ch.json", ch)
    write_json(tmp_path / "de.json", de)
    annos = tmp_path / "annos"
    assert main(["--raw", str(raw), "--out", str(annos), "--translation", f"ch={tmp_path / 'ch.json'}",
                 "--translation", f"de={tmp_path / 'de.json'}"]) == 0
    assert "wrote en, ch, de files" in capsys.readouterr().out
    for split in ("train", "val", "test"):
        for lang in ("ch", "de"):
            a, b = annos / f"{split}_reid_en.json", annos / f"{split}_reid_{lang}.json"
            pairs = pair_entries(read_entries(a), read_entries(b), str(a), str(b))
            assert pairs[0].file_path == _load(a)[0]["file_path"]
    assert _load(annos / "test_reid_ch.json")[0] == {"file_path": "0011_c1_0.jpg", "id": 11,
                                                     "captions": ["中文描述0", "中文描述1"]}


@pytest.mark.parametrize("change, expected", [
    ("count", "has 1 ch captions but 2 English ones"),
    ("missing", "no ch captions for"),
    ("extra", "1 file_path(s) not in the English annotations"),
])
def test_translation_mismatch_is_one_line_error(tmp_path, capsys, change, expected):
    raw = write_json(tmp_path / "data_captions.json", _rstp_like())
    ch = {e["img_path"]: ["描述一", "描述二"] for e in _rstp_like()}
    if change == "count":
        ch["0011_c1_0.jpg"] = ["描述一"]
    elif change == "missing":
        del ch["0011_c1_0.jpg"]
    else:
        ch["nope.jpg"] = ["描述"]
    write_json(tmp_path / "ch.json", ch)
    assert main(["--raw", str(raw), "--out", str(tmp_path / "annos"), "--translation", f"ch={tmp_path / 'ch.json'}"]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


@pytest.mark.slow
def test_bad_raw_file_and_help(tmp_path, capsys):
    raw = write_json(tmp_path / "raw.json", [{"split": "dev", "id": 1, "file_path": "a.jpg", "captions": ["x"]}])
    assert main(["--raw", str(raw), "--out", str(tmp_path / "annos")]) == 1
    assert "entry 0: 'split' must be one of train, val, test" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-m", "tools.prepare_data", "--help"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[1]).stdout
    assert "reid_raw.json" in help_text and "--translation" in help_text and "data_captions.json" in help_text
