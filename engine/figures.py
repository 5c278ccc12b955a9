"""The result pictures of an evaluation (``cmc.png``, ``examples.png``) and the drawing parts
tools/search.py shares with them; kept apart from report.md so the text report needs no fonts.

* ``cmc.png``: Rank-k for k = 1..20, one line per language (matplotlib, Agg canvas);
* ``examples.png``: per language the 2 best and the 2 worst queries by AP, their caption
  and top-5 gallery images, framed green (same person) or red (another person).

Captions are drawn with matplotlib's DejaVu Sans, which has no Chinese glyphs. A caption
that it cannot draw uses the first installed font that can (``fc-list :lang=zh``); when
there is none, the picture shows the caption of the same query in another evaluated
language whose queries are aligned (same images and ids, e.g. the English source), marked
as such, or else the caption with the undrawable characters replaced by ``?``. report.md
always has the original caption.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from utils.checkpoint import atomic_write
from utils.metrics import cmc_curve

if TYPE_CHECKING:
    from data.datasets import EvalData
    from engine.evaluate import EvalResult

CMC_RANKS = 20
EXAMPLES_BEST = 2
EXAMPLES_WORST = 2
EXAMPLES_TOP = 5

# picture layout, in pixels
THUMB_W, THUMB_H = 64, 128  # image area of one result cell (the image is fitted inside, aspect kept)
BORDER = 4  # coloured frame around each result image
LABEL_H = 18  # text line under each result image
GAP = 6
PAD = 10
FONT_SIZE = 12
LINE_H = 15
CELL_W = THUMB_W + 2 * BORDER
CELL_H = THUMB_H + 2 * BORDER + LABEL_H
TEXT_W = 300  # caption column of examples.png
HEADER_H = 26  # language header of examples.png
EXAMPLES_W = PAD + TEXT_W + EXAMPLES_TOP * (CELL_W + GAP) - GAP + PAD
CMC_SIZE = (640, 400)
# fonts-wqy-microhei and fonts-noto-cjk (Debian/Ubuntu), for systems without fc-list
KNOWN_CJK_FONTS = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                   "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")

GREEN, RED, GREY = (0, 160, 60), (220, 30, 30), (150, 150, 150)
BACKGROUND, THUMB_BACKGROUND, INK = (255, 255, 255), (235, 235, 235), (20, 20, 20)


# ------------------------------------------------------------------------------------ fonts
@functools.lru_cache(maxsize=None)
def _cmap(path: str) -> frozenset[int]:
    """Code points a font file can draw."""
    from fontTools.ttLib import TTFont

    with TTFont(path, fontNumber=0, lazy=True) as f:
        return frozenset(f.getBestCmap() or {})


@functools.lru_cache(maxsize=None)
def latin_font_path() -> str:
    """DejaVu Sans as shipped with matplotlib: always installed, so the default for every caption."""
    import matplotlib

    return str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf")


@functools.lru_cache(maxsize=None)
def cjk_font_path() -> str | None:
    """First installed font with Chinese glyphs (``fc-list :lang=zh``, else a known Debian path), or None."""
    files: list[str] = []
    if shutil.which("fc-list") is not None:
        try:
            out = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True,
                                 timeout=10).stdout
            files = sorted(line.strip().rstrip(":") for line in out.splitlines() if line.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    # without fontconfig (slim images) the Debian packages' files are still usable
    files += [p for p in KNOWN_CJK_FONTS if Path(p).is_file()]
    return files[0] if files else None


@functools.lru_cache(maxsize=None)
def _font(path: str, size: int = FONT_SIZE) -> ImageFont.FreeTypeFont:
    """Cached: loading a font file for every caption would dominate the drawing time."""
    return ImageFont.truetype(path, size)


def font_for(text: str) -> ImageFont.FreeTypeFont | None:
    """A font that can draw every character of ``text``, or None when no installed font can."""
    for path in (latin_font_path(), cjk_font_path()):
        if path is not None and all(ord(c) in _cmap(path) or c.isspace() for c in text):
            return _font(path)
    return None


def drawable(text: str) -> tuple[str, ImageFont.FreeTypeFont]:
    """``text`` and a font for it; characters no font can draw become ``?``."""
    font = font_for(text)
    if font is not None:
        return text, font
    latin = _cmap(latin_font_path())
    return "".join(c if ord(c) in latin or c.isspace() else "?" for c in text), _font(latin_font_path())


def wrap(text: str, font: ImageFont.FreeTypeFont, width: int, max_lines: int) -> list[str]:
    """Lines of at most ``width`` pixels; breaks between words, or anywhere in text without spaces (Chinese)."""
    lines: list[str] = []
    line = ""
    tokens = text.split(" ") if " " in text.strip() else list(text)
    sep = " " if " " in text.strip() else ""
    for tok in tokens:
        candidate = f"{line}{sep}{tok}" if line else tok
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = tok
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


# ---------------------------------------------------------------------------- picture parts
def fitted(path: str, size: tuple[int, int]) -> Image.Image | None:
    """The image scaled (up or down, aspect kept) to fit ``size``, so small crops are still
    visible; None when it cannot be read."""
    w, h = size
    try:
        with Image.open(path) as img:
            img.draft("RGB", (w * 2, h * 2))
            return ImageOps.contain(img.convert("RGB"), size, Image.Resampling.BICUBIC)
    except (OSError, ValueError):
        return None


def fitted_box(image: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of a ``fitted`` image centred in a ``size`` cell."""
    return (size[0] - image.width) // 2, (size[1] - image.height) // 2


