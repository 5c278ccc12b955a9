"""Explanation maps: the fusion cross-attention weights are found where a hand-set model must
look, are exactly the weights SDPA applied, are averaged per word as documented (word
grouping, stop words, layer option); the picture draws them where the heat is; the report
and the final training report write explain.png."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import XLMRobertaConfig

from data.text import clean_for, tokenize
from data.transforms import build_transforms
from engine import explain_figure, figures, train
from engine.explain import Explanation, content_words, explain, group_words
from engine.explain_figure import draw_explanations, overlay
from engine.figures import BORDER, GAP, LINE_H, PAD
from engine.report import write_reports
from model.bi_irra import BiIRRA
from model.fusion import FusionEncoder
from tests.image_checks import pixels
from tests.model_fixtures import tiny_config
from tests.test_report import fake_eval

pytestmark = pytest.mark.usefixtures("one_thread")

EN = "A man wearing a red shirt and blue jeans."
# the fixture tokenizer's pieces of EN once cleaned, and the content words' token positions
EN_PIECES = ["<s>", "▁a", "▁m", "an", "▁we", "a", "ri", "ng", "▁a", "▁r", "e", "d", "▁sh", "ir", "t", "▁", "an",
             "d", "▁bl", "u", "e", "▁jean", "s", "</s>"]
EN_WORDS = [("man", [2, 3]), ("red", [9, 10, 11]), ("shirt", [12, 13, 14]), ("blue", [18, 19, 20]),
            ("jeans", [21, 22])]
ZH = "一个穿红色衬衫的男人背着黑色背包"
ZH_PIECES = ["<s>", "▁一个", "穿", "红", "色", "衬", "衫", "的", "男", "人", "背着", "黑", "色", "背", "包", "</s>"]
ZH_WORDS = [("红", [3]), ("色", [4]), ("衬", [5]), ("衫", [6]), ("男", [8]), ("人", [9]), ("背着", [10]),
            ("黑", [11]), ("色", [12]), ("背", [13]), ("包", [14])]


# ------------------------------------------------------------------------- fusion weights
def paired_one_hot(index: int, width: int = 16) -> torch.Tensor:
    """e_index + e_(index + width/2): the same one-hot in each of the two heads' halves."""
    v = torch.zeros(width)
    v[index] = v[index + width // 2] = 1.0
    return v


def test_hand_set_layer_looks_where_it_must() -> None:
    """One layer whose self-attention adds nothing (its output dense is zero, so the
    cross-attention reads LayerNorm(hidden)) and whose query/key projections are scaled
    identities: text token j must attend to the context token holding its own one-hot."""
    enc = FusionEncoder(XLMRobertaConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32,
                                         layer_norm_eps=1e-5), 1).eval()
    layer = enc.layer[0]
    with torch.no_grad():
        layer.attention.output.dense.weight.zero_()
        layer.attention.output.dense.bias.zero_()
        for proj, scale in ((layer.crossattention.self.query, 20.0), (layer.crossattention.self.key, 1.0)):
            proj.weight.copy_(scale * torch.eye(16))
            proj.bias.zero_()
    target = [4, 1, 6, 2]  # text token j must look at context token target[j]; 0 is the pooled token
    text = torch.stack([paired_one_hot(j) for j in range(4)])[None]
    context = torch.zeros(1, 7, 16)
    for j, p in enumerate(target):
        context[0, p] = paired_one_hot(j)
    maps = enc.cross_attention_maps(text, torch.ones(1, 4), context)
    assert len(maps) == 1 and maps[0].shape == (1, 2, 4, 7)
    for j, p in enumerate(target):
        assert (maps[0][0, :, j, p] > 0.99).all(), (j, maps[0][0, :, j])


def peaked_encoder(layers: int = 2) -> FusionEncoder:
    """A random fusion encoder with large query/key weights, so attention is far from uniform."""
    torch.manual_seed(0)
    enc = FusionEncoder(XLMRobertaConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                         layer_norm_eps=1e-5), layers).eval()
    with torch.no_grad():
        for layer in enc.layer:
            for proj in (layer.crossattention.self.query, layer.crossattention.self.key):
                proj.weight.normal_(0, 0.5)
    return enc


