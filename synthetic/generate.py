"""Generate the synthetic multilingual pedestrian dataset: the built-in default for demos and tests.

    python -m synthetic --out runs/synthetic

Default size: 800 train ids, 50 val ids, 100 test ids, 4 images per id at 128x64, two
captions per image (train 3,200 images / 6,400 captions; val 200 / 400; test 400 / 800;
shell/demo.sh uses ``--train-ids 3200``):
100 test identities share a small attribute vocabulary, so text-to-image retrieval is
far from trivial, yet a tiny model learns it within a few CPU minutes.

Writes, like a real benchmark laid out for this project:
- ``imgs/{split}/{id}_{k}.png`` (PNG: byte-identical for a seed),
- ``annos/{split}_reid_{lang}.json`` for lang in en, ch, fr, de: aligned translations,
- ``annos/reference_levels.json``: per evaluation split, the metrics of two rankers that
  know the generator's attributes (``synthetic.reference``), a colour-only reader and an
  attribute-perfect one, which the evaluation report shows beside the model's,
- ``text_encoder/`` (``synthetic.tokenizer``): a SentencePiece tokenizer trained on every caption of every language,
  loadable with ``AutoTokenizer.from_pretrained`` like xlm-roberta-base, and a small
  XLM-R ``config.json`` (no weights) for the demo model,
- ``generation.json`` (last): the arguments, so ``--reuse`` can keep a folder made with the same ones
  (the mix only when not ``default``, so records written before mixes existed still match).

``--mix`` picks the attribute distributions the people are drawn from (``synthetic.captions.MIXES``):
``default``, or ``shifted``, another population (skewed colours, more bags, hats and objects, other
hair, garments, builds and gender ratio) over the same vocabulary, so a model trained on a default
dataset reads every word of its captions. A second dataset for a cross-dataset transfer table:

    python -m synthetic --out runs/synthetic_shifted --seed 7 --mix shifted --train-ids 2

The val and test people do not depend on ``--train-ids`` (see ``sample_identities``), so
training sets of different sizes are compared on the same held-out people.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from synthetic.captions import CAPTIONS_PER_IMAGE, LANGS, MIXES, Identity, image_plans, sample_identity, write_caption
from synthetic.reference import write_reference_levels
from synthetic.render import render_to_file
from synthetic.tokenizer import write_text_encoder

SPLITS = ("train", "val", "test")
GENERATION_FILE = "generation.json"  # in the output folder, written last: the arguments of a complete generation
GENERATOR_VERSION = 3  # raise it when the same arguments would write different files (2: held-out people drawn
# first; 3: Chinese word pieces)


def sample_identities(seed: int, counts: dict[str, int], mix: str = "default") -> dict[str, list[tuple[int, Identity]]]:
    """Distinct identities (no two share every attribute) drawn from ``MIXES[mix]``, ids numbered
    across splits so splits are disjoint.

    Drawn and numbered test first, then val, then train: the test and val people (and so
    their images and captions, which are seeded by id) do not depend on the number of
    training people, so datasets with different ``--train-ids`` are evaluated on the same people.
    """
    if mix not in MIXES:
        raise ValueError(f"unknown mix '{mix}': expected one of {', '.join(MIXES)}")
    rng = np.random.default_rng([seed, 0])
    attributes = MIXES[mix]
    seen: set[Identity] = set()
    out: dict[str, list[tuple[int, Identity]]] = {}
    next_id = 1
    for split in ("test", "val", "train"):
        out[split] = []
        for _ in range(counts[split]):
            ident = sample_identity(rng, attributes)
            while ident in seen:
                ident = sample_identity(rng, attributes)
            seen.add(ident)
            out[split].append((next_id, ident))
            next_id += 1
    return {split: out[split] for split in SPLITS}


def build_annotations(seed: int, people: dict[str, list[tuple[int, Identity]]],
                      images_per_id: dict[str, int]) -> dict[str, dict[str, list]]:
    """split -> lang -> entries; captions planned once per image and written in every language."""
    annos: dict[str, dict[str, list]] = {s: {lang: [] for lang in LANGS} for s in SPLITS}
    for split in SPLITS:
        for pid, ident in people[split]:
            for k in range(images_per_id[split]):
                plans = image_plans(seed, pid, ident, k)
                for lang in LANGS:
                    annos[split][lang].append({"file_path": f"{split}/{pid:05d}_{k}.png", "id": pid,
                                               "captions": [write_caption(ident, p, lang) for p in plans]})
    return annos


def generate(out: str | Path, seed: int = 0, train_ids: int = 800, val_ids: int = 50, test_ids: int = 100,
             images_per_id: int = 4, size: tuple[int, int] = (128, 64), hidden_size: int = 128,
             processes: int | None = None, train_images_per_id: int = 0,
             mix: str = "default") -> dict[str, dict[str, int]]:
    """Write the dataset under ``out`` (``size`` = (height, width)); returns per-split counts.
    ``train_images_per_id`` > 0 gives the training people that many images instead of
    ``images_per_id`` (more people at the same rendering cost); ``mix`` names the attribute
    distributions of ``synthetic.captions.MIXES`` the people are drawn from."""
    out = Path(out)
    (out / GENERATION_FILE).unlink(missing_ok=True)  # a folder being rewritten is not a complete generation
    counts = {"train": train_ids, "val": val_ids, "test": test_ids}
    per_id = images_per_split(images_per_id, train_images_per_id)
    people = sample_identities(seed, counts, mix)
    annos = build_annotations(seed, people, per_id)
    jobs = []
    for split in SPLITS:
        (out / "imgs" / split).mkdir(parents=True, exist_ok=True)
        for pid, ident in people[split]:
            for k in range(per_id[split]):
                jobs.append((seed, pid, k, ident, (size[1], size[0]), str(out / "imgs" / split / f"{pid:05d}_{k}.png")))
    processes = processes or min(os.cpu_count() or 1, 8)
    if processes > 1 and len(jobs) > 64:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            pool.map(render_to_file, jobs, chunksize=32)
    else:
        for job in jobs:
            render_to_file(job)
    (out / "annos").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        if not counts[split]:
            continue
        for lang in LANGS:
            (out / "annos" / f"{split}_reid_{lang}.json").write_text(
                json.dumps(annos[split][lang], ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    write_reference_levels(out / "annos", seed, people, images_per_id)
    corpus = [c for split in SPLITS for lang in LANGS for e in annos[split][lang] for c in e["captions"]]
    write_text_encoder(corpus, out / "text_encoder", hidden_size)
    (out / GENERATION_FILE).write_text(json.dumps(generation_args(seed, counts, per_id, size, hidden_size, mix)) + "\n")
    return {s: {"ids": counts[s], "images": counts[s] * per_id[s],
                "captions": counts[s] * per_id[s] * CAPTIONS_PER_IMAGE} for s in SPLITS}


def images_per_split(images_per_id: int, train_images_per_id: int = 0) -> dict[str, int]:
    """Images per person of each split: ``train_images_per_id`` (when > 0) for train only."""
    return {"train": train_images_per_id or images_per_id, "val": images_per_id, "test": images_per_id}


def generation_args(seed: int, counts: dict[str, int], per_id: dict[str, int], size: tuple[int, int],
                    hidden_size: int, mix: str = "default") -> dict[str, object]:
    """What determines the files of a generation (``--reuse`` compares it with the folder's record).
    The mix only when not the default: a default generation's record is the one written before mixes existed."""
    args: dict[str, object] = {"generator": GENERATOR_VERSION, "seed": seed, "ids": counts, "images_per_id": per_id,
                               "size": list(size), "hidden_size": hidden_size}
    if mix != "default":
        args["mix"] = mix
    return args


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 128x64, got '{text}'") from None
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got '{text}'")
    return h, w


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m synthetic", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Render the synthetic multilingual (en/ch/fr/de) pedestrian dataset: imgs/, annos/, text_encoder/. "
                    "Defaults: 800 train / 50 val / 100 test identities x 4 images of 128x64, 2 captions each.")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    ap.add_argument("--train-ids", type=int, default=800, help="training identities")
    ap.add_argument("--val-ids", type=int, default=50, help="validation identities (0: no val split)")
    ap.add_argument("--test-ids", type=int, default=100, help="test identities")
    ap.add_argument("--images-per-id", type=int, default=4, help="images (views) per identity")
    ap.add_argument("--train-images-per-id", type=int, default=0,
                    help="images per training identity (0: --images-per-id); val and test keep --images-per-id")
    ap.add_argument("--size", type=_size, default=(128, 64), help="image HxW")
    ap.add_argument("--hidden-size", type=int, default=128, help="hidden size written to text_encoder/config.json")
    ap.add_argument("--mix", choices=list(MIXES), default="default",
                    help="attribute distributions of the people (synthetic/captions.py MIXES): 'shifted' draws "
                         "another population (skewed colours, more bags/hats/objects, other hair, garments, builds "
                         "and gender ratio) with the same words, for cross-dataset transfer")
    ap.add_argument("--processes", type=int, default=None, help="rendering processes (default: CPU count, at most 8)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep --out as it is if a complete generation with these same arguments is there")
    args = ap.parse_args(argv)
    if args.train_ids < 2 or args.test_ids < 2 or args.val_ids < 0 or args.images_per_id < 1 or args.train_images_per_id < 0:
        ap.error("need at least 2 train and 2 test identities, val >= 0, at least 1 image per identity "
                 "and --train-images-per-id >= 0")
    if args.hidden_size <= 0 or args.hidden_size % 4:
        ap.error(f"--hidden-size must be a positive multiple of the 4 attention heads, got {args.hidden_size}")
    record = Path(args.out) / GENERATION_FILE
    counts = {"train": args.train_ids, "val": args.val_ids, "test": args.test_ids}
    per_id = images_per_split(args.images_per_id, args.train_images_per_id)
    if args.reuse and record.is_file() and json.loads(record.read_text()) == generation_args(
            args.seed, counts, per_id, args.size, args.hidden_size, args.mix):
        print(f"kept {args.out}: generated with these arguments")
        return
    start = time.time()
    stats = generate(args.out, args.seed, args.train_ids, args.val_ids, args.test_ids, args.images_per_id,
                     args.size, args.hidden_size, args.processes, args.train_images_per_id, args.mix)
    for split, s in stats.items():
        print(f"{split:5s}: {s['ids']} ids, {s['images']} images, {s['captions']} captions per language")
    print(f"wrote {args.out} in {time.time() - start:.1f} s")
