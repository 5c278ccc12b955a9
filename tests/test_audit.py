"""The data audit of ``--check`` (data/audit.py): each finding counted exactly on a crafted
annotation folder, a clean folder without warnings, and the audit printed by ``--check``
without failing it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import main as cli
from data import audit as A
from data.text import clean_caption
from tests.engine_fixtures import edit_annos
from tests.model_fixtures import SENTENCES, tiny_config, tiny_config_file

COLORS = ["red", "blue", "green", "black"]
CH_COLORS = ["红色", "蓝色", "绿色", "黑色"]


def entries(lang: str, ids: list[int], images: int = 2, start: int = 0) -> list[dict[str, Any]]:
    """``images`` images per id, two distinct captions each, in ``lang``'s script."""
    out, k = [], start
    for pid in ids:
        for v in range(images):
            caps = []
            for _ in range(2):
                caps.append(f"第{k}个人穿着{CH_COLORS[k % 4]}衬衫" if lang == "ch"
                            else f"the person number {k} wears a {COLORS[k % 4]} shirt")
                k += 1
            out.append({"file_path": f"{pid}/{v}.jpg", "id": pid, "captions": caps})
    return out


def clean_set() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """train (ids 1, 2) and test (ids 3, 4), en and ch, two images per person: nothing to report."""
    return {"train": {lang: entries(lang, [1, 2]) for lang in ("en", "ch")},
            "test": {lang: entries(lang, [3, 4], start=100) for lang in ("en", "ch")}}


def write_folder(root: Path, data: dict[str, dict[str, list[dict[str, Any]]]]) -> Path:
    (root / "annos").mkdir(parents=True)
    for split, by_lang in data.items():
        for lang, items in by_lang.items():
            (root / "annos" / f"{split}_reid_{lang}.json").write_text(json.dumps(items, ensure_ascii=False),
                                                                       encoding="utf-8")
    return root


def audit_folder(tmp_path: Path, data: dict, text_dir: Path, *overrides: str) -> A.AuditReport:
    """Write ``data`` as annotation files and audit them as ``--check`` does (files read, run's tokenizer)."""
    root = write_folder(tmp_path / "data", data)
    cfg = tiny_config(root, tmp_path / "cfg", *overrides, text_encoder=str(text_dir))
    return A.audit(cfg, [(s, lang) for s, by_lang in data.items() for lang in by_lang])


def counts(report: A.AuditReport) -> dict[str, int]:
    return {f.name: f.count for f in report.findings if f.name in (*A.WARNING_NAMES, A.SINGLE)}


def test_clean_folder_gives_no_warnings(tmp_path, tiny_text_dir):
    report = audit_folder(tmp_path, clean_set(), tiny_text_dir)
    assert report.warnings == [] and set(counts(report).values()) == {0}
    assert (report.files, report.captions) == (4, 32)
    text = A.format_audit(report)
    assert text.startswith("data audit: 4 files, 32 captions, 0 warnings (")
    assert "  no findings: " + ", ".join([*A.WARNING_NAMES, A.SINGLE]) in text
    assert "warning:" not in text and "info:" not in text


def test_same_caption_for_different_people(tmp_path, tiny_text_dir):
    data = clean_set()
    en = data["train"]["en"]
    en[0]["captions"][0] = "A man in a RED shirt."  # id 1
    en[2]["captions"][1] = "a man in a red shirt"  # id 2: the same once cleaned and case-folded
    en[1]["captions"][0] = "a man in a red shirt"  # id 1 again: no new person
    test = data["test"]["en"]
    for i in (0, 2):  # ids 3 and 4
        test[i]["captions"][0] = "the same words"
    test[1]["captions"][0] = "The same words"  # id 3 again
    data["train"]["ch"][0]["captions"][0] = data["train"]["ch"][2]["captions"][0]
    report = audit_folder(tmp_path, data, tiny_text_dir)
    f = report.get(A.SHARED)
    assert f.count == 3 and dict(f.by_place) == {"train/en": 1, "train/ch": 1, "test/en": 1}
    assert f.examples[0] == 'train/en[0] ids 1, 2: "a man in a red shirt"'
    assert [w.name for w in report.warnings] == [A.SHARED]
    assert "  warning: same caption, different people: 3 (train/en 1, train/ch 1, test/en 1), e.g. " in \
        A.format_audit(report)


