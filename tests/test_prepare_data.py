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
    assert main(["--raw", str(raw), "--out", str(tmp_path / "annos"), "--translation", f"ch={tmp_path / 'ch.json'}"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1


@pytest.mark.slow
def test_bad_raw_file_and_help(tmp_path, capsys):
    raw = write_json(tmp_path / "raw.json", [{"split": "dev", "id": 1, "file_path": "a.jpg", "captions": ["x"]}])
    assert main(["--raw", str(raw), "--out", str(tmp_path / "annos")]) == 2
    assert "entry 0: 'split' must be one of train, val, test" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-m", "tools.prepare_data", "--help"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parents[1]).stdout
    assert "reid_raw.json" in help_text and "--translation" in help_text and "data_captions.json" in help_text


def _run(tmp_path: Path, raw: Path, *extra: str) -> int:
    """main() on ``raw`` writing into tmp_path/annos; its output is read through capsys."""
    code = main(["--raw", str(raw), "--out", str(tmp_path / "annos"), *extra])
    return code


def _recognised(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("recognised: ")]
    assert len(lines) == 1, out
    return lines[0]


def _long(i: int) -> str:
    return " ".join(["word"] * 60) + f" person {i}"


_MAN = {"file_path": "imgs/1.jpg", "id": 1, "captions": ["a man"]}
_WOMAN = {"file_path": "imgs/2.jpg", "id": 2, "captions": ["a woman"]}


def _image(entry: dict, split: str) -> dict:
    return {"split": split, "id": entry["id"], "image": entry["file_path"], "captions": entry["captions"]}


@pytest.mark.parametrize("content, expected, first_test", [
    (_cuhk_like(), "CUHK-PEDES reid_raw.json (split field with val, file_path)",
     {"file_path": "test_query/p4_s1.jpg", "id": 4, "captions": CAPS}),
    (_icfg_like(), "ICFG-PEDES ICFG-PEDES.json (split field with train/test only, file_path)",
     {"file_path": "test/0007/0007_0.jpg", "id": 7, "captions": ["person 7 view 0"]}),
    (_rstp_like(), "RSTPReid data_captions.json (split field, img_path)",
     {"file_path": "0011_c1_0.jpg", "id": 11, "captions": ["a person 11", "another 0"]}),
    ([_image(_MAN, "train"), _image(_WOMAN, "test")], "UFineBench JSON (entries with an 'image' field)", _WOMAN),
    ({"annotations": [_MAN | {"split": "train"}, _WOMAN | {"split": "test"}]},
     "UFineBench JSON (entries under the key 'annotations')", _WOMAN),
    ({"train": [_MAN], "test": [_WOMAN]}, "UFineBench JSON (entries under the keys train, test)", _WOMAN),
    ([_MAN | {"split": "train", "captions": [_long(1)]}, _WOMAN | {"split": "test", "captions": [_long(2)]}],
     "UFineBench JSON (split field, captions of 62.0 words on average)", _WOMAN | {"captions": [_long(2)]}),
])
def test_each_format_is_recognised_by_content(tmp_path, capsys, content, expected, first_test):
    assert _run(tmp_path, write_json(tmp_path / "annotations.json", content)) == 0
    assert _recognised(capsys.readouterr().out) == f"recognised: {expected}"
    assert _load(tmp_path / "annos" / "test_reid_en.json")[0] == first_test
    assert _load(tmp_path / "annos" / "train_reid_en.json")[0]["id"] in (0, 1, 3903)


def _caption_all(ids: list[int]) -> list[dict]:
    return [{"id": i, "file_path": f"CUHK01/{i:05d}.png", "captions": [f"person {i}"]} for i in ids]


def test_caption_all_gets_the_standard_split_by_identity(tmp_path, capsys):
    ids = [7 + 3 * k for k in range(13003)]
    shuffled = ids[1::2] + ids[0::2]  # not in id order in the file
    assert _run(tmp_path, write_json(tmp_path / "captions.json", _caption_all(shuffled))) == 0
    out = capsys.readouterr().out
    assert _recognised(out) == ("recognised: CUHK-PEDES caption_all.json (no split field): standard split by "
                                "identity 11003/1000/1000 of 13003 identities")
    assert "train:  11003 ids   11003 images   11003 captions" in out
    assert "val  :   1000 ids    1000 images    1000 captions" in out
    assert "test :   1000 ids    1000 images    1000 captions" in out
    got = {s: sorted(e["id"] for e in _load(tmp_path / "annos" / f"{s}_reid_en.json")) for s in ("train", "val", "test")}
    assert got["train"] == ids[:11003] and got["val"] == ids[11003:12003] and got["test"] == ids[12003:]
    assert min(got["train"]) == 7 and max(got["test"]) == 7 + 3 * 13002


def test_caption_all_with_split_counts(tmp_path, capsys):
    entries = _caption_all([5, 1, 4, 2, 3, 6]) + [{"id": 6, "file_path": "CUHK01/00006b.png", "captions": ["again"]}]
    assert _run(tmp_path, write_json(tmp_path / "caption_all.json", entries), "--split-counts", "3,1,2") == 0
    out = capsys.readouterr().out
    assert _recognised(out).endswith("split by identity 3/1/2 of 6 identities (--split-counts)")
    assert [e["id"] for e in _load(tmp_path / "annos" / "train_reid_en.json")] == [1, 2, 3]
    assert [e["id"] for e in _load(tmp_path / "annos" / "val_reid_en.json")] == [4]
    assert [e["id"] for e in _load(tmp_path / "annos" / "test_reid_en.json")] == [5, 6, 6]
    assert "test :      2 ids       3 images       3 captions" in out


@pytest.mark.parametrize("extra, expected", [
    ((), "found 6 identities, but the standard CUHK-PEDES split expects 13003 (pass --split-counts"),
    (("--split-counts", "3,1,1"), "found 6 identities, but --split-counts 3,1,1 sums to 5"),
    (("--split-counts", "3,1"), "--split-counts expects TRAIN,VAL,TEST"),
])
def test_caption_all_of_another_size_is_refused(tmp_path, capsys, extra, expected):
    assert _run(tmp_path, write_json(tmp_path / "caption_all.json", _caption_all(list(range(6)))), *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "annos").exists()


def test_split_counts_refused_for_a_file_with_splits(tmp_path, capsys):
    assert _run(tmp_path, write_json(tmp_path / "x.json", _icfg_like()), "--split-counts", "1,0,1") == 2
    assert "--split-counts applies only to a file without split field" in capsys.readouterr().err


def test_our_own_files_pass_through_validated(tmp_path, capsys):
    src = tmp_path / "src"
    en = [{"file_path": "a.jpg", "id": 1, "captions": ["a man", "a tall man"]}]
    write_json(src / "test_reid_en.json", en)
    write_json(src / "test_reid_ch.json", [{"file_path": "a.jpg", "id": 1, "captions": ["男人", "高个子男人"]}])
    write_json(src / "train_reid_en.json", en + [{"file_path": "b.jpg", "id": 2, "captions": ["a woman"]}])
    write_json(src / "train_reid_ch.json", [en[0] | {"captions": ["男人", "高"]}, {"file_path": "b.jpg", "id": 2,
                                                                              "captions": ["女人"]}])
    assert _run(tmp_path, src) == 0
    assert _recognised(capsys.readouterr().out) == ("recognised: our {split}_reid_{lang}.json files: 4 file(s) "
                                                    "validated and passed through (splits train, test; languages en, ch)")
    assert _load(tmp_path / "annos" / "test_reid_ch.json") == _load(src / "test_reid_ch.json")
    assert _load(tmp_path / "annos" / "train_reid_en.json") == _load(src / "train_reid_en.json")
    fr = write_json(tmp_path / "fr.json", {"a.jpg": ["un homme", "un grand homme"]})
    assert main(["--raw", str(src / "test_reid_en.json"), "--out", str(tmp_path / "one"), "--translation",
                 f"fr={fr}"]) == 0
    assert "languages en)" in capsys.readouterr().out
    assert _load(tmp_path / "one" / "test_reid_fr.json")[0]["captions"] == ["un homme", "un grand homme"]
    write_json(src / "val_reid_en.json", [{"file_path": "c.jpg", "id": "3", "captions": ["x"]}])
    assert _run(tmp_path, src) == 2
    assert "val_reid_en.json: entry 0: 'id' must be an integer, got '3'" in capsys.readouterr().err


def test_translation_aligned_by_file_path_and_caption_index(tmp_path, capsys):
    raw = _rstp_like()
    raw[0]["captions"] = ["a person", " .. ", "a third one"]  # caption 1 is dropped from the source
    ch = [{"img_path": e["img_path"], "captions": [f"{e['img_path']} 描述{j}" for j in range(len(e["captions"]))]}
          for e in raw][::-1]  # a list of entries, in reverse order
    tr = write_json(tmp_path / "ch.json", ch)
    assert _run(tmp_path, write_json(tmp_path / "data_captions.json", raw), "--translation", f"ch={tr}") == 0
    train_ch = _load(tmp_path / "annos" / "train_reid_ch.json")
    assert train_ch[0] == {"file_path": "3903_c1_0.jpg", "id": 3903,
                           "captions": ["3903_c1_0.jpg 描述0", "3903_c1_0.jpg 描述2"]}
    assert [e["file_path"] for e in train_ch] == [e["file_path"] for e in _load(tmp_path / "annos" / "train_reid_en.json")]
    assert "dropped 1 empty caption(s)" in capsys.readouterr().out


@pytest.mark.parametrize("change, expected", [
    ("short", "'0010_c1_1.jpg' caption 1 cannot be aligned: has 1 ch captions but 2 English ones (val entry 1)"),
    ("empty", "'0010_c1_0.jpg' caption 0 cannot be aligned: the ch caption is empty or not a string: '...' (val entry 0)"),
    ("missing", "no ch captions for '0011_c1_0.jpg' caption 0 (test entry 0)"),
])
def test_first_unalignable_translation_is_named(tmp_path, capsys, change, expected):
    mapping = {e["img_path"]: ["描述一", "描述二"] for e in _rstp_like()}
    mapping["0010_c1_1.jpg"] = ["描述一"] if change == "short" else mapping["0010_c1_1.jpg"]
    mapping["0010_c1_0.jpg"][0] = "..." if change == "empty" else "描述一"
    if change == "missing":
        del mapping["0011_c1_0.jpg"], mapping["0012_c1_1.jpg"]
    shuffled = dict(sorted(mapping.items(), reverse=True))
    tr = write_json(tmp_path / "ch.json", shuffled)
    assert _run(tmp_path, write_json(tmp_path / "rstp.json", _rstp_like()), "--translation", f"ch={tr}") == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {tr}: {expected}\n"
    assert captured.out.startswith("recognised: RSTPReid") and not (tmp_path / "annos").exists()


def test_conversion_prints_the_data_audit(tmp_path, capsys):
    """The audit of data/audit.py runs on what was converted: warnings, and the files are still written."""
    entries = _cuhk_like()
    entries[4]["captions"] = ["A tall man.", "Man."]  # "Man." is one word
    entries[5]["captions"] = ["a tall man"]  # id 4's caption, after cleaning and case folding
    raw = write_json(tmp_path / "reid_raw.json", entries)
    assert main(["--raw", str(raw), "--out", str(tmp_path / "annos"), "--image-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "data audit: 3 files, 8 captions, 2 warnings" in out
    assert "warning: same caption, different people: 1 (test/en 1)" in out
    assert "warning: empty or one-word captions: 1 (test/en 1)" in out
    assert (tmp_path / "annos" / "test_reid_en.json").is_file()


def test_split_files_of_an_earlier_conversion_are_reported(tmp_path, capsys):
    """ICFG-PEDES has no val split: a val file left in --out by an earlier conversion would still
    select the checkpoints, so the conversion says so (and leaves it alone)."""
    (tmp_path / "annos").mkdir()
    (tmp_path / "annos" / "val_reid_en.json").write_text("[]")
    raw = write_json(tmp_path / "ICFG-PEDES.json", _icfg_like())
    assert main(["--raw", str(raw), "--out", str(tmp_path / "annos")]) == 0
    out = capsys.readouterr().out
    assert "also holds val_reid_en.json from before" in out
    assert (tmp_path / "annos" / "val_reid_en.json").read_text() == "[]"
