"""Synthetic multilingual pedestrian dataset: the built-in default for demos and tests.

    python -m data.synthetic --out data/synthetic

Default size: 800 train ids, 50 val ids, 100 test ids, 4 images per id at 128x64, two
captions per image (train 3,200 images / 6,400 captions; val 200 / 400; test 400 / 800;
shell/demo.sh uses ``--train-ids 3200``):
100 test identities share a small attribute vocabulary, so text-to-image retrieval is
far from trivial, yet a tiny model learns it within a few CPU minutes.

Writes, like a real benchmark laid out for this project:
- ``imgs/{split}/{id}_{k}.png`` (PNG: byte-identical for a seed),
- ``annos/{split}_reid_{lang}.json`` for lang in en, ch, fr, de: aligned translations,
- ``annos/reference_levels.json``: per evaluation split, the metrics of two rankers that
  know the generator's attributes, a colour-only reader (``colour_reader``) and an
  attribute-perfect one (``attribute_ceiling``), which the evaluation report shows beside the model's,
- ``text_encoder/``: a SentencePiece tokenizer trained on every caption of every language,
  loadable with ``AutoTokenizer.from_pretrained`` like xlm-roberta-base, and a small
  XLM-R ``config.json`` (no weights) for the demo model,
- ``generation.json`` (last): the arguments, so ``--reuse`` can keep a folder made with the same ones.

The val and test people do not depend on ``--train-ids`` (see ``sample_identities``), so
training sets of different sizes are compared on the same held-out people.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np

from data.synthetic_captions import (CH_WORDS, LANGS, Identity, Plan, mentioned_facets, plan_caption,
                                     sample_identity, write_caption)
from data.synthetic_render import render_person

SPLITS = ("train", "val", "test")
CAPTIONS_PER_IMAGE = 2
REFERENCE_FILE = "reference_levels.json"  # in annos/: metrics of the reference rankers per split
GENERATION_FILE = "generation.json"  # in the output folder, written last: the arguments of a complete generation
GENERATOR_VERSION = 3  # raise it when the same arguments would write different files (2: held-out people drawn
# first; 3: Chinese word pieces)


def sample_identities(seed: int, counts: dict[str, int]) -> dict[str, list[tuple[int, Identity]]]:
    """Distinct identities (no two share every attribute), ids numbered across splits so splits are disjoint.

    Drawn and numbered test first, then val, then train: the test and val people (and so
    their images and captions, which are seeded by id) do not depend on the number of
    training people, so datasets with different ``--train-ids`` are evaluated on the same people.
    """
    rng = np.random.default_rng([seed, 0])
    seen: set[Identity] = set()
    out: dict[str, list[tuple[int, Identity]]] = {}
    next_id = 1
    for split in ("test", "val", "train"):
        out[split] = []
        for _ in range(counts[split]):
            ident = sample_identity(rng)
            while ident in seen:
                ident = sample_identity(rng)
            seen.add(ident)
            out[split].append((next_id, ident))
            next_id += 1
    return {split: out[split] for split in SPLITS}


def _render_one(job: tuple[int, int, int, Identity, tuple[int, int], str]) -> None:
    seed, pid, k, ident, size, path = job
    render_person(ident, size, np.random.default_rng([seed, 1, pid, k])).save(path, format="PNG")


def image_plans(seed: int, pid: int, ident: Identity, k: int) -> list[Plan]:
    """The caption plans of image ``k`` of person ``pid`` (a pure function of the seed)."""
    rng = np.random.default_rng([seed, 2, pid, k])
    return [plan_caption(ident, rng) for _ in range(CAPTIONS_PER_IMAGE)]


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


def stated_facets(seed: int, people: list[tuple[int, Identity]], images_per_id: int) -> tuple[list[dict[str, str]], list[int]]:
    """The stated attribute values (``mentioned_facets``) and person id of every caption, in evaluation order."""
    facets, pids = [], []
    for pid, ident in people:
        for k in range(images_per_id):
            for plan in image_plans(seed, pid, ident, k):
                facets.append(mentioned_facets(ident, plan))
                pids.append(pid)
    return facets, pids


def _ranker_metrics(score, query_pids: list[int], gallery_pids: list[int], seed: int, orders: int) -> dict[str, float]:
    """Metrics of ranking the gallery by an integer ``score`` [Q, G], ties broken at random.

    R1 is exact over ties (hits in the top group / its size); the other metrics are
    averaged over ``orders`` random orders of the tied images.
    """
    import torch

    from utils.metrics import per_query_stats, summarize

    relevant = torch.tensor(query_pids)[:, None] == torch.tensor(gallery_pids)[None, :]
    top = score == score.amax(1, keepdim=True)
    r1 = float(((top & relevant).sum(1) / top.sum(1)).mean() * 100)
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for _ in range(orders):
        noisy = score + torch.rand(score.shape, generator=gen, dtype=torch.float64) * 0.5  # breaks ties only
        order = torch.sort(noisy, dim=1, descending=True).indices
        runs.append(summarize(per_query_stats(relevant.gather(1, order))))
    out = {key: sum(r[key] for r in runs) / orders for key in ("R1", "R5", "R10", "mAP", "mINP")}
    out["R1"] = r1
    return out


def attribute_ceiling(seed: int, people: list[tuple[int, Identity]], images_per_id: int,
                      orders: int = 20) -> dict[str, float]:
    """Metrics of an attribute-perfect ranker on one split (queries and gallery as evaluation builds them).

    Each gallery image scores the number of the caption's stated attribute values
    (``mentioned_facets``) that its person has; ties are broken at random, and the metrics
    averaged over ``orders`` random orders (R1 over ties exactly: hits in the top group /
    its size). A model that reads every stated attribute correctly can do no better on
    average; the captions alone cannot tell apart people who share them.
    """
    import torch

    names = [f.name for f in dataclasses.fields(Identity)]
    codes: dict[tuple[str, object], int] = {}

    def code(name: str, value: object) -> int:
        return codes.setdefault((name, value), len(codes))

    table = torch.tensor([[code(n, getattr(ident, n)) for n in names] for _, ident in people for _ in range(images_per_id)])
    facets, query_pids = stated_facets(seed, people, images_per_id)
    wanted = torch.tensor([[code(n, f[n]) if n in f else -1 for n in names] for f in facets])
    score = (wanted[:, None, :] == table[None]).sum(2).double()  # [Q, G]
    gallery_pids = [pid for pid, _ in people for _ in range(images_per_id)]
    return _ranker_metrics(score, query_pids, gallery_pids, seed, orders)


COLOUR_FACETS = {"hair_colour": None, "upper_colour": None, "lower_colour": None, "shoes_colour": None,
                 "bag_colour": "bag", "hat_colour": "hat"}  # colour -> the item that must be worn for it to show


def visible_colours(ident: Identity) -> Counter:
    """The colour names seen on a person (hair, upper, lower, shoes, and bag and hat when worn), with repeats."""
    return Counter(getattr(ident, c) for c, item in COLOUR_FACETS.items() if item is None or getattr(ident, item) != "none")


def colour_reader(seed: int, people: list[tuple[int, Identity]], images_per_id: int,
                  orders: int = 20) -> dict[str, float]:
    """Metrics of a ranker that reads only the colour words of a caption, not what wears them.

    Each gallery image scores how many of the caption's stated colours (a multiset: "red
    shoes and a red bag" counts red twice) its person shows anywhere; gender, build,
    garments, patterns, hair style, items, and which garment has which colour are
    ignored. A model below this level has not yet learned to read colours reliably.
    Ties as in ``attribute_ceiling``.
    """
    import torch

    facets, query_pids = stated_facets(seed, people, images_per_id)
    seen = [visible_colours(ident) for _, ident in people for _ in range(images_per_id)]
    stated = [Counter(f[c] for c in COLOUR_FACETS if c in f) for f in facets]
    names = sorted({c for counts in seen + stated for c in counts})

    def table(rows: list[Counter]) -> torch.Tensor:
        return torch.tensor([[counts[c] for c in names] for counts in rows], dtype=torch.float64)

    # size of the multiset intersection of every (caption, image) pair: sum over colours of the smaller count
    score = torch.minimum(table(stated)[:, None, :], table(seen)[None, :, :]).sum(2)  # [Q, G]
    gallery_pids = [pid for pid, _ in people for _ in range(images_per_id)]
    return _ranker_metrics(score, query_pids, gallery_pids, seed, orders)


def _is_cjk(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff"


def train_sentencepiece(captions: list[str], vocab_size: int = 4000) -> bytes:
    """A unigram SentencePiece model (xlm-roberta-base's kind) for the cleaned ``captions``.

    SentencePiece's own unigram trainer breaks down on a corpus this repetitive (a few
    hundred distinct words: it keeps ~100 character-like pieces for English and whole
    clauses for Chinese), and a BPE model would be read by Hugging Face's XLM-R tokenizer
    as unigram pieces scored by merge rank, which cuts words into fragments. So the pieces
    come from a BPE run, except for Chinese: BPE would merge whole clauses such as "wears a
    red hat" into one piece, and a shorter cap cuts across words ("穿棕|色的"), so its
    multi-character pieces are replaced by the words of the caption tables
    (``CH_WORDS``; any other character is a piece of its own), which keeps colour and
    garment words consistent and compositional. Each piece is scored by the log of its
    frequency in the corpus segmented into the fewest pieces. SentencePiece and the Hugging
    Face tokenizer then cut every caption the same way, at word boundaries.
    """
    import math

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    from data.text import clean_caption

    bpe = io.BytesIO()  # written from memory: a model_prefix would embed the output path in the file
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=bpe, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(bpe.getvalue())
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    normal = pb.ModelProto.SentencePiece.NORMAL
    keep = [p for p in proto.pieces
            if p.type != normal or len(p.piece.lstrip("\u2581")) <= 1 or not any(map(_is_cjk, p.piece))]
    del proto.pieces[:]
    proto.pieces.extend(keep)
    have = {p.piece for p in keep}
    for word in dict.fromkeys(clean_caption(w) for w in CH_WORDS):
        if word not in have:
            proto.pieces.add(piece=word, type=normal)
    for p in proto.pieces:
        p.score = -1.0  # equal scores: the fewest pieces win
    fewest = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    counts = Counter(p for c in captions for p in fewest.encode(c, out_type=str))
    total = sum(counts.values())
    for p in proto.pieces:
        if p.type == normal:
            p.score = math.log(max(counts[p.piece], 0.5) / total)
    return proto.SerializeToString()


def write_text_encoder(captions: list[str], out: Path, hidden_size: int = 128) -> None:
    """SentencePiece tokenizer in the xlm-roberta-base folder layout plus a small XLM-R config.json.

    SentencePiece ids: unk 0, bos 1, eos 2, no pad; the XLM-R tokenizer maps them to
    ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 and appends ``<mask>``. Full character
    coverage keeps every Chinese character a piece instead of ``<unk>``. No dropout: the
    demo underfits, and on the CPU attention dropout forces SDPA's math kernel and its
    Bernoulli draws, which took over a third of a demo step (docs/benchmarks.md).
    """
    from transformers import AutoTokenizer

    from data.text import clean_caption

    captions = [clean_caption(c) for c in captions]  # the pipeline tokenizes cleaned (lower-case) text
    out.mkdir(parents=True, exist_ok=True)
    (out / "sentencepiece.bpe.model").write_bytes(train_sentencepiece(captions))
    max_tokens = 128
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": max_tokens}, indent=2) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    config = {"architectures": ["XLMRobertaForMaskedLM"], "model_type": "xlm-roberta", "vocab_size": len(tokenizer),
              "hidden_size": hidden_size, "num_attention_heads": 4, "intermediate_size": 4 * hidden_size,
              "num_hidden_layers": 2, "max_position_embeddings": max_tokens + 2, "layer_norm_eps": 1e-5,
              "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
              "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
              "initializer_range": 0.02}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def generate(out: str | Path, seed: int = 0, train_ids: int = 800, val_ids: int = 50, test_ids: int = 100,
             images_per_id: int = 4, size: tuple[int, int] = (128, 64), hidden_size: int = 128,
             processes: int | None = None, train_images_per_id: int = 0) -> dict[str, dict[str, int]]:
    """Write the dataset under ``out`` (``size`` = (height, width)); returns per-split counts.
    ``train_images_per_id`` > 0 gives the training people that many images instead of
    ``images_per_id`` (more people at the same rendering cost)."""
    out = Path(out)
    (out / GENERATION_FILE).unlink(missing_ok=True)  # a folder being rewritten is not a complete generation
    counts = {"train": train_ids, "val": val_ids, "test": test_ids}
    per_id = images_per_split(images_per_id, train_images_per_id)
    people = sample_identities(seed, counts)
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
            pool.map(_render_one, jobs, chunksize=32)
    else:
        for job in jobs:
            _render_one(job)
    (out / "annos").mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        if not counts[split]:
            continue
        for lang in LANGS:
            (out / "annos" / f"{split}_reid_{lang}.json").write_text(
                json.dumps(annos[split][lang], ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    levels = {split: {"colours_only": colour_reader(seed, people[split], images_per_id),
                      "ceiling": attribute_ceiling(seed, people[split], images_per_id)}
              for split in ("val", "test") if counts[split]}
    (out / "annos" / REFERENCE_FILE).write_text(json.dumps(levels, indent=2) + "\n")
    corpus = [c for split in SPLITS for lang in LANGS for e in annos[split][lang] for c in e["captions"]]
    write_text_encoder(corpus, out / "text_encoder", hidden_size)
    (out / GENERATION_FILE).write_text(json.dumps(generation_args(seed, counts, per_id, size, hidden_size)) + "\n")
    return {s: {"ids": counts[s], "images": counts[s] * per_id[s],
                "captions": counts[s] * per_id[s] * CAPTIONS_PER_IMAGE} for s in SPLITS}


def images_per_split(images_per_id: int, train_images_per_id: int = 0) -> dict[str, int]:
    """Images per person of each split: ``train_images_per_id`` (when > 0) for train only."""
    return {"train": train_images_per_id or images_per_id, "val": images_per_id, "test": images_per_id}


def generation_args(seed: int, counts: dict[str, int], per_id: dict[str, int], size: tuple[int, int],
                    hidden_size: int) -> dict[str, object]:
    """What determines the files of a generation (``--reuse`` compares it with the folder's record)."""
    return {"generator": GENERATOR_VERSION, "seed": seed, "ids": counts, "images_per_id": per_id, "size": list(size),
            "hidden_size": hidden_size}


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
        prog="python -m data.synthetic", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
            args.seed, counts, per_id, args.size, args.hidden_size):
        print(f"kept {args.out}: generated with these arguments")
        return
    start = time.time()
    stats = generate(args.out, args.seed, args.train_ids, args.val_ids, args.test_ids, args.images_per_id,
                     args.size, args.hidden_size, args.processes, args.train_images_per_id)
    for split, s in stats.items():
        print(f"{split:5s}: {s['ids']} ids, {s['images']} images, {s['captions']} captions per language")
    print(f"wrote {args.out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
