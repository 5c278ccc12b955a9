"""python -m tools.search: ranked list, PNG grid with right/wrong frames, en and ch queries, one-line errors."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from PIL import Image

from engine import figures
from tests.engine_fixtures import ROOT, env
from tests.retrieval_fixtures import TrainedRun
from tools import search

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]  # trained_run: main.py in a subprocess

ROW = re.compile(r"^\s*(\d+)\s+ITM\s+(-?\d+\.\d+|-)\s+cos\s+(-?\d+\.\d+)\s+(\S+)\s+id (\d+) (match|other)$")


def grid_size(n: int) -> tuple[int, int]:
    cell_w, cell_h = search.THUMB[0] + 2 * figures.BORDER, search.THUMB[1] + 2 * figures.BORDER + 2 * figures.LINE_H + 4
    cols = min(search.COLUMNS, n)
    rows = -(-n // cols)
    width = max(2 * figures.PAD + cols * (cell_w + figures.GAP) - figures.GAP, 320)
    return width, 2 * figures.PAD + 3 * figures.LINE_H + figures.GAP + rows * (cell_h + figures.GAP) - figures.GAP


def args(run: TrainedRun, lang: str, out, *extra: str) -> list[str]:
    i, j = run.easy_query()
    query = run.train_entries(lang)[i]["captions"][j]
    return ["--checkpoint", str(run.checkpoint), "--gallery", str(run.data / "imgs"), "--query", query,
            "--lang", lang, "--annotations", str(run.data / "annos" / f"train_reid_{lang}.json"),
            "--top-k", "5", "--out", str(out), *extra]


def check_output(stdout: str, run: TrainedRun, lang: str, out, top_k: int = 5) -> list[re.Match]:
    i, _ = run.easy_query()
    person = run.train_entries(lang)[i]["id"]
    assert f"query person id {person}" in stdout
    rows = [m for m in map(ROW.match, stdout.splitlines()) if m]
    assert [int(m.group(1)) for m in rows] == list(range(1, top_k + 1)), stdout
    assert any(m.group(6) == "match" for m in rows), stdout  # the right person is in the top 5
    for m in rows:
        assert (int(m.group(5)) == person) == (m.group(6) == "match")
    itm = [float(m.group(2)) for m in rows if m.group(2) != "-"]
    assert itm == sorted(itm, reverse=True), stdout  # one scale per column: ITM in rank order
    assert all(-1.0001 <= float(m.group(3)) <= 1.0001 for m in rows), stdout  # cos: cosine similarities
    with Image.open(out) as im:
        im.load()
        assert im.format == "PNG" and im.size == grid_size(top_k)
    return rows


def frame_colour(out, index: int) -> tuple[int, int, int]:
    """Colour of the frame of result ``index`` (its top-left pixel)."""
    x = figures.PAD + index * (search.THUMB[0] + 2 * figures.BORDER + figures.GAP)
    y = figures.PAD + 3 * figures.LINE_H + figures.GAP
    with Image.open(out) as im:
        return im.convert("RGB").getpixel((x + 1, y + 1))


def test_cli_english_in_a_subprocess(trained_run, tmp_path):
    out = tmp_path / "en.png"
    r = subprocess.run([sys.executable, "-m", "tools.search", *args(trained_run, "en", out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    rows = check_output(r.stdout, trained_run, "en", out)
    for n, m in enumerate(rows):
        assert frame_colour(out, n) == (figures.GREEN if m.group(6) == "match" else figures.RED)


def test_cli_chinese_and_saved_index(trained_run, tmp_path, capsys):
    out = tmp_path / "ch.png"
    index = tmp_path / "index"
    search.main(args(trained_run, "ch", out, "--index", str(index)))
    first = capsys.readouterr().out
    assert f"index {index}: 0 kept, 36 added, 0 changed, 0 removed (new index)" in first
    reranked = check_output(first, trained_run, "ch", out)
    assert "ITM score for the top 8 re-ranked" in first
    assert all(m.group(2) != "-" for m in reranked)  # top 5 of the 8 re-ranked: all have an ITM score
    search.main(args(trained_run, "ch", out, "--index", str(index), "--no-rerank"))
    second = capsys.readouterr().out
    assert f"index {index}: 36 kept, 0 added" in second
    plain = check_output(second, trained_run, "ch", out)
    assert all(m.group(2) == "-" for m in plain)
    cos = [float(m.group(3)) for m in plain]
    assert cos == sorted(cos, reverse=True)
    before = {m.group(4): m.group(3) for m in reranked}
    common = [m for m in plain if m.group(4) in before]
    assert common and all(before[m.group(4)] == m.group(3) for m in common)  # an image's cos does not change
    search.main(["--checkpoint", str(trained_run.checkpoint), "--index", str(index), "--query", "a man",
                 "--top-k", "4", "--out", str(out)])  # the saved index alone
    assert "4 of 36 images" in capsys.readouterr().out


def test_query_id_and_folder_gallery_without_ids(trained_run, tmp_path, capsys):
    out = tmp_path / "q.png"
    person = trained_run.train_entries("en")[0]["id"]
    search.main(args(trained_run, "en", out, "--query-id", str(person), "--top-k", "12"))
    assert f"query person id {person}" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == grid_size(12)
    search.main(["--checkpoint", str(trained_run.checkpoint), "--gallery", str(trained_run.data / "imgs" / "test"),
                 "--query", "a woman with a red bag", "--top-k", "3", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert "3 of 18 images" in stdout and "match" not in stdout
    assert frame_colour(out, 0) == figures.GREY


@pytest.mark.parametrize("change, needle", [
    ({"--checkpoint": "missing.pth"}, "checkpoint not found"),
    ({"--gallery": "missing_dir"}, "gallery folder not found"),
    ({"--annotations": "missing.json"}, "annotation file not found"),
    ({"--query": " ... "}, "empty after cleaning"),
])
def test_one_line_errors(trained_run, tmp_path, capsys, change, needle):
    argv = args(trained_run, "en", tmp_path / "x.png")
    for flag, value in change.items():
        argv[argv.index(flag) + 1] = value if flag == "--query" else str(tmp_path / value)
    with pytest.raises(SystemExit) as e:
        search.main(argv)
    assert e.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_grid_cells_are_tall_and_labelled_on_one_scale_each(trained_run, tmp_path, monkeypatch):
    """Cells at least 160 px high; each label names its scale; re-ranked hits keep their cosine."""
    from engine.retriever import Retriever

    r = Retriever.from_checkpoint(trained_run.checkpoint)
    paths = [str(trained_run.data / "imgs" / e["file_path"]) for e in trained_run.train_entries("en")]
    r.index(paths)
    k = r.cfg.model.k_test
    hits = r.search(trained_run.train_entries("en")[0]["captions"][0], top_k=k + 2)
    assert all(h.itm is not None for h in hits[:k]) and all(h.itm is None for h in hits[k:])
    assert [h.score for h in hits[:k]] == [h.itm for h in hits[:k]] == sorted((h.itm for h in hits[:k]), reverse=True)
    path, score = hits[0]  # older callers unpack (path, score)
    assert (path, score) == (hits[0].path, hits[0].itm)
    labels = [search.cell_label(i + 1, h) for i, h in enumerate(hits)]
    assert labels[0] == f"#1  ITM {hits[0].itm:.2f}\ncos {hits[0].cosine:.2f}"
    assert labels[-1] == f"#{k + 2}\ncos {hits[-1].cosine:.2f}"
    drawn = []
    monkeypatch.setattr(figures, "thumbnail", lambda p, size: drawn.append(size) or figures.Image.new("RGB", size))
    size = search.draw_grid("a man", "en", "test", hits, [None] * len(hits), tmp_path / "g.png")
    assert size == grid_size(len(hits))
    assert drawn and all(h >= 160 for _, h in drawn)
    assert search.grid_layout(1)[2] >= 160 + 2 * figures.LINE_H  # image and both label lines


def test_chinese_query_is_drawn_in_a_cjk_font(trained_run, tmp_path, monkeypatch, capsys):
    """With a CJK font installed the query line is drawn with it, not replaced by a notice."""
    cjk = figures.cjk_font_path()
    if cjk is None:
        pytest.skip("no font with Chinese glyphs installed (apt-get install fonts-wqy-microhei)")
    query = trained_run.train_entries("ch")[0]["captions"][0]
    line = f"query (ch): {query}"
    text, font = figures.drawable(line)
    assert text == line and font.path == cjk
    texts = []
    real = figures.draw_text
    monkeypatch.setattr(figures, "draw_text",
                        lambda c, x, y, t, *a, **kw: texts.append(t) or real(c, x, y, t, *a, **kw))
    out = tmp_path / "ch.png"
    search.main(["--checkpoint", str(trained_run.checkpoint), "--gallery", str(trained_run.data / "imgs" / "test"),
                 "--query", query, "--lang", "ch", "--top-k", "3", "--out", str(out)])
    assert texts[0] == line and "not drawn" not in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size == grid_size(3)


def test_explain_draws_one_row_per_hit_with_the_words_of_the_query(trained_run, tmp_path, monkeypatch, capsys):
    from engine import explain_figure

    out = tmp_path / "explain.png"
    search.main(args(trained_run, "en", out, "--explain", "--top-k", "2", "--threshold", "0.5"))
    stdout = capsys.readouterr().out
    lines = [line.removesuffix("  [above threshold]") for line in stdout.splitlines()]
    paths = [m.group(4) for m in map(ROW.match, lines) if m]
    assert len(paths) == 2
    with Image.open(out) as im:
        assert im.format == "PNG" and im.height > 2 * search.THUMB[1]
    drawn = []
    monkeypatch.setattr(explain_figure, "draw_explanations", lambda header, rows, path: drawn.append((header, rows))
                        or (1, 1))
    search.main(args(trained_run, "en", out, "--explain", "--top-k", "2", "--threshold", "0.5"))
    header, rows = drawn[0]
    assert [e.path for _, _, e in rows] == paths  # one row per hit, in rank order
    assert header[0].startswith("query (en): ") and "ITM > 0.500 (given)" in header[2]
    assert all(label.split("\n")[-1] in ("above T", "below T") for label, _, _ in rows)
    words = [w for w, _ in rows[0][2].words]
    query = trained_run.train_entries("en")[0]["captions"][0].lower()
    assert words and all(w.lower() in query for w in words) and "a" not in words  # content words of the query