def test_probabilities_are_the_weights_sdpa_applied() -> None:
    """Each layer's probabilities times the values SDPA got give SDPA's output in the plain
    forward pass (hooked), with padding on both sides; padded context gets exactly 0."""
    enc = peaked_encoder()
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(3, 6, 32, generator=g), torch.randn(3, 5, 32, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4])
    ctx_mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2, [0] + [1] * 4])
    seen = []
    hooks = [layer.crossattention.self.register_forward_hook(lambda m, args, out: seen.append((args, out)))
             for layer in enc.layer]
    with torch.no_grad():
        enc(x, mask, context=ctx, context_mask=ctx_mask)
    for h in hooks:
        h.remove()
    maps = enc.cross_attention_maps(x, mask, ctx, ctx_mask)
    assert len(maps) == len(seen) == 2
    for probs, ((_, (_, v), _), out) in zip(maps, seen):
        assert probs.shape == (3, 4, 6, 5)
        merged = (probs @ v).transpose(1, 2).reshape(3, 6, 32)
        torch.testing.assert_close(merged, out, atol=1e-6, rtol=0)
        assert (probs * (ctx_mask == 0)[:, None, None, :]).abs().max() == 0
        torch.testing.assert_close(probs.sum(-1), torch.ones(3, 4, 6), atol=1e-6, rtol=0)
        assert probs.max() > 0.5  # peaked: a uniform pattern would make the check above weak
    enc.train()
    with pytest.raises(RuntimeError):
        enc.cross_attention_maps(x, mask, ctx, ctx_mask)


def test_explicit_layer_path_gives_the_forward_output() -> None:
    enc = peaked_encoder(1)
    g = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(2, 4, 32, generator=g), torch.randn(2, 3, 32, generator=g)
    kv = enc.cross_kv(ctx)[0]
    with torch.no_grad():
        hidden, _ = enc.layer[0].forward_with_cross_attention(x, None, kv, None)
        assert torch.equal(hidden, enc.layer[0](x, None, kv, None))


# -------------------------------------------------------------------------------- words
def test_word_grouping_rules() -> None:
    words = group_words(["▁a", "▁t", "-", "shirt", ",", None, "▁rou", None, "ge", "▁", "jean", "s", "▁", "一个",
                         "红色", "，", "的", "▁,"])
    assert words == [("a", [0]), ("t-shirt", [1, 3]), ("rouge", [6, 8]), ("jeans", [10, 11]), ("一个", [13]),
                     ("红色", [14]), ("", []), ("的", [16]), ("", [])]


@pytest.mark.parametrize("lang, pieces, kept", [
    ("en", ["▁the", "▁woman", "▁is", "▁wearing", "▁a", "▁white", "▁bag", "▁on", "▁her", "▁shoulder"],
     ["woman", "white", "bag", "shoulder"]),
    ("fr", ["▁un", "▁homme", "▁avec", "▁une", "▁chemise", "▁rouge", "▁et", "▁un", "▁jean"],
     ["homme", "chemise", "rouge", "jean"]),
    ("de", ["▁eine", "▁frau", "▁mit", "▁langen", "▁schwarzen", "▁haaren", "▁und", "▁einer", "▁tasche"],
     ["frau", "langen", "schwarzen", "haaren", "tasche"]),
    ("zh", ["▁", "一个", "穿", "着", "红色", "衬衫", "的", "男人"], ["红色", "衬衫", "男人"]),
    ("xx", ["▁eine", "▁frau", "▁mit"], ["eine", "frau", "mit"]),  # no stop list: every word
])
def test_stop_words_per_language(lang, pieces, kept) -> None:
    assert [w for w, _ in content_words(pieces, lang, max_words=20)] == kept
    assert [w for w, _ in content_words(pieces, lang, max_words=2)] == kept[:2]