def thumbnail(path: str, size: tuple[int, int] = (THUMB_W, THUMB_H)) -> Image.Image:
    """The ``fitted`` image centred on a neutral background (a grey cross if unreadable)."""
    w, h = size
    cell = Image.new("RGB", size, THUMB_BACKGROUND)
    image = fitted(path, size)
    if image is not None:
        cell.paste(image, fitted_box(image, size))
    else:
        d = ImageDraw.Draw(cell)
        d.line((0, 0, w, h), fill=GREY, width=2)
        d.line((0, h, w, 0), fill=GREY, width=2)
    return cell


def draw_cell(canvas: Image.Image, x: int, y: int, path: str, correct: bool | None, label: str,
              thumb: tuple[int, int] = (THUMB_W, THUMB_H)) -> None:
    """One result at (x, y): the image in a green/red (grey: unknown) frame, ``label`` below it
    (one line per ``\n``, LINE_H apart)."""
    colour = GREY if correct is None else GREEN if correct else RED
    w, h = thumb
    d = ImageDraw.Draw(canvas)
    d.rectangle((x, y, x + w + 2 * BORDER - 1, y + h + 2 * BORDER - 1), fill=colour)
    canvas.paste(thumbnail(path, thumb), (x + BORDER, y + BORDER))
    for n, line in enumerate(label.split("\n")):
        text, font = drawable(line)
        d.text((x + w // 2 + BORDER, y + h + 2 * BORDER + 2 + n * LINE_H), text, fill=INK, font=font, anchor="ma")


def draw_text(canvas: Image.Image, x: int, y: int, text: str, width: int, max_lines: int,
              fill: tuple[int, int, int] = INK) -> int:
    """Wrapped text at (x, y); returns the y below it."""
    text, font = drawable(text)
    d = ImageDraw.Draw(canvas)
    for line in wrap(text, font, width, max_lines):
        d.text((x, y), line, fill=fill, font=font)
        y += LINE_H
    return y


def save_png(image: Image.Image, path: Path) -> None:
    """Atomic, so a reader never sees a half-written picture."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


# ---------------------------------------------------------------------------------- examples
def pick_examples(stats: dict[str, torch.Tensor], best: int = EXAMPLES_BEST,
                  worst: int = EXAMPLES_WORST) -> list[tuple[str, int]]:
    """(kind, query index): the best queries by AP (ties: earlier query), then the worst, no query twice."""
    valid = stats["valid"].nonzero().flatten()
    order = valid[torch.sort(stats["ap"][valid], descending=True, stable=True).indices].tolist()
    chosen = [("best", q) for q in order[:best]]
    low = [q for q in reversed(order) if q not in order[:best]][:worst]
    return chosen + [("worst", q) for q in low]


def aligned(a: EvalData, b: EvalData) -> bool:
    """Two languages' eval sets with the same gallery and the same queries (translations) in the same order."""
    return (a.gallery_paths == b.gallery_paths and len(a.captions) == len(b.captions)
            and torch.equal(a.query_pids, b.query_pids))


def shown_caption(lang: str, q: int, sets: dict[str, EvalData]) -> str:
    """The caption drawn for query ``q`` of ``lang`` (see the module docstring for the fallback)."""
    caption = sets[lang].captions[q]
    if font_for(caption) is not None:
        return caption
    for other, data in sets.items():
        if other != lang and aligned(data, sets[lang]) and font_for(data.captions[q]) is not None:
            return f"[{other} caption of this query; no font for {lang} installed] {data.captions[q]}"
    return caption


def examples_height(rows_per_language: Sequence[int]) -> int:
    """Pixel height of examples.png, known before drawing so the canvas is allocated once."""
    return PAD + sum(HEADER_H + n * (CELL_H + GAP) for n in rows_per_language) + PAD


def draw_examples(results: dict[str, EvalResult], sets: dict[str, EvalData]) -> Image.Image:
    """examples.png: per language a header, then one row per picked query (caption, top-5 cells)."""
    picks = {lang: pick_examples(r.stats) for lang, r in results.items()}
    canvas = Image.new("RGB", (EXAMPLES_W, examples_height([len(p) for p in picks.values()])), BACKGROUND)
    y = PAD
    for lang, chosen in picks.items():
        r, data = results[lang], sets[lang]
        draw_text(canvas, PAD, y + 4, f"{lang}: {EXAMPLES_BEST} best and {EXAMPLES_WORST} worst queries by AP; "
                  "frame green = same person, red = another person", EXAMPLES_W - 2 * PAD, 1)
        y += HEADER_H
        for kind, q in chosen:
            first = int(r.stats["first"][q])
            ty = draw_text(canvas, PAD, y, f"{kind}: query {q}, AP {100 * float(r.stats['ap'][q]):.1f}, "
                           f"first match at rank {first}", TEXT_W, 1)
            draw_text(canvas, PAD, ty + 2, shown_caption(lang, q, sets), TEXT_W, (CELL_H - LINE_H) // LINE_H - 1)
            top = r.stats["top"][q, :EXAMPLES_TOP].tolist()
            for j, g in enumerate(top):
                correct = bool(data.gallery_pids[g] == data.query_pids[q])
                draw_cell(canvas, PAD + TEXT_W + j * (CELL_W + GAP), y, data.gallery_paths[g], correct, f"#{j + 1}")
            y += CELL_H + GAP
    return canvas


# --------------------------------------------------------------------------------------- CMC
def draw_cmc(results: dict[str, EvalResult], path: Path, split: str) -> None:
    """Rank-k curves; the object-oriented API with an Agg canvas leaves pyplot's global state alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(CMC_SIZE[0] / 100, CMC_SIZE[1] / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ranks = list(range(1, CMC_RANKS + 1))
    for lang, r in results.items():
        ax.plot(ranks, cmc_curve(r.stats, CMC_RANKS), marker="o", markersize=3, label=lang)
    ax.set(xlabel="rank k", ylabel="Rank-k (%)", title=f"CMC ({split} split)", xlim=(0.5, CMC_RANKS + 0.5))
    ax.set_xticks([1, 5, 10, 15, 20])
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
