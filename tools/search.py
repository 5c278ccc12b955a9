"""Search a folder of images with a caption, using a trained checkpoint.

    python -m tools.search --checkpoint runs/demo/best_en.pth --gallery runs/synthetic/imgs/test \\
        --query "a woman in a red coat with a black backpack" [--lang en] [--top-k 10] [--no-rerank] \\
        [--out search.png] [--annotations runs/synthetic/annos/test_reid_en.json [--query-id ID]] [--cache DIR]

Prints the ranked list and writes a PNG grid of the top-k images with rank and scores, each
labelled: ``ITM`` (the re-ranking score, top ``model.k_test`` only) and ``cos`` (cosine
similarity, every result), so no column mixes the two scales.
With an annotation file (a JSON list of {file_path, id, captions}, file_path relative to
--gallery), the gallery is the annotated images and each result is framed green when it
shows the query's person and red otherwise; the query's person is --query-id, or else the
id of the entry one of whose captions equals the query (after cleaning). Input problems
end with one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from PIL import Image

from utils.errors import exit_on_input_error

if TYPE_CHECKING:
    from engine.retriever import Hit

COLUMNS = 10  # result cells per row of the grid
THUMB = (96, 192)  # image area of a result cell: person crops are tall; small ones are scaled up
LABEL_LINES = 2  # "#1  ITM 0.62" and "cos 0.82" under each image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.search", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by training (e.g. runs/demo/best_en.pth)")
    p.add_argument("--gallery", required=True, help="folder of images (searched recursively without --annotations)")
    p.add_argument("--query", required=True, help="the caption to search for")
    p.add_argument("--lang", default=None,
                   help="language code of the query (default: the model's source language); the model's "
                        "target language (and data.tl_proj_languages) use the target-language projection")
    p.add_argument("--top-k", type=int, default=10, help="number of results")
    p.add_argument("--no-rerank", action="store_true", help="rank by cosine similarity only (no ITM re-ranking)")
    p.add_argument("--out", default="search.png", help="PNG grid of the results")
    p.add_argument("--annotations",
                   help="JSON list of {file_path, id, captions} for the gallery: marks results right/wrong")
    p.add_argument("--query-id", type=int,
                   help="person id of the query (default: looked up by caption in --annotations)")
    p.add_argument("--cache",
                   help="folder for cached gallery features (reused while images and checkpoint are unchanged)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.query_id is not None and not args.annotations:
        p.error("--query-id needs --annotations (the gallery's ids)")
    return args


def gallery_from_annotations(gallery: str, annotations: str) -> tuple[list[str], dict[str, int], list]:
    """(image paths, id of each path, entries) of an annotation file whose file_path is relative to ``gallery``."""
    from data.annotations import read_entries
    from engine.retriever import RetrievalError

    if not os.path.isdir(gallery):
        raise RetrievalError(f"gallery folder not found: {gallery}")
    entries = read_entries(annotations)
    paths = [os.path.join(gallery, e.file_path) for e in entries]
    missing = next((p for p in paths if not os.path.isfile(p)), None)
    if missing is not None:
        raise RetrievalError(f"{annotations}: image not found under --gallery: {missing}")
    return paths, dict(zip(paths, (e.id for e in entries))), entries


def query_person(query: str, entries: list, query_id: int | None) -> int | None:
    """--query-id, or the id of the entry with a caption equal to the query after cleaning, or None."""
    from data.text import clean_caption_unicode as clean

    if query_id is not None:
        return query_id
    want = clean(query)  # the forgiving cleaning: punctuation differences do not matter here
    return next((e.id for e in entries for c in e.captions if clean(c) == want), None)


def cell_label(rank: int, hit: Hit) -> str:
    """Two lines under a result image: rank and ITM score, then the cosine similarity."""
    if hit.itm is None:
        return f"#{rank}\ncos {hit.cosine:.2f}"
    return f"#{rank}  ITM {hit.itm:.2f}\ncos {hit.cosine:.2f}"


def grid_layout(n: int) -> tuple[int, int, int, int]:
    """(columns, cell width, cell height, header height) of the grid for ``n`` results."""
    from engine.figures import BORDER, GAP, LINE_H

    cols = min(COLUMNS, n)
    return cols, THUMB[0] + 2 * BORDER, THUMB[1] + 2 * BORDER + LABEL_LINES * LINE_H + 4, 3 * LINE_H + GAP


def grid_size(n: int) -> tuple[int, int]:
    """Pixel size of the PNG for ``n`` results, known before drawing."""
    from engine.figures import GAP, PAD

    cols, cell_w, cell_h, header = grid_layout(n)
    rows = -(-n // cols)
    return max(2 * PAD + cols * (cell_w + GAP) - GAP, 320), PAD + header + rows * (cell_h + GAP) - GAP + PAD


def draw_grid(query: str, lang: str, how: str, hits: list[Hit], marks: list[bool | None], out: Path) -> tuple[int, int]:
    """Header (the query, in a font with its script, and how it was scored), then the results; returns the PNG size."""
    from engine.figures import GAP, LINE_H, PAD, draw_cell, draw_text, font_for, save_png

    cols, cell_w, cell_h, header = grid_layout(len(hits))
    canvas = Image.new("RGB", grid_size(len(hits)), (255, 255, 255))
    width = canvas.width
    shown = query if font_for(query) is not None else "not drawn, no installed font has its characters (see terminal)"
    draw_text(canvas, PAD, PAD, f"query ({lang}): {shown}", width - 2 * PAD, 2)
    draw_text(canvas, PAD, PAD + 2 * LINE_H, f"score: {how}", width - 2 * PAD, 1, fill=(90, 90, 90))
    for i, (hit, mark) in enumerate(zip(hits, marks)):
        x = PAD + (i % cols) * (cell_w + GAP)
        y = PAD + header + (i // cols) * (cell_h + GAP)
        draw_cell(canvas, x, y, hit.path, mark, cell_label(i + 1, hit), THUMB)
    save_png(canvas, out)
    return canvas.size


def run(args: argparse.Namespace) -> None:
    import torch

    from engine.retriever import RetrievalError, Retriever

    if not os.path.isfile(args.checkpoint):
        raise RetrievalError(f"checkpoint not found: {args.checkpoint}")
    ids: dict[str, int] = {}
    person = None
    if args.annotations:
        images, ids, entries = gallery_from_annotations(args.gallery, args.annotations)
        person = query_person(args.query, entries, args.query_id)
        if person is None:
            print("warning: no caption in --annotations equals the query; pass --query-id to mark results",
                  file=sys.stderr)
    else:
        images = args.gallery
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    retriever = Retriever.from_checkpoint(args.checkpoint, device=device)
    lang = args.lang or retriever.cfg.data.source_language
    n = retriever.index(images, cache=args.cache)
    hits = retriever.search(args.query, top_k=args.top_k, rerank=not args.no_rerank, lang=lang)
    marks = [None if person is None else ids[h.path] == person for h in hits]
    k = min(retriever.cfg.model.k_test, n)
    how = ("cos = cosine similarity" if args.no_rerank else
           f"ITM score for the top {k} re-ranked (ITM), cosine similarity for all (cos)")
    print(f"query ({lang}): {args.query}")
    print(f"{len(hits)} of {n} images; {how}" + (f"; query person id {person}" if person is not None else ""))
    for i, (hit, mark) in enumerate(zip(hits, marks), 1):
        tag = "" if mark is None else f"  id {ids[hit.path]} {'match' if mark else 'other'}"
        itm = "       -" if hit.itm is None else f"{hit.itm:8.4f}"
        print(f"{i:4d}  ITM {itm}  cos {hit.cosine:8.4f}  {hit.path}{tag}")
    size = draw_grid(args.query, lang, how, hits, marks, Path(args.out))
    print(f"wrote {args.out} ({size[0]}x{size[1]})")


def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(run, parse_args(argv))


if __name__ == "__main__":
    main()