# ------------------------------------------------------------------------- explain()
@pytest.fixture(scope="module")
def tiny(tiny_text_dir, tmp_path_factory):
    """A tiny random model with peaked cross-attention, its tokenizer, config and two noise images."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("explain")
    cfg = tiny_config(tiny_text_dir, folder)
    torch.manual_seed(0)
    model = BiIRRA.from_config(cfg).eval()
    with torch.no_grad():
        for layer in model.cross_encoder.layer:
            for proj in (layer.crossattention.self.query, layer.crossattention.self.key):
                proj.weight.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = folder / f"noise{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 16, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return model, AutoTokenizer.from_pretrained(str(tiny_text_dir)), cfg, paths


def reference_maps(model, tokenizer, cfg, query: str, paths: list[str]) -> tuple[list[str], list[torch.Tensor]]:
    """The fixture tokenizer's pieces of ``query`` and each fusion layer's head-mean patch
    attention [images, L, 4, 2] (grid of 32x16 inputs, patch 8), computed here step by step."""
    ids, mask = tokenize(tokenizer, [clean_for(cfg)(query)], cfg.experiment.text_length)
    n = int(mask.sum())
    ids, mask = ids[:, :n], mask[:, :n]
    transform = build_transforms(cfg, train=False)
    images = torch.stack([transform(Image.open(p)) for p in paths])
    model.eval()
    with torch.no_grad():
        image = model.encode_image(images)
        text = model.encode_text(ids, mask).expand(len(paths), -1, -1)
        probs = model.cross_encoder.cross_attention_maps(text, mask.expand(len(paths), -1), image)
    return tokenizer.convert_ids_to_tokens(ids[0].tolist()), [p.mean(1)[:, :, 1:].reshape(len(paths), n, 4, 2)
                                                             for p in probs]


@pytest.mark.parametrize("query, lang, pieces, words", [(EN, "en", EN_PIECES, EN_WORDS),
                                                        (ZH, "ch", ZH_PIECES, ZH_WORDS)])
def test_maps_are_word_means_of_head_mean_attention(tiny, query, lang, pieces, words) -> None:
    model, tokenizer, cfg, paths = tiny
    got_pieces, layers = reference_maps(model, tokenizer, cfg, query, paths)
    assert got_pieces == pieces  # the fixture tokenizer is what these positions were read from
    model.train()
    for option, per_token in (("last", layers[-1]), ("mean", torch.stack(layers).mean(0))):
        found = explain(model, tokenizer, cfg, query, lang, paths, torch.device("cpu"), layers=option, max_words=20)
        assert model.training  # its mode is given back
        assert [e.path for e in found] == paths
        for i, e in enumerate(found):
            assert [w for w, _ in e.words] == [w for w, _ in words]
            for (_, heat), (_, positions) in zip(e.words, words):
                assert heat.shape == (4, 2)
                torch.testing.assert_close(heat, per_token[i, positions].mean(0), atol=1e-7, rtol=1e-6)
    assert not torch.allclose(layers[0], layers[-1], atol=1e-3)  # the option changes the maps
    assert not torch.allclose(per_token[0, words[0][1]].mean(0), per_token[0, words[1][1]].mean(0), atol=1e-4)
    short = explain(model, tokenizer, cfg, query, lang, paths, torch.device("cpu"))
    assert [w for w, _ in short[0].words] == [w for w, _ in words][:6]
    with pytest.raises(ValueError):
        explain(model, tokenizer, cfg, query, lang, paths, torch.device("cpu"), layers="first")


# -------------------------------------------------------------------------------- picture
HOT = (2, 1)  # the hot patch of the drawn maps (row, column of the 4x2 grid)


def grey_image(path: Path) -> str:
    """48x96: fitted to exactly 96x192, so a patch of the 4x2 grid is a 48x48 square of the cell."""
    Image.new("RGB", (48, 96), (128, 128, 128)).save(path)
    return str(path)


def one_hot_map(row: int, col: int) -> torch.Tensor:
    heat = torch.zeros(4, 2)
    heat[row, col] = 0.3
    return heat


def cell_pixels(img: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 96x192 image area of the cell whose frame starts at (x, y)."""
    return img[y + BORDER:y + BORDER + 192, x + BORDER:x + BORDER + 96]


