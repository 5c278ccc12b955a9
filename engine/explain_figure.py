"""Pictures of explanations (engine/explain.py): per hit, the image and one heat map per content word.

``draw_explanations`` draws one query for tools/search.py ``--explain``::

    from engine.explain import explain
    from engine.explain_figure import draw_explanations

    found = explain(model, tokenizer, cfg, query, lang, [h.path for h in hits], device)
    rows = [(cell_label(i + 1, h), mark, e) for i, (h, mark, e) in enumerate(zip(hits, marks, found))]
    draw_explanations([f"query ({lang}): {query}", f"score: {how}"], rows, Path("explain.png"))

``explanations_image`` stacks several queries; ``report_explanations`` is the evaluation
report's explain.png (engine/report.py).

Layout: the header lines (each wrapped to at most ``HEADER_LINES`` lines, in a font with
the text's script, engine/figures.py), then one row per hit: the hit's image framed as
engine/figures.draw_cell frames it (green: same person, red: another, grey: unknown) with
its label under it, followed by the image again under each word's heat map, the word
written below. A map is upsampled bilinearly to the image, scaled to its own maximum and
blended over the image, from transparent (no weight) through yellow to red at ``ALPHA``
opacity (the most weight), so the reddest region is where the word looked most.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from engine.explain import Explanation
from engine.figures import (BACKGROUND, BORDER, GAP, GREY, INK, LINE_H, PAD, THUMB_BACKGROUND, draw_cell, draw_text,
                            drawable, fitted, fitted_box, pick_examples, save_png, shown_caption, thumbnail, wrap)

if TYPE_CHECKING:
    from data.datasets import EvalData
    from engine.evaluate import EvalResult

THUMB = (96, 192)  # image area of a cell, as tools/search.py's result cells
ALPHA = 0.6  # opacity of the overlay where a map is at its maximum
HEADER_LINES = 3  # wrapped lines per header line at most
MIN_WIDTH = 320
SECTION_GAP = 3 * GAP  # between two queries of explanations_image, a grey rule in the middle
REPORT_TOP = 3  # hits explained per example query of the report
REPORT_LEGEND = ("Why these images: for each content word of the query, the image under its heat map: where the "
                 "word's tokens attend in the image (fusion-layer cross-attention, mean over heads; each map scaled "
                 "to its maximum, red = most, so a nearly uniform map tints the whole image). Frame green = same "
                 "person, red = another person.")

Row = tuple[str, bool | None, Explanation]  # (label under the hit, same person?, its explanation)
Section = tuple[list[str], list[Row]]  # (header lines, rows) of one query
Explainer = Callable[[str, str, list[str]], list[Explanation]]  # (caption, language, image paths) -> explanations


def overlay(image: Image.Image, heat: torch.Tensor) -> Image.Image:
    """``image`` with ``heat`` [grid_h, grid_w] blended over it (see the module docstring);
    pixels where the upsampled map is 0 keep their colour."""
    h = heat.detach().float().cpu()
    top = h.max()
    h = h / top if top > 0 else torch.zeros_like(h)
    h = F.interpolate(h[None, None], size=(image.height, image.width), mode="bilinear",
                      align_corners=False)[0, 0].clamp(0, 1)
    pixels = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
    pixels = pixels.view(image.height, image.width, 3).float()
    colour = torch.stack([torch.full_like(h, 255.0), 255.0 * (1 - h), torch.zeros_like(h)], -1)
    alpha = (ALPHA * h)[..., None]
    blended = (pixels * (1 - alpha) + colour * alpha).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(blended.numpy(), "RGB")


def heat_cells(path: str, heats: list[torch.Tensor]) -> list[Image.Image]:
    """One ``THUMB`` cell per map: the image (read once) fitted and centred, the map over it;
    the grey cross of ``thumbnail`` when the image cannot be read."""
    image = fitted(path, THUMB)
    if image is None:
        return [thumbnail(path, THUMB) for _ in heats]
    cells = []
    for heat in heats:
        cell = Image.new("RGB", THUMB, THUMB_BACKGROUND)
        cell.paste(overlay(image, heat), fitted_box(image, THUMB))
        cells.append(cell)
    return cells


def cell_size(rows: list[Row]) -> tuple[int, int]:
    """(width, height) of one cell: the framed image and as many label lines as the longest label."""
    lines = max([label.count("\n") + 1 for label, _, _ in rows], default=1)
    return THUMB[0] + 2 * BORDER, THUMB[1] + 2 * BORDER + lines * LINE_H + 4


def image_width(sections: list[Section]) -> int:
    """Wide enough for the row with the most words (hit cell + one cell per word)."""
    widest = max([1 + len(e.words) for _, rows in sections for _, _, e in rows], default=1)
    return max(MIN_WIDTH, 2 * PAD + widest * (THUMB[0] + 2 * BORDER + GAP) - GAP)


def header_height(lines: list[str], width: int) -> int:
    """Pixel height of the header lines wrapped to ``width``, as draw_text wraps them, and a gap."""
    return sum(len(wrap(*drawable(line), width, HEADER_LINES)) for line in lines) * LINE_H + GAP


def section_height(section: Section, width: int) -> int:
    lines, rows = section
    _, cell_h = cell_size(rows)
    return header_height(lines, width - 2 * PAD) + len(rows) * (cell_h + GAP) - (GAP if rows else 0)


def draw_word(canvas: Image.Image, x: int, y: int, word: str) -> None:
    """``word`` centred under the cell at (x, y), in a font that has its script, cut to the cell's width."""
    text, font = drawable(word)
    text = wrap(text, font, THUMB[0] + 2 * BORDER, 1)[0] if text else text
    ImageDraw.Draw(canvas).text((x + BORDER + THUMB[0] // 2, y + THUMB[1] + 2 * BORDER + 2), text, fill=INK,
                                font=font, anchor="ma")


def draw_section(canvas: Image.Image, y: int, section: Section) -> None:
    """One query at height ``y``: its header lines, then a row per hit."""
    lines, rows = section
    for line in lines:
        y = draw_text(canvas, PAD, y, line, canvas.width - 2 * PAD, HEADER_LINES)
    y += GAP
    cell_w, cell_h = cell_size(rows)
    for label, mark, explanation in rows:
        draw_cell(canvas, PAD, y, explanation.path, mark, label, THUMB)
        cells = heat_cells(explanation.path, [heat for _, heat in explanation.words])
        for j, ((word, _), cell) in enumerate(zip(explanation.words, cells)):
            x = PAD + (j + 1) * (cell_w + GAP)
            canvas.paste(cell, (x + BORDER, y + BORDER))
            draw_word(canvas, x, y, word)
        y += cell_h + GAP


def explanations_image(sections: list[Section]) -> Image.Image:
    """Every section (query) of ``sections`` one under the other, a grey rule between two."""
    width = image_width(sections)
    heights = [section_height(s, width) for s in sections]
    canvas = Image.new("RGB", (width, 2 * PAD + sum(heights) + SECTION_GAP * max(len(sections) - 1, 0)),
                       BACKGROUND)
    y = PAD
    for i, (section, height) in enumerate(zip(sections, heights)):
        if i:
            rule = y - SECTION_GAP // 2
            ImageDraw.Draw(canvas).line((PAD, rule, width - PAD, rule), fill=GREY)
        draw_section(canvas, y, section)
        y += height + SECTION_GAP
    return canvas


def draw_explanations(header_lines: list[str], rows: list[Row], out: Path) -> tuple[int, int]:
    """Write the explanation picture of one query to ``out`` (PNG, atomically); returns its size.

    ``header_lines``: drawn at the top, one after the other (e.g. the query, how it was
    scored); ``rows``: one per hit, ``(label, mark, explanation)``: the label under the hit
    (``\\n`` separates lines), mark True/False/None for a green/red/grey frame, and
    ``engine.explain.explain``'s result for that hit's image.
    """
    canvas = explanations_image([(header_lines, rows)])
    save_png(canvas, Path(out))
    return canvas.size


def report_explanations(results: dict[str, EvalResult], sets: dict[str, EvalData], explain: Explainer) -> Image.Image:
    """explain.png of the evaluation report: per language, the best and the worst example
    query of ``pick_examples`` with their top ``REPORT_TOP`` hits explained by ``explain``."""
    sections: list[Section] = [([REPORT_LEGEND], [])]
    for lang, r in results.items():
        data = sets[lang]
        for kind, q in pick_examples(r.stats, best=1, worst=1):
            top = r.stats["top"][q, :REPORT_TOP].tolist()
            found = explain(data.captions[q], lang, [data.gallery_paths[g] for g in top])
            rows = [(f"#{j + 1}", bool(data.gallery_pids[g] == data.query_pids[q]), e)
                    for j, (g, e) in enumerate(zip(top, found))]
            ap = 100 * float(r.stats["ap"][q])
            sections.append(([f"{lang}, {kind} query {q} (AP {ap:.1f}): {shown_caption(lang, q, sets)}"], rows))
    return explanations_image(sections)


__all__ = ["ALPHA", "Explainer", "THUMB", "draw_explanations", "explanations_image", "overlay", "report_explanations"]