def test_empty_and_one_word_captions():
    data = clean_set()
    en, ch = data["train"]["en"], data["train"]["ch"]
    en[0]["captions"] = ["man", "a ,", "red shirt", "", "... !"]  # short: man, "a ,", "", "... !"
    ch[0]["captions"] = ["男人", "一个男人", "男 ，", "man"]  # short: 男人, 男 ，, man
    f = A.audit_entries(data).get(A.SHORT)
    assert f.count == 7 and dict(f.by_place) == {"train/en": 4, "train/ch": 3}
    assert f.examples == ['train/en[0] "man"', 'train/en[0] "a ,"', 'train/en[0] ""']


def test_control_characters_replacement_character_and_code():
    data = clean_set()
    en = data["train"]["en"]
    en[0]["captions"] = ["a man\x07 in red", "a man\x85 walks", "tabs\tand\nnew lines\r are spaces",
                         "a bag \ufffd strap"]
    en[1]["captions"] = ["a man<br>in red", "black &amp; white", "red shirt\\nblue jeans", "a {color} shirt",
                         "see http://example.com", "height < 170 cm and weight > 60 kg", "a backslash \\ alone"]
    report = A.audit_entries(data)
    assert counts(report)[A.CONTROL] == 2 and counts(report)[A.FFFD] == 1 and counts(report)[A.CODE] == 5
    assert report.get(A.CONTROL).examples == ['train/en[0] "a man\\x07 in red"', 'train/en[0] "a man\\x85 walks"']
    assert report.get(A.FFFD).examples == ['train/en[0] "a bag \\ufffd strap"']
    assert report.get(A.CODE).examples[:2] == ['train/en[1] "a man<br>in red"', 'train/en[1] "black &amp; white"']
    assert len(report.warnings) == 3


def test_wrong_script():
    data = clean_set()
    data["train"]["ch"][1]["captions"][0] = "a man in a red shirt"  # no Han character
    data["train"]["ch"][2]["captions"][0] = "穿红色 T-shirt 的人"  # Han: fine
    data["test"]["en"][0]["captions"][1] = "a man wearing 红色 shoes"
    data["test"]["en"][1]["captions"][1] = "a man in a red shirt，"  # full-width comma: not a script
    data["test"]["fr"] = entries("fr", [3, 4], start=100)
    data["test"]["fr"][2]["captions"][0] = "une femme avec un sac にほん"
    data["test"]["xx"] = [{"file_path": "3/0.jpg", "id": 3, "captions": ["任何 text"]}]  # unknown language
    f = A.audit_entries(data).get(A.SCRIPT)
    assert f.count == 3 and dict(f.by_place) == {"train/ch": 1, "test/en": 1, "test/fr": 1}
    assert f.examples[1] == 'test/en[0] "a man wearing 红色 shoes"'


def test_duplicate_images_and_single_image_people():
    data = clean_set()
    for lang in ("en", "ch"):  # the same duplicate in both aligned files counts once
        data["train"][lang].append(dict(data["train"][lang][0]))
        data["test"][lang] += entries(lang, [9], images=1, start=500)  # id 9: one image
    data["train"]["en"] += entries("en", [8], images=1, start=600)  # id 8: only in the en file
    report = A.audit_entries(data)
    assert counts(report)[A.DUP_IMAGES] == 1 and report.get(A.DUP_IMAGES).examples == ["train 1/0.jpg x2"]
    single = report.get(A.SINGLE)
    assert single.count == 2 and single.level == A.INFO and dict(single.by_place) == {"train": 1, "test": 1}
    assert single.examples == ["train id 8 (8/0.jpg)", "test id 9 (9/0.jpg)"]
    assert [w.name for w in report.warnings] == [A.DUP_IMAGES]
    text = A.format_audit(report)
    assert "  info: single-image people: 2 (train 1, test 1): in val/test each of their captions has one " \
           "relevant gallery image, the one it describes" in text