def patch_redness(cell: np.ndarray) -> np.ndarray:
    """Mean of R - G over each 48x48 patch square: [4, 2]."""
    red = cell[..., 0] - cell[..., 1]
    return red.reshape(4, 48, 2, 48).mean(axis=(1, 3))


def test_explanation_picture(tmp_path) -> None:
    grey = grey_image(tmp_path / "grey.png")
    e = Explanation(grey, [("red", one_hot_map(*HOT)), ("衬衫", one_hot_map(0, 0))])
    rows = [("#1  ITM 0.50\ncos 0.80", True, e), ("#2", False, e), ("#3", None, Explanation(str(tmp_path / "gone.png"),
                                                                                            e.words))]
    out = tmp_path / "explain.png"
    size = draw_explanations(["query (en): a red 衬衫", "score: cos"], rows, out)
    img = pixels(out)
    cell_w, cell_h = 96 + 2 * BORDER, 192 + 2 * BORDER + 2 * LINE_H + 4
    assert size == (img.shape[1], img.shape[0]) == (2 * PAD + 3 * (cell_w + GAP) - GAP,
                                                    2 * PAD + 2 * LINE_H + GAP + 3 * (cell_h + GAP) - GAP)
    top = PAD + 2 * LINE_H + GAP
    for r, frame in enumerate((figures.GREEN, figures.RED, figures.GREY)):
        y = top + r * (cell_h + GAP)
        assert tuple(img[y + 1, PAD + 1]) == frame
        if r == 2:
            continue  # unreadable image: grey crosses, no heat
        assert (cell_pixels(img, PAD, y) == 128).all()  # the hit itself, untouched
        for j, (row, col) in enumerate((HOT, (0, 0))):
            x = PAD + (j + 1) * (cell_w + GAP)
            cell = cell_pixels(img, x, y)
            redness = patch_redness(cell)
            assert redness.argmax() == row * 2 + col and redness.max() > 50, redness
            assert ((cell[:48] if j == 0 else cell[96:]) == 128).all()  # far from the heat: the image unchanged
    # the words under the heat cells, each in a font that has its characters
    y = top
    for j, word in enumerate(["red", "衬衫"]):
        x = PAD + (j + 1) * (cell_w + GAP)
        strip = (slice(y + 192 + 2 * BORDER, y + 192 + 2 * BORDER + LINE_H + 2), slice(x, x + cell_w))
        want = Image.new("RGB", (img.shape[1], img.shape[0]), figures.BACKGROUND)
        text, font = figures.drawable(word)
        ImageDraw.Draw(want).text((x + BORDER + 48, y + 192 + 2 * BORDER + 2), text, fill=figures.INK, font=font,
                                  anchor="ma")
        assert (np.asarray(want).astype(int)[strip] < 100).any()
        assert (img[strip] == np.asarray(want).astype(int)[strip]).all(), word
    if figures.cjk_font_path() is not None:
        assert figures.font_for("衬衫").path == figures.cjk_font_path()


def test_overlay_of_a_zero_map_leaves_the_image() -> None:
    image = Image.new("RGB", (10, 20), (40, 80, 120))
    assert overlay(image, torch.zeros(4, 2)).tobytes() == image.tobytes()
    hot = np.asarray(overlay(image, torch.ones(4, 2))).astype(int)
    assert (hot == [round(40 * 0.4 + 255 * 0.6), round(80 * 0.4), round(120 * 0.4)]).all()


