"""Search a folder of images with a caption, using a trained checkpoint.

    python -m tools.search --checkpoint runs/demo/best_en.pth --gallery runs/synthetic/imgs/test \\
        --query "a woman in a red coat with a black backpack" [--lang en] [--top-k 10] [--no-rerank] \\
        [--out search.png] [--annotations runs/synthetic/annos/test_reid_en.json [--query-id ID]] \\
        [--index DIR] [--threshold auto|T [--fmr 0.05] [--calibration-split val]] [--explain]

Prints the ranked list and writes a PNG grid of the top-k images with rank and scores, each
labelled: ``ITM`` (the re-ranking score, top ``model.k_test`` only) and ``cos`` (cosine
similarity, every result), so no column mixes the two scales.
With an annotation file (a JSON list of {file_path, id, captions}, file_path relative to
--gallery), the gallery is the annotated images and each result is framed green when it
shows the query's person and red otherwise; the query's person is --query-id, or else the
id of the entry one of whose captions equals the query (after cleaning).

``--index DIR`` keeps the encoded gallery on disk (engine/gallery_index.py): with
--gallery it is created or brought up to date (only new or changed images are encoded),
without it the saved index is searched as it is. ``--threshold auto`` answers "no match"
when no hit scores above a threshold calibrated on the labelled ``--calibration-split``
at the false-match rate ``--fmr`` (engine/calibration.py; stored in the index folder, or
beside the checkpoint, and reused); ``--threshold T`` sets it by hand (ITM score under
re-ranking, else cosine). ``--explain`` draws, for each hit, where each content word of
the query looked (engine/explain.py). Input problems end with one ``error:`` line and
exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from PIL import Image

from utils.errors import exit_on_input_error

if TYPE_CHECKING:
    from engine.retriever import Hit, Retriever

COLUMNS = 10  # result cells per row of the grid
THUMB = (96, 192)  # image area of a result cell: person crops are tall; small ones are scaled up
LABEL_LINES = 2  # "#1  ITM 0.62" and "cos 0.82" under each image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.search", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by training (e.g. runs/demo/best_en.pth)")
    p.add_argument("--gallery", help="folder of images (searched recursively without --annotations); "
                                     "optional with --index (then the saved index is searched as it is)")
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
    p.add_argument("--index", help="folder of a saved gallery index: created or updated with --gallery, reused without")
    p.add_argument("--threshold", type=threshold_arg,
                   help="'auto' (calibrated on --calibration-split at --fmr) or a number: hits must score above it "
                        "(ITM when re-ranked, else cosine), otherwise the answer is 'no match'")
    p.add_argument("--fmr", type=float, default=0.05, help="false-match rate --threshold auto is calibrated for")
    p.add_argument("--calibration-split", default="val", help="labelled split --threshold auto is calibrated on")
    p.add_argument("--explain", action="store_true",
                   help="draw, for each hit, where each content word of the query looked (fusion cross-attention)")
    p.add_argument("--explain-layers", choices=("last", "mean"), default="last",
                   help="with --explain: the last fusion layer's attention, or the mean over all fusion layers")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top-k must be at least 1, got {args.top_k}")
    if args.query_id is not None and not args.annotations:
        p.error("--query-id needs --annotations (the gallery's ids)")
    if args.gallery is None and args.index is None:
        p.error("give --gallery (a folder of images), --index (a saved index), or both")
    if args.annotations and args.gallery is None:
        p.error("--annotations needs --gallery (the folder its file_path entries are relative to)")
    if not 0 < args.fmr < 1:
        p.error(f"--fmr must be between 0 and 1, got {args.fmr}")
    return args


def threshold_arg(text: str) -> str | float:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got '{text}'") from None


@dataclass(frozen=True)
class Threshold:
    """The score a hit must beat to count as a match, on which scale, and where it came from."""
    score: str  # "itm" or "cosine"
    value: float
    source: str

    def passes(self, hit: Hit) -> bool:
        value = hit.itm if self.score == "itm" else hit.cosine
        return value is not None and value > self.value

    def describe(self) -> str:
        return f"{'ITM' if self.score == 'itm' else 'cos'} > {self.value:.3f} ({self.source})"


def resolve_threshold(args: argparse.Namespace, retriever: Retriever, lang: str) -> Threshold | None:
    """--threshold as a :class:`Threshold`: a number as given, or ``auto``: the stored calibration for this
    checkpoint and setup, else a new one (stored for the next search)."""
    from engine.calibration import CalibrationStore, stored_or_calibrate

    reranked = not args.no_rerank
    if args.threshold is None:
        return None
    if args.threshold != "auto":
        return Threshold("itm" if reranked else "cosine", float(args.threshold), "given")
    store = (CalibrationStore(Path(args.index) / "calibration.json") if args.index
             else CalibrationStore.beside(args.checkpoint))
    cal, fresh = stored_or_calibrate(retriever, store, lang, args.calibration_split, args.fmr)
    score, value = cal.threshold(reranked)
    print(f"{'calibrated' if fresh else 'calibration from'} {store.path}: {score} threshold {value:.4f} at "
          f"{100 * cal.fmr:g}% false matches ({cal.split} {cal.lang}, {cal.queries} queries; "
          f"true matches {cal.tmr[score]:.1f}%)")
    return Threshold(score, value, f"{100 * cal.fmr:g}% false matches on {cal.split}")


def gallery_from_annotations(gallery: str, annotations: str) -> tuple[list[str], dict[str, int], list]:
    """(image paths, id of each real path, entries) of an annotation file whose file_path is relative to ``gallery``."""
    from data.annotations import read_entries
    from engine.retriever import RetrievalError

    if not os.path.isdir(gallery):
        raise RetrievalError(f"gallery folder not found: {gallery}")
    entries = read_entries(annotations)
    paths = [os.path.join(gallery, e.file_path) for e in entries]
    missing = next((p for p in paths if not os.path.isfile(p)), None)
    if missing is not None:
        raise RetrievalError(f"{annotations}: image not found under --gallery: {missing}")
    return paths, {os.path.realpath(p): e.id for p, e in zip(paths, entries)}, entries


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


def grid_layout(n: int, header_lines: int = 3) -> tuple[int, int, int, int]:
    """(columns, cell width, cell height, header height) of the grid for ``n`` results."""
    from engine.figures import BORDER, GAP, LINE_H

    cols = min(COLUMNS, n)
    return cols, THUMB[0] + 2 * BORDER, THUMB[1] + 2 * BORDER + LABEL_LINES * LINE_H + 4, header_lines * LINE_H + GAP


def grid_size(n: int, header_lines: int = 3) -> tuple[int, int]:
    """Pixel size of the PNG for ``n`` results, known before drawing."""
    from engine.figures import GAP, PAD

    cols, cell_w, cell_h, header = grid_layout(n, header_lines)
    rows = -(-n // cols)
    return max(2 * PAD + cols * (cell_w + GAP) - GAP, 320), PAD + header + rows * (cell_h + GAP) - GAP + PAD


def query_line(query: str, lang: str) -> str:
    from engine.figures import font_for

    shown = query if font_for(query) is not None else "not drawn, no installed font has its characters (see terminal)"
    return f"query ({lang}): {shown}"


def draw_grid(query: str, lang: str, how: str, hits: list[Hit], marks: list[bool | None], out: Path,
              verdict: str | None = None, below: list[bool] | None = None) -> tuple[int, int]:
    """Header (the query, in a font with its script, how it was scored, and the threshold's ``verdict``),
    then the results, those ``below`` the threshold faded; returns the PNG size."""
    from engine.figures import GAP, LINE_H, PAD, RED, draw_cell, draw_text, save_png

    lines = 3 if verdict is None else 4
    cols, cell_w, cell_h, header = grid_layout(len(hits), lines)
    canvas = Image.new("RGB", grid_size(len(hits), lines), (255, 255, 255))
    width = canvas.width
    draw_text(canvas, PAD, PAD, query_line(query, lang), width - 2 * PAD, 2)
    draw_text(canvas, PAD, PAD + 2 * LINE_H, f"score: {how}", width - 2 * PAD, 1, fill=(90, 90, 90))
    if verdict is not None:
        draw_text(canvas, PAD, PAD + 3 * LINE_H, verdict, width - 2 * PAD, 1,
                  fill=RED if verdict.startswith("no match") else (0, 110, 40))
    for i, (hit, mark) in enumerate(zip(hits, marks)):
        x = PAD + (i % cols) * (cell_w + GAP)
        y = PAD + header + (i // cols) * (cell_h + GAP)
        draw_cell(canvas, x, y, hit.path, mark, cell_label(i + 1, hit), THUMB)
        if below is not None and below[i]:
            fade(canvas, (x, y, x + cell_w, y + cell_h))
    save_png(canvas, out)
    return canvas.size


def fade(canvas: Image.Image, box: tuple[int, int, int, int]) -> None:
    """Blend a region 60% towards white: a hit below the threshold stays visible but reads as no match."""
    region = canvas.crop(box)
    canvas.paste(Image.blend(region, Image.new("RGB", region.size, (255, 255, 255)), 0.6), box[:2])


def load_gallery(args: argparse.Namespace, retriever: Retriever, images: str | list[str] | None) -> int:
    """Index the gallery in memory, or open (and with --gallery update) the saved index; returns its size."""
    if not args.index:
        return retriever.index(images)
    report = retriever.open_index(args.index, images, root=args.gallery)
    if report is not None:
        why = f" ({report.reason})" if report.reason else ""
        print(f"index {args.index}: {report.kept} kept, {report.added} added, {report.changed} changed, "
              f"{report.removed} removed{why}")
    return len(retriever.gallery)


def run(args: argparse.Namespace) -> None:
    import torch

    from engine.retriever import RetrievalError, Retriever

    if not os.path.isfile(args.checkpoint):
        raise RetrievalError(f"checkpoint not found: {args.checkpoint}")
    ids: dict[str, int] = {}
    person = None
    images = args.gallery
    if args.annotations:
        images, ids, entries = gallery_from_annotations(args.gallery, args.annotations)
        person = query_person(args.query, entries, args.query_id)
        if person is None:
            print("warning: no caption in --annotations equals the query; pass --query-id to mark results",
                  file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    retriever = Retriever.from_checkpoint(args.checkpoint, device=device)
    lang = args.lang or retriever.cfg.data.source_language
    threshold = resolve_threshold(args, retriever, lang)
    n = load_gallery(args, retriever, images)
    hits = retriever.search(args.query, top_k=args.top_k, rerank=not args.no_rerank, lang=lang)
    marks = [None if person is None else ids[os.path.realpath(h.path)] == person for h in hits]
    k = min(retriever.cfg.model.k_test, n)
    how = ("cos = cosine similarity" if args.no_rerank else
           f"ITM score for the top {k} re-ranked (ITM), cosine similarity for all (cos)")
    print(f"query ({lang}): {args.query}")
    print(f"{len(hits)} of {n} images; {how}" + (f"; query person id {person}" if person is not None else ""))
    passed = [threshold is not None and threshold.passes(h) for h in hits]
    for i, (hit, mark, ok) in enumerate(zip(hits, marks, passed), 1):
        tag = "" if mark is None else f"  id {ids[os.path.realpath(hit.path)]} {'match' if mark else 'other'}"
        itm = "       -" if hit.itm is None else f"{hit.itm:8.4f}"
        print(f"{i:4d}  ITM {itm}  cos {hit.cosine:8.4f}  {hit.path}{tag}" + ("  [above threshold]" if ok else ""))
    verdict = None
    if threshold is not None:
        verdict = (f"no match above threshold {threshold.describe()}" if not any(passed) else
                   f"{sum(passed)} hit(s) above threshold {threshold.describe()}")
        print(verdict)
    if args.explain:
        size = draw_explained(args, retriever, lang, how, hits, marks, verdict, passed)
    else:
        below = [not ok for ok in passed] if threshold is not None else None
        size = draw_grid(args.query, lang, how, hits, marks, Path(args.out), verdict, below)
    print(f"wrote {args.out} ({size[0]}x{size[1]})")


def draw_explained(args: argparse.Namespace, retriever: Retriever, lang: str, how: str, hits: list[Hit],
                   marks: list[bool | None], verdict: str | None, passed: list[bool]) -> tuple[int, int]:
    """The --explain picture: per hit, its image and one attention map per content word of the query."""
    from engine.explain import explain
    from engine.explain_figure import draw_explanations

    found = explain(retriever.model, retriever.tokenizer, retriever.cfg, args.query, lang, [h.path for h in hits],
                    retriever.device, layers=args.explain_layers)
    labels = [cell_label(i + 1, h) + ("" if verdict is None else "\nabove T" if ok else "\nbelow T")
              for i, (h, ok) in enumerate(zip(hits, passed))]
    layer = "last fusion layer" if args.explain_layers == "last" else "mean over the fusion layers"
    header = [query_line(args.query, lang), f"score: {how}", *([verdict] if verdict else []),
              f"maps: cross-attention of each word on the image ({layer}, mean over heads; red = most)"]
    return draw_explanations(header, list(zip(labels, marks, found)), Path(args.out))


def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(run, parse_args(argv))


if __name__ == "__main__":
    main()
