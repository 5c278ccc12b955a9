"""Synthetic dataset: determinism, real annotation format, aligned translations, loadable tokenizer, attribute mixes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.annotations import load_split
from synthetic.captions import (BAGS, BUILDS, CH_WORDS, COLOURS, GENDERS, HAIR_COLOURS, HAIR_STYLES, HATS, LOWERS,
                                MIXES, OBJECTS, PATTERNS, SKINS, UPPERS, Identity, Mix, sample_identity)
from synthetic.generate import build_annotations, main, sample_identities
from synthetic.reference import write_reference_levels
from tests.data_fixtures import make_synthetic
from tests.model_fixtures import tiny_config

CJK = re.compile(r"[\u4e00-\u9fff]")


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_identical_files_other_seed_differs(synthetic_root, tmp_path):
    again = _files(make_synthetic(tmp_path / "again"))
    first = _files(synthetic_root)
    assert again.keys() == first.keys() and all(again[k] == first[k] for k in first)
    other = _files(make_synthetic(tmp_path / "other", seed=1))
    assert other.keys() == first.keys()
    imgs = [k for k in first if k.suffix == ".png"]
    assert sum(other[k] != first[k] for k in imgs) == len(imgs)
    assert other[next(k for k in first if k.name == "train_reid_en.json")] != first[next(
        k for k in first if k.name == "train_reid_en.json")]


def test_layout_and_format(synthetic_root):
    for split, n_ids in (("train", 4), ("val", 1), ("test", 3)):
        for lang in ("en", "ch", "fr", "de"):
            entries = json.loads((synthetic_root / "annos" / f"{split}_reid_{lang}.json").read_text(encoding="utf-8"))
            assert len(entries) == n_ids * 2 and len({e["id"] for e in entries}) == n_ids
            for e in entries:
                assert set(e) == {"file_path", "id", "captions"} and len(e["captions"]) == 2
                assert (synthetic_root / "imgs" / e["file_path"]).is_file()
                if lang == "ch":
                    assert all(CJK.search(c) for c in e["captions"])
    ids = {s: {e["id"] for e in json.loads((synthetic_root / "annos" / f"{s}_reid_en.json").read_text())}
           for s in ("train", "val", "test")}
    assert not ids["train"] & ids["test"] and not ids["train"] & ids["val"] and not ids["val"] & ids["test"]


@pytest.mark.parametrize("tgt", ["ch", "fr", "de"])
def test_annotations_load_through_the_real_code_path(synthetic_root, tmp_path, tgt):
    cfg = tiny_config(synthetic_root, tmp_path, f"data.target_language={tgt}")
    for split in ("train", "val", "test"):
        pairs = load_split(cfg, split)
        assert pairs and all(len(p.src_captions) == len(p.tgt_captions) == 2 for p in pairs)
        assert pairs[0].src_captions != pairs[0].tgt_captions


def test_captions_vary_in_wording_and_order(tmp_path):
    root = make_synthetic(tmp_path / "s", train_ids=20, val_ids=0, test_ids=2, images_per_id=2, size=(16, 8))
    caps = [c for e in json.loads((root / "annos" / "train_reid_en.json").read_text()) for c in e["captions"]]
    assert len(set(caps)) == len(caps)
    assert len({c.split()[0] for c in caps}) >= 2 and len({c.split()[2] for c in caps}) >= 5
    assert not (root / "annos" / "val_reid_en.json").exists()


@pytest.mark.slow
def test_tokenizer_folder_loads_offline_and_knows_chinese(synthetic_root):
    code = (
        "import json, sys\n"
        "from transformers import AutoTokenizer\n"
        "root = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(root + '/text_encoder')\n"
        "cfg = json.load(open(root + '/text_encoder/config.json'))\n"
        "assert cfg['vocab_size'] == len(tok) and cfg['model_type'] == 'xlm-roberta'\n"
        "assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)\n"
        "assert tok.mask_token_id == len(tok) - 1\n"
        "from data.text import clean_caption\n"
        "caps = [clean_caption(c) for e in json.load(open(root + '/annos/test_reid_ch.json')) for c in e['captions']]\n"
        "ids = tok(caps)['input_ids']\n"
        "assert all(tok.unk_token_id not in x for x in ids)\n"
        "import unicodedata\n"  # the XLM-R normaliser (nmt_nfkc) turns '，' into ','
        "assert all(tok.decode(x, skip_special_tokens=True).replace(' ', '') == unicodedata.normalize('NFKC', c).replace(' ', '')\n"
        "           for x, c in zip(ids, caps))\n"
        "assert any('红' in p for x in ids for p in tok.convert_ids_to_tokens(x))\n"
        "print('ok')\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code, str(synthetic_root)], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    cfg = json.loads((synthetic_root / "text_encoder" / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_attention_heads"], cfg["max_position_embeddings"], cfg["layer_norm_eps"]) == (32, 4, 130, 1e-5)
    assert {"sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(synthetic_root / "text_encoder"))


def test_tokenizer_cuts_like_sentencepiece_at_word_boundaries(synthetic_root):
    """The HF tokenizer reads the model as unigram pieces; it must cut exactly as SentencePiece
    does, keep en/fr/de words whole and cut Chinese into the words of the caption tables."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from data.text import clean_caption

    folder = synthetic_root / "text_encoder"
    tok = AutoTokenizer.from_pretrained(str(folder))
    sp = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.bpe.model"))
    words = {clean_caption(w) for w in CH_WORDS}
    colours = {c[2] for c in COLOURS.values()}
    for lang in ("en", "ch", "fr", "de"):
        caps = [clean_caption(c) for split in ("train", "test")
                for e in json.loads((synthetic_root / "annos" / f"{split}_reid_{lang}.json").read_text(encoding="utf-8"))
                for c in e["captions"]]
        for cap in caps:
            pieces = tok.tokenize(cap)
            assert pieces == sp.encode(cap, out_type=str)
            if lang == "ch":  # a table word or a single character; the words are found, not cut
                assert all(len(CJK.findall(p)) <= 1 or p.lstrip("\u2581") in words for p in pieces), pieces
                assert all(c in pieces for c in colours if c in cap), pieces  # a colour is one piece
            else:  # words are whole pieces; the ',' and '-' that upstream cleaning keeps are pieces of their own
                assert "".join(pieces).split("\u2581")[1:] == cap.split(), pieces
                assert all(f"\u2581{w}" in pieces for w in cap.split() if w.isalpha()), pieces