# --------------------------------------------------------------------------------- report
def frame_runs(img: np.ndarray, x: int) -> list[tuple[int, int, int]]:
    """Colours of the green/red frames met going down column ``x``, one entry per frame."""
    runs, last = [], None
    for y in range(img.shape[0]):
        colour = tuple(img[y, x])
        hit = colour if colour in (figures.GREEN, figures.RED) else None
        if hit is not None and hit != last:
            runs.append(hit)
        last = hit
    return runs


def test_report_with_explain_writes_and_links_explain_png(tmp_path) -> None:
    results, sets = fake_eval(tmp_path / "imgs", ids=4, per_id=2, captions_per_image=1)
    calls = []

    def fake_explain(caption: str, lang: str, paths: list[str]) -> list[Explanation]:
        calls.append((caption, lang, paths))
        return [Explanation(p, [("red", torch.rand(4, 2)), ("shirt", torch.rand(4, 2))]) for p in paths]

    write_reports(tmp_path / "plain", results, sets, "test")
    write_reports(tmp_path / "out", results, sets, "test", explain=fake_explain)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == ["cmc.png", "examples.png", "report.md"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cmc.png", "examples.png", "explain.png",
                                                                     "report.md"]
    want, marks = [], []
    for lang, r in results.items():
        data = sets[lang]
        for _, q in figures.pick_examples(r.stats, best=1, worst=1):
            top = r.stats["top"][q, :3].tolist()
            want.append((data.captions[q], lang, [data.gallery_paths[g] for g in top]))
            marks += [figures.GREEN if data.gallery_pids[g] == data.query_pids[q] else figures.RED for g in top]
    assert calls == want
    assert frame_runs(pixels(tmp_path / "out" / "explain.png"), PAD + 1) == marks
    plain = (tmp_path / "plain" / "report.md").read_text(encoding="utf-8").splitlines()
    text = (tmp_path / "out" / "report.md").read_text(encoding="utf-8").splitlines()
    link = [line for line in text if "](explain.png)" in line]
    assert len(link) == 1 and "explain.png" not in "\n".join(plain)
    i = text.index(link[0])
    assert text[:i] + text[i + 2:] == plain  # otherwise the same report


def test_final_report_explains_each_language_with_its_own_weights(monkeypatch) -> None:
    loads, calls = [], []
    monkeypatch.setattr(train, "load_model_weights", lambda model, path, ckpt=None: loads.append(path))
    monkeypatch.setattr(train, "explain", lambda model, tok, cfg, caption, lang, paths, device: calls.append(lang))
    trainer = SimpleNamespace(loaded="best_ch.pth", out=Path("run"), model=None, tokenizer=None, cfg=None, device=None)
    run = train.Trainer.explainer(trainer, {"en": "best_en.pth", "ch": "best_ch.pth", "fr": "best_en.pth"})
    for lang in ("ch", "en", "fr", "ch"):
        run("a caption", lang, [])
    assert calls == ["ch", "en", "fr", "ch"]
    assert loads == [str(Path("run") / "best_en.pth"), str(Path("run") / "best_ch.pth")]


@pytest.mark.slow
def test_training_run_writes_explanations(trained_run) -> None:
    """main.py's final report links explain.png; the trained model's maps cover its patch grid."""
    from engine.retriever import Retriever

    run = trained_run.run
    assert "](explain.png)" in (run / "report.md").read_text(encoding="utf-8")
    with Image.open(run / "explain.png") as im:
        assert im.format == "PNG" and im.width > explain_figure.MIN_WIDTH
    r = Retriever.from_checkpoint(trained_run.checkpoint)
    entry = trained_run.train_entries("en")[0]
    path = str(trained_run.data / "imgs" / entry["file_path"])
    found = explain(r.model, r.tokenizer, r.cfg, entry["captions"][0], "en", [path], torch.device("cpu"))
    words = found[0].words
    assert words and all(w not in ("a", "the", "with") for w, _ in words)
    for _, heat in words:
        assert heat.shape == (8, 4) and (heat >= 0).all() and 0 < float(heat.sum()) <= 1 + 1e-5
    print(json.dumps({w: round(float(h.max() / h.mean()), 2) for w, h in words}))