def test_lengths_in_tokens_as_the_run_tokenizes(tmp_path, tiny_text_dir):
    data = clean_set()
    words = SENTENCES[0].split()  # what the tiny tokenizer knows: about a token a word
    for split in ("train", "test"):
        for i, e in enumerate(data[split]["en"]):
            e["captions"] = [" ".join(words[:3 + 2 * i + j]) for j in range(2)]
    long = " ".join([SENTENCES[0]] * 3)  # 42 words
    data["test"]["en"][0]["captions"][0] = long
    data["train"]["en"][1]["captions"][1] = long + " again"
    report = audit_folder(tmp_path, data, tiny_text_dir, "experiment.text_length=32")
    from model.text import build_tokenizer

    tok = build_tokenizer(str(tiny_text_dir))
    cut = " ".join(long.split()[:32])  # the run cuts to text_length (32) words before tokenizing
    captions = [cut if c.startswith(long) else c
                for s in ("train", "test") for e in data[s]["en"] for c in e["captions"]]
    lengths = np.array([len(tok(c)["input_ids"]) for c in captions])
    assert lengths.max() > 32 and np.sort(lengths)[-3] <= 32  # exactly the two long captions exceed
    f = report.get("caption length (en)")
    assert f.level == A.INFO and f.count == 2 and dict(f.by_place) == {"en": 2}
    p95 = int(np.sort(lengths)[int(np.ceil(0.95 * (len(lengths) - 1)))])
    assert f.detail == (f"mean {lengths.mean():.1f}, p95 {p95} tokens (with <s> </s>); "
                        f"2 of 16 over text_length 32, cut there")
    assert f.examples[0].startswith(f"train/en[1] {lengths.max()}: \"a man wearing")
    assert report.get("caption length (ch)").count == 0 and report.warnings == []


def test_lengths_in_words_without_a_tokenizer():
    data = {"train": {"en": [{"file_path": "a.jpg", "id": 1, "captions": ["one two three", "one two three four five"]},
                             {"file_path": "b.jpg", "id": 1, "captions": ["one two three four five six seven"]}]}}
    f = A.audit_entries(data, text_length=6).get("caption length (en)")
    assert f.detail == "mean 5.0, p95 7 words (no tokenizer: whitespace words); 1 of 3 over text_length 6, cut there"
    assert f.examples == ['train/en[1] 7: "one two three four five six seven"']
    assert "over text_length" not in A.audit_entries(data).get("caption length (en)").detail


def test_at_most_three_examples_and_entry_objects():
    from data.annotations import Entry

    items = [Entry(f"{i}.jpg", i, (f"x<b>{i}</b> y z",)) for i in range(5)]
    report = A.audit_entries({"val": {"de": items}}, clean=clean_caption)
    f = report.get(A.CODE)
    assert f.count == 5 and f.examples == ['val/de[0] "x<b>0</b> y z"', 'val/de[1] "x<b>1</b> y z"',
                                           'val/de[2] "x<b>2</b> y z"']
    line = next(x for x in A.format_audit(report).splitlines() if "code fragments" in x)
    assert line.count("val/de[") == 3 and line.startswith("  warning: code fragments: 5 (val/de 5), e.g. ")


def test_check_prints_the_audit_and_still_passes(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cfg = tiny_config_file(data, tmp_path / "out")

    def share(items: list[dict]) -> None:
        other = next(i for i, e in enumerate(items) if e["id"] != items[0]["id"])
        items[other]["captions"][0] = items[0]["captions"][0].upper()

    assert cli.main(["--check", "--config", str(cfg)]) == 0
    before = capsys.readouterr().out
    assert "\ndata audit: " in before and "same caption, different people" in before.split("  no findings: ")[-1]
    edit_annos(data, "test", "en", share)
    rc = cli.main(["--check", "--config", str(cfg)])
    out = capsys.readouterr().out
    assert rc == 0
    audit = out[out.index("\ndata audit: ") + 1:].splitlines()
    assert audit[0].startswith("data audit: 6 files, ")
    assert audit[1].startswith("  warning: same caption, different people: 1 (test/en 1), e.g. test/en[0] ids ")
    assert out.index("data audit:") > out.index("\ntest ") and out.rstrip().endswith(f"config OK: {cfg}")


@pytest.mark.parametrize("text,at,shown", [("short", 0, '"short"'), ("x" * 60, 59, '"...' + "x" * 48 + '"'),
                                           ("a\x00b", 1, '"a\\x00b"')])
def test_excerpt(text, at, shown):
    assert A._excerpt(text, at) == shown