def _text_encoder_state(folder: Path, caption: str) -> tuple[int, int, int, list[int]]:
    """tokenizer.json's vocabulary size, the SentencePiece piece count, config.json's vocab_size, ``caption``'s ids."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    from data.text import clean_caption

    vocab = len(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])
    pieces = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.bpe.model")).get_piece_size()
    config = json.loads((folder / "config.json").read_text())["vocab_size"]
    return vocab, pieces, config, AutoTokenizer.from_pretrained(str(folder))(clean_caption(caption))["input_ids"]


def test_regenerating_with_other_arguments_rewrites_a_consistent_text_encoder(tmp_path):
    """A folder generated again with other arguments holds the tokenizer of the new captions only: before,
    the Hugging Face tokenizer was loaded from the folder's old tokenizer.json and saved back, so
    tokenizer.json and config.json's vocab_size disagreed with the new SentencePiece model."""
    small = {"val_ids": 0, "test_ids": 2, "images_per_id": 1, "size": (16, 8), "hidden_size": 16}
    again = make_synthetic(tmp_path / "again", train_ids=2, **small)
    make_synthetic(again, train_ids=40, **small)
    fresh = make_synthetic(tmp_path / "fresh", train_ids=40, **small)
    caption = json.loads((fresh / "annos" / "train_reid_ch.json").read_text(encoding="utf-8"))[-1]["captions"][0]
    vocab, pieces, config, ids = _text_encoder_state(fresh / "text_encoder", caption)
    assert vocab == pieces + 2 == config  # fairseq offset 1 (<s> <pad> </s> <unk> for unk bos eos) and <mask>
    assert _text_encoder_state(again / "text_encoder", caption) == (vocab, pieces, config, ids)
    assert _files(again / "text_encoder") == _files(fresh / "text_encoder")


def test_val_and_test_people_do_not_depend_on_the_number_of_training_people(tmp_path):
    small = make_synthetic(tmp_path / "a", train_ids=3, val_ids=2, test_ids=3, images_per_id=2, size=(16, 8))
    large = make_synthetic(tmp_path / "b", train_ids=9, val_ids=2, test_ids=3, images_per_id=2, size=(16, 8),
                           train_images_per_id=1)
    for split in ("val", "test"):
        for lang in ("en", "ch"):
            name = f"annos/{split}_reid_{lang}.json"
            assert (small / name).read_bytes() == (large / name).read_bytes()
        for img in sorted((small / "imgs" / split).iterdir()):
            assert img.read_bytes() == (large / "imgs" / split / img.name).read_bytes()
    levels = [json.loads((r / "annos" / "reference_levels.json").read_text()) for r in (small, large)]
    assert levels[0] == levels[1]
    train = json.loads((large / "annos" / "train_reid_en.json").read_text())
    assert len(train) == 9 and len({e["id"] for e in train}) == 9  # one image per training person
    held_out = {e["id"] for split in ("val", "test") for e in json.loads((large / "annos" / f"{split}_reid_en.json").read_text())}
    assert held_out.isdisjoint(e["id"] for e in train)


