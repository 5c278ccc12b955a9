"""Evaluate one checkpoint on every dataset x query language: a transfer table.

    python -m tools.transfer --checkpoint runs/demo/best_en.pth \\
        --data synthetic=runs/synthetic/annos:runs/synthetic/imgs [--data NAME=ANNO_DIR:IMAGE_DIR ...] \\
        [--languages en,ch,fr,de] [--split test] [--out DIR] [--device cpu]

Writes DIR/transfer.md (R1 / R5 / R10 / mAP per cell, chance beside each dataset),
DIR/transfer.json and DIR/transfer_r1.png (R1 heatmap). Cells follow the training protocol
of the checkpoint's stored config (engine/transfer.py). A language without an annotation
file for a dataset is an empty cell with its reason. Input problems end with one
``error:`` line and exit code 2.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from utils.errors import InputError, exit_on_input_error


class TransferInputError(InputError):
    """A malformed command line (``--data``, ``--languages``) or a missing input."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.transfer", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint written by training (e.g. runs/demo/best_en.pth)")
    p.add_argument("--data", action="append", required=True, metavar="NAME=ANNO_DIR:IMAGE_DIR",
                   help="a dataset: its name in the table, annotation folder and image folder (repeatable)")
    p.add_argument("--languages", default="en,ch,fr,de", help="comma-separated query languages (columns)")
    p.add_argument("--split", default="test", help="annotation split: {split}_reid_{lang}.json")
    p.add_argument("--out", default="transfer", help="output folder")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return p.parse_args(argv)


def parse_data(text: str) -> tuple[str, str, str]:
    """NAME=ANNO_DIR:IMAGE_DIR -> (name, anno_dir, image_dir); both folders must exist."""
    name, eq, dirs = text.partition("=")
    anno_dir, colon, image_dir = dirs.partition(":")
    if not (eq and colon and name.strip() and anno_dir and image_dir):
        raise TransferInputError(f"--data '{text}' must look like NAME=ANNO_DIR:IMAGE_DIR")
    for kind, folder in (("annotation", anno_dir), ("image", image_dir)):
        if not os.path.isdir(folder):
            raise TransferInputError(f"--data '{name}': {kind} folder not found: {folder}")
    return name.strip(), anno_dir, image_dir


def parse_languages(text: str) -> list[str]:
    """Comma-separated codes, each usable in a file name, without repeats."""
    from utils.config.languages import LANGUAGE_CODE

    langs = [lang.strip() for lang in text.split(",") if lang.strip()]
    bad = next((lang for lang in langs if not LANGUAGE_CODE.fullmatch(lang)), None)
    if not langs or bad is not None:
        raise TransferInputError(f"--languages '{text}' must be comma-separated language codes (e.g. en,ch,fr,de)")
    if len(set(langs)) != len(langs):
        raise TransferInputError(f"--languages '{text}' repeats a language")
    return langs


def run(args: argparse.Namespace) -> list[Path]:
    """Validate every input before loading the model, then evaluate and write the three files."""
    import torch

    from engine.retriever import Retriever
    from engine.transfer import DatasetSpec, transfer_table, write_outputs

    specs = [DatasetSpec(*parse_data(d)) for d in args.data]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise TransferInputError(f"--data names must differ, got {', '.join(names)}")
    languages = parse_languages(args.languages)
    if not os.path.isfile(args.checkpoint):
        raise TransferInputError(f"checkpoint not found: {args.checkpoint}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    r = Retriever.from_checkpoint(args.checkpoint, device=device)
    table = transfer_table(r.model, r.tokenizer, r.cfg, specs, languages, args.split, device, str(args.checkpoint))
    paths = write_outputs(table, Path(args.out))
    print((Path(args.out) / "transfer.md").read_text(encoding="utf-8"), end="")
    print("wrote " + ", ".join(str(p) for p in paths))
    return paths


def main(argv: list[str] | None = None) -> None:
    exit_on_input_error(run, parse_args(argv))


if __name__ == "__main__":
    main()
