"""Annotation loading: format checks and entry-by-entry alignment of two language files."""
from __future__ import annotations

import copy

import pytest

from data.annotations import DataError, has_split, load_split, person_indices, read_entries
from tests.data_fixtures import write_json
from tests.model_fixtures import tiny_config

EN = [{"file_path": "a/1.jpg", "id": 7, "captions": ["A man in red.", "He wears red."]},
      {"file_path": "a/2.jpg", "id": 7, "captions": ["A man in a red coat."]},
      {"file_path": "b/3.jpg", "id": 9, "captions": ["A woman with a bag.", "Blue skirt."]}]
CH = [{"file_path": "a/1.jpg", "id": 7, "captions": ["穿红衣服的男人。", "他穿着红色。"]},
      {"file_path": "a/2.jpg", "id": 7, "captions": ["穿红色大衣的男人。"]},
      {"file_path": "b/3.jpg", "id": 9, "captions": ["背着包的女人。", "蓝色裙子。"]}]


def _cfg(tmp_path, en, ch):
    write_json(tmp_path / "annos" / "train_reid_en.json", en)
    write_json(tmp_path / "annos" / "train_reid_ch.json", ch)
    return tiny_config(tmp_path, tmp_path)


def test_aligned_files_pair_entry_by_entry(tmp_path):
    pairs = load_split(_cfg(tmp_path, EN, CH), "train")
    assert [p.file_path for p in pairs] == ["a/1.jpg", "a/2.jpg", "b/3.jpg"]
    assert pairs[0].src_captions == ("A man in red.", "He wears red.")
    assert pairs[0].tgt_captions == ("穿红衣服的男人。", "他穿着红色。")
    assert [p.id for p in pairs] == [7, 7, 9]
    assert person_indices([p.id for p in pairs]) == {7: 0, 9: 1}


def _misaligned(kind):
    ch = copy.deepcopy(CH)
    if kind == "length":
        ch.pop()
    elif kind == "file_path":
        ch[1]["file_path"] = "a/other.jpg"
    elif kind == "id":
        ch[1]["id"] = 8
    else:
        ch[1]["captions"].append("多余的描述。")
    return ch


@pytest.mark.parametrize("kind, expected", [
    ("length", "3 vs 2 entries"),
    ("file_path", "at entry 1: file_path 'a/2.jpg' vs 'a/other.jpg'"),
    ("id", "at entry 1: id 7 vs 8"),
    ("captions", "at entry 1: 1 vs 2 captions"),
])
def test_misaligned_files_give_one_line_error(tmp_path, kind, expected):
    with pytest.raises(DataError) as err:
        load_split(_cfg(tmp_path, EN, _misaligned(kind)), "train")
    msg = str(err.value)
    assert "\n" not in msg
    assert "train_reid_en.json" in msg and "train_reid_ch.json" in msg and expected in msg


@pytest.mark.parametrize("content, expected", [
    ("[{", "invalid JSON"),
    ("[]", "empty list"),
    ('{"a": 1}', "expected a JSON list"),
    ('[{"file_path": "x.jpg", "captions": ["a man"]}]', "entry 0: missing field 'id'"),
    ('[{"file_path": "x.jpg", "id": "7", "captions": ["a man"]}]', "entry 0: 'id' must be an integer"),
    ('[{"file_path": 3, "id": 7, "captions": ["a man"]}]', "entry 0: 'file_path' must be a non-empty string"),
    ('[{"file_path": "x.jpg", "id": 7, "captions": "a man"}]', "entry 0: 'captions' must be a non-empty list"),
    ('[{"file_path": "x.jpg", "id": 7, "captions": []}]', "entry 0: 'captions' must be a non-empty list"),
    ('[{"file_path": "x.jpg", "id": 7, "captions": ["ok"]}, {"file_path": "y.jpg", "id": 7, "captions": ["  "]}]',
     "entry 1: caption 0 is empty or only punctuation"),
    ('[{"file_path": "x.jpg", "id": 7, "captions": ["ok", "。，！?"]}]', "entry 0: caption 1 is empty or only punctuation"),
    ('[{"file_path": "x.jpg", "id": 7, "captions": ["ok", 5]}]', "entry 0: caption 1 must be a string"),
])
def test_bad_files_give_one_line_error(tmp_path, content, expected):
    path = tmp_path / "test_reid_en.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_entries(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value) and expected in str(err.value)


def test_missing_file_and_has_split(tmp_path):
    cfg = _cfg(tmp_path, EN, CH)
    assert has_split(cfg, "train") and not has_split(cfg, "val")
    with pytest.raises(DataError, match="annotation file not found: .*val_reid_en.json"):
        load_split(cfg, "val")


def test_synthetic_val_split_is_used_when_present(synthetic_root, tmp_path):
    cfg = tiny_config(synthetic_root, tmp_path)
    assert has_split(cfg, "val") and len(load_split(cfg, "val")) == 2
