"""Search latency on a saved gallery index of a million images, and the index's size on disk.

    python -m benchmarks.search_index --checkpoint runs/demo/best_en.pth --images runs/synthetic/imgs/test \\
        [--rows 1000000] [--dims 256] [--k 2,16,256] [--queries 10] [--out /tmp/index-bench]

Writes an index in the real layout (engine/gallery_index.py) whose rows are random unit
vectors; each row names one of the real images under ``--images`` (cycled), so that
re-ranking has images to encode. Then, with the checkpoint's model (its own feature size,
e.g. 128 for the demo):

* first stage: ``Retriever.search(rerank=False)``: caption encoding, the scan of every row
  of the memory-mapped features (in blocks of ``SCAN_ROWS``) and the hits' paths;
* with re-ranking of the top k for each ``--k`` (``model.k_test`` overridden): the first
  stage plus encoding those k images and the ITM pass;

and for every ``--dims`` the scan alone (``SavedIndex.top``, model-independent), e.g. 256,
the published feature size. Times are medians over ``--queries`` queries after one
warm-up query (features in the page cache, as for a search service). Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from engine.gallery_index import SCAN_ROWS, SavedIndex, append_rows, new_index
from engine.retriever import Retriever, list_images

QUERIES = ("a woman in a red coat with a black backpack", "a man wearing a blue shirt and gray trousers",
           "a slim woman with long blonde hair carries a handbag", "a man in a green jacket holding an umbrella")


def write_index(folder: Path, root: str, rows: int, dim: int, encoder: str, seed: int = 0) -> float:
    """An index of ``rows`` random unit vectors naming the images of ``root`` in turn; returns seconds taken."""
    start = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rels = [os.path.relpath(p, root) for p in list_images(root)]
    meta = new_index(folder, encoder, dim, os.path.realpath(root))
    g = torch.Generator().manual_seed(seed)
    for s in range(0, rows, SCAN_ROWS):
        n = min(SCAN_ROWS, rows - s)
        feats = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1).numpy()
        append_rows(folder, meta, feats, [(rels[(s + i) % len(rels)], 0, 0) for i in range(n)])
    return time.perf_counter() - start


def size_on_disk(folder: Path) -> dict[str, int]:
    return {p.name.split("-")[0].split(".")[0]: p.stat().st_size for p in folder.iterdir() if p.is_file()}


def median_time(fn, queries: int) -> float:
    fn(0)  # warm-up: page cache, allocator, lazy imports
    times = []
    for q in range(queries):
        start = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.search_index", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of real images the rows name (for re-ranking)")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--dims", default="256", help="feature sizes of the scan-only rows (comma-separated)")
    p.add_argument("--k", default="2,16,256", help="re-ranking depths (comma-separated)")
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--out", default="/tmp/index-bench", help="index folder (rewritten, removed at the end)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    out = Path(args.out)
    model = Retriever.from_checkpoint(args.checkpoint)
    dim = model.model.vision_proj.out_features
    rows = []
    built = write_index(out, args.images, args.rows, dim, model.fingerprint(images_only=True))
    sizes = size_on_disk(out)
    print(f"index of {args.rows:,} rows x {dim}: written in {built:.1f} s; files: "
          + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(sizes.items())))
    model.open_index(out)
    query = lambda q: QUERIES[q % len(QUERIES)]  # noqa: E731
    rows.append(("first stage (encode the caption, scan, read the paths)", dim, "-",
                 median_time(lambda q: model.search(query(q), top_k=10, rerank=False), args.queries)))
    for k in (int(v) for v in args.k.split(",")):
        cfg = copy.deepcopy(model.cfg)
        cfg.model.k_test = k
        r = Retriever(model.model, model.tokenizer, cfg, model.device, model.checkpoint)
        r.open_index(out)
        rows.append((f"with re-ranking of the top {k}", dim, k,
                     median_time(lambda q: r.search(query(q), top_k=10), args.queries)))
    for d in (int(v) for v in args.dims.split(",")):
        write_index(out, args.images, args.rows, d, "scan-only", seed=d)
        index = SavedIndex.open(out)
        feats = torch.nn.functional.normalize(torch.randn(len(QUERIES), d), dim=1)
        rows.append(("scan alone (SavedIndex.top, 10 best)", d, "-",
                     median_time(lambda q: index.top(feats[q % len(QUERIES)], 10), args.queries)))
        sizes = size_on_disk(out)
        print(f"index of {args.rows:,} rows x {d}: "
              + ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sorted(sizes.items()))
              + f"; total {sum(sizes.values()) / 2**30:.2f} GiB")
    shutil.rmtree(out)
    print(f"\n{args.rows:,} rows, {torch.get_num_threads()} threads, median of {args.queries} queries\n")
    print("| what | feature size | top k re-ranked | ms per query |\n|---|---|---|---|")
    for what, d, k, seconds in rows:
        print(f"| {what} | {d} | {k} | {1000 * seconds:.0f} |")


if __name__ == "__main__":
    main()