def test_the_library_does_not_import_the_generator():
    """Training and evaluation never load the synthetic package: no module of data/, model/,
    engine/ or utils/ imports it (the reference file's name comes from data.annotations)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    for path in sorted(p for package in ("data", "model", "engine", "utils") for p in (root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "synthetic" or n.startswith("synthetic.") for n in names), path


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--train-ids", "2", "--val-ids", "0", "--test-ids", "2",
          "--images-per-id", "1", "--size", "16x8", "--hidden-size", "16"])
    out = capsys.readouterr().out
    assert "train: 2 ids, 2 images, 4 captions" in out
    args = ["--out", str(tmp_path / "cli2"), "--train-ids", "3", "--val-ids", "0", "--test-ids", "2",
            "--images-per-id", "2", "--train-images-per-id", "1", "--size", "16x8", "--hidden-size", "16", "--reuse"]
    main(args)  # no record yet: generated
    out = capsys.readouterr().out
    assert "train: 3 ids, 3 images, 6 captions" in out and "test : 2 ids, 4 images, 8 captions" in out
    main(args)  # the same arguments: nothing rewritten
    assert capsys.readouterr().out == f"kept {tmp_path / 'cli2'}: generated with these arguments\n"
    main(args + ["--train-ids", "4"])  # other arguments (the last --train-ids counts): generated again
    assert "train: 4 ids, 4 images, 8 captions" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--size", "big"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--hidden-size", "30"])


# Mix row -> (vocabulary, the Identity fields drawn from it); hair_style and lower have a row per gender.
MIX_ROWS: dict[str, tuple[tuple | dict | range, tuple[str, ...]]] = {
    "gender": (GENDERS, ("gender",)), "build": (BUILDS, ("build",)), "skin": (range(len(SKINS)), ("skin",)),
    "hair_style": (HAIR_STYLES, ("hair_style",)), "hair_colour": (HAIR_COLOURS, ("hair_colour",)),
    "upper": (UPPERS, ("upper",)), "pattern": (PATTERNS, ("pattern",)), "lower": (LOWERS, ("lower",)),
    "colour": (COLOURS, ("upper_colour", "lower_colour", "shoes_colour", "bag_colour", "hat_colour")),
    "bag": (BAGS, ("bag",)), "hat": (HATS, ("hat",)), "obj": (OBJECTS, ("obj",))}


def _rows(mix: Mix) -> dict[str, tuple[float, ...]]:
    """Every row of probabilities of ``mix``, a per-gender row named e.g. 'lower/man'."""
    out = {}
    for name in MIX_ROWS:
        value = getattr(mix, name)
        out.update({f"{name}/{g}": value[g] for g in GENDERS} if isinstance(value, dict) else {name: value})
    return out


@pytest.mark.parametrize("name", list(MIXES))
def test_mix_rows_are_distributions_over_the_shared_vocabulary(name):
    rows = _rows(MIXES[name])
    assert set(MIX_ROWS) == {f.name for f in dataclasses.fields(Mix)}
    assert {a for _, names in MIX_ROWS.values() for a in names} == {f.name for f in dataclasses.fields(Identity)}
    for row, p in rows.items():
        assert len(p) == len(MIX_ROWS[row.split("/")[0]][0]) and min(p) >= 0, row
        assert math.isclose(sum(p), 1.0, abs_tol=1e-12), (row, sum(p))
    assert rows["lower/man"][LOWERS.index("skirt")] == 0  # skirts only for women


def test_default_mix_draws_the_people_it_drew_before_mixes_existed():
    """Hashes recorded with the generator before mixes existed: the default mix keeps every
    draw (uniform rows drawn without probabilities, a man's two lower garments as before)."""
    people = sample_identities(11, {"train": 300, "val": 20, "test": 40})
    assert people == sample_identities(11, {"train": 300, "val": 20, "test": 40}, "default")
    assert hashlib.sha256(repr(people).encode()).hexdigest() == \
        "dab417381c545898fc0b91caf48bd46510379b06fed20a3b16bee8f8886ce997"
    rng = np.random.default_rng(5)
    assert hashlib.sha256(repr([sample_identity(rng) for _ in range(2000)]).encode()).hexdigest() == \
        "0bb4b8e57fe98e94f261a7ef95da58b6671b6f17df6228e76d439c6de51583c2"
    with pytest.raises(ValueError, match="unknown mix 'odd'"):
        sample_identities(0, {"train": 2, "val": 0, "test": 2}, "odd")


def test_each_mix_draws_its_table_and_shifted_differs_from_default():
    n = 2000
    freqs = {}
    for name, mix in MIXES.items():
        rng = np.random.default_rng(1)
        people = [sample_identity(rng, mix) for _ in range(n)]
        for row, p in _rows(mix).items():
            field, gender = (row.split("/") + [None])[:2]
            vocab, names = MIX_ROWS[field]
            values = [getattr(ident, a) for ident in people if gender in (None, ident.gender) for a in names]
            seen = np.array([values.count(v) for v in vocab]) / len(values)
            tol = 4.5 * np.sqrt(np.array(p) * (1 - np.array(p)) / len(values)) + 1e-9
            assert (abs(seen - np.array(p)) <= tol).all(), (name, row, seen.round(3), p)
            freqs[name, row] = seen
    assert all(_rows(MIXES["shifted"])[row] != p for row, p in _rows(MIXES["default"]).items())
    red, black, no_bag = list(COLOURS).index("red"), list(COLOURS).index("black"), BAGS.index("none")
    assert abs(freqs["default", "colour"][red] - 1 / 11) < 0.01 and abs(freqs["shifted", "colour"][red] - 0.25) < 0.015
    assert freqs["shifted", "colour"][black] < 0.045 < freqs["default", "colour"][black]
    assert freqs["shifted", "bag"][no_bag] < 0.15 < 0.3 < freqs["default", "bag"][no_bag]
    assert freqs["shifted", "gender"][GENDERS.index("woman")] > 0.6 > 0.55 > freqs["default", "gender"][1]


def test_cli_mix_is_recorded_only_when_not_default_and_reuse_compares_it(tmp_path, capsys):
    out = tmp_path / "mix"
    args = ["--out", str(out), "--seed", "2", "--train-ids", "3", "--val-ids", "0", "--test-ids", "2",
            "--images-per-id", "1", "--size", "32x16", "--hidden-size", "16", "--processes", "1", "--reuse"]
    record = out / "generation.json"
    main(args)
    assert json.loads(record.read_text()) == {  # as written before mixes existed: old folders are still kept
        "generator": 3, "seed": 2, "ids": {"train": 3, "val": 0, "test": 2},
        "images_per_id": {"train": 1, "val": 1, "test": 1}, "size": [32, 16], "hidden_size": 16}
    default_test = (out / "annos" / "test_reid_en.json").read_bytes()
    capsys.readouterr()
    main(args + ["--mix", "shifted"])  # another mix: generated again, and recorded
    assert "wrote" in capsys.readouterr().out and json.loads(record.read_text())["mix"] == "shifted"
    main(args + ["--mix", "shifted"])
    assert capsys.readouterr().out.startswith("kept")
    # the files are those of the shifted people, the reference levels included
    people = sample_identities(2, {"train": 3, "val": 0, "test": 2}, "shifted")
    assert people != sample_identities(2, {"train": 3, "val": 0, "test": 2})
    annos = build_annotations(2, people, {"train": 1, "val": 1, "test": 1})
    assert json.loads((out / "annos" / "test_reid_en.json").read_text()) == annos["test"]["en"]
    assert (out / "annos" / "test_reid_en.json").read_bytes() != default_test
    (tmp_path / "ref").mkdir()
    write_reference_levels(tmp_path / "ref", 2, people, 1)
    assert (tmp_path / "ref" / "reference_levels.json").read_bytes() == \
        (out / "annos" / "reference_levels.json").read_bytes()
    main(args + ["--mix", "default"])  # back to the default: the record's mix differs, generated again
    assert "wrote" in capsys.readouterr().out and "mix" not in json.loads(record.read_text())
    assert (out / "annos" / "test_reid_en.json").read_bytes() == default_test
    with pytest.raises(SystemExit):
        main(args + ["--mix", "odd"])
    assert "invalid choice: 'odd'" in capsys.readouterr().err
