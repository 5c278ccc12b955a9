"""Re-ranking time: the straightforward upstream-style re-ranker against ours, full-size model.

    python -m benchmarks.rerank [--queries 2] [--gallery 256] [--k 256] [--batch 256] [--ref-batch 256] [--threads 1]

Builds the published architecture from config/config.yaml (xlm-roberta-base-shaped
config.json and a tiny tokenizer in a temporary folder; random weights), encodes queries
whose captions have 20..60 tokens (evenly spread, CUHK-PEDES-like) padded to
``experiment.text_length``, and takes random gallery image embeddings (the fusion work
does not depend on their values) with random top-k candidates. Then, on the same inputs:

(a) :func:`engine.rerank.rerank_reference`, the upstream way: per query, its caption
    padded to text_length and repeated for the k candidates, every candidate image's
    cross-attention keys/values recomputed, ``--ref-batch`` pairs per forward (upstream
    runs all k at once);
(b) ours: the gallery's keys/values are cached once (timed separately: a one-off per
    gallery, like the image embeddings both methods start from), then
    :func:`engine.rerank.score_block`, the per-query work of ``rerank_fast``.

(a) and (b) alternate query by query so both see the same load on a shared machine.

With ``--memory`` (e.g. ``--memory --gallery 1000 --queries 4 --kv-budget-mib 1024``) it
instead runs ``rerank_fast`` alone under that k/v budget, compares the measured cache
blocks and peak resident memory with the formula of docs/benchmarks.md, and extrapolates
the formula to a 20,000 x 20,000 evaluation at full size.
The FLOP floor is (b)'s exact FLOP count divided by the best fp32 matmul rate measured in
this run. Last line: ``speedup <a/b> maxdiff <max |a-b|> floor_ratio <b / floor>``.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.model_size import rss_gib
from engine.rerank import cpu_max_tokens, kv_blocks, pair_batches, rerank_reference, score_block
from model import build_model
from tests.model_fixtures import write_text_config, write_tokenizer
from utils.config import load_config

CUHK_QUERIES, CUHK_IMAGES = 6156, 3074  # CUHK-PEDES test split, for the projection


def matmul_rate(rows: int = 2048, seconds: float = 1.5) -> float:
    """Best fp32 FLOP/s of a [rows, 768] x [768, 3072] matmul (the feed-forward shape of a
    batch), timed in this process's CPU time so that time slices lost to other jobs on a
    shared machine do not lower it."""
    a, b = torch.randn(rows, 768), torch.randn(768, 3072)
    a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.process_time()
        a @ b
        best = max(best, 2 * rows * 768 * 3072 / max(time.process_time() - t, 1e-9))  # per thread
    return best * torch.get_num_threads()


def attention_flops(lq: int, lk: int, d: int) -> int:
    """Scores and weighted sum of all heads: 2 * lq * lk * d each."""
    return 4 * lq * lk * d


def reference_pair_flops(length: int, tokens: int, d: int, ff: int, layers: int) -> int:
    """Matmul FLOPs of one (caption padded to ``length``, image) pair in the straightforward fusion pass."""
    per_layer = (8 * length * d * d + attention_flops(length, length, d)  # self-attention: q, k, v, out
                 + 4 * tokens * d * d  # image keys/values, recomputed
                 + 4 * length * d * d + attention_flops(length, tokens, d)  # cross q, out
                 + 4 * length * d * ff)  # feed-forward
    return layers * per_layer + 4 * d * d + 8 * d  # + ITM head d -> 2d -> 2


def fast_batch_flops(texts: int, pairs: int, length: int, tokens: int, d: int, ff: int, layers: int) -> int:
    """Matmul FLOPs of one ``BiIRRA.itm_logits_pairs`` call (``texts`` captions padded to
    ``length``, ``pairs`` pairs): layer 0's self-attention once per caption, the last layer
    for token 0 only, image keys/values cached."""
    total = 0
    for i in range(layers):
        lq = 1 if i == layers - 1 else length
        self_attn = 4 * length * d * d + 4 * lq * d * d + attention_flops(lq, length, d)  # k, v; q, out
        total += (texts if i == 0 else pairs) * self_attn
        total += pairs * (4 * lq * d * d + attention_flops(lq, tokens, d) + 4 * lq * d * ff)
    return total + pairs * (4 * d * d + 8 * d)


def fast_flops(lengths: list[int], k: int, tokens: int, d: int, ff: int, layers: int, batch: int,
               max_tokens: int | None) -> int:
    """FLOPs of ``score_pairs`` for queries of these caption lengths, k candidates each, one
    query at a time (as the benchmark runs it), with its batching."""
    total = 0
    for length in lengths:
        for s, e in pair_batches([length] * k, batch, max_tokens):
            total += fast_batch_flops(1, e - s, length, tokens, d, ff, layers)
    return total


def memory_formula(g: int, q: int, k: int, tokens: int, d: int, layers: int, b_embed: int, b_kv: int,
                   budget: int, batch: int, build_images: int, chunk: int = 256) -> dict[str, float]:
    """Bytes of the large buffers of ``evaluate`` on one process (see docs/benchmarks.md);
    ``build_images``: images per k/v-building batch."""
    per_image = layers * 2 * tokens * d * b_kv
    block = min(g, max(1, budget // per_image))
    return {"gallery embeddings G*(1+N)*D*b": g * tokens * d * b_embed,
            "k/v of all G images G*layers*2*(1+N)*D*b": g * per_image,
            "k/v block min(G, budget/per_image)*per_image": block * per_image,
            "blocks": -(-g // block),
            "k/v build batch images*per_image": build_images * per_image,
            "gathered pair k/v 2*batch*(1+N)*D*b": 2 * batch * tokens * d * b_kv,
            "similarity chunk chunk*G*(4+8+8+1)": chunk * g * 21,
            "top-k and scores Q*k*(8+4)": q * k * 12}


def measure_memory(model, embeds: torch.Tensor, mask: torch.Tensor, topk: torch.Tensor, gallery: torch.Tensor,
                   args: argparse.Namespace, dims: tuple[int, int, int]) -> None:
    """Run ``rerank_fast`` with a forced budget; compare the measured block bytes and peak memory
    with the formula, then extrapolate to 20,000 x 20,000 at full size."""
    import engine.rerank as rerank

    tokens, d, layers = dims
    budget = args.kv_budget_mib * 2**20
    blocks: list[int] = []
    build = rerank.image_kv_block

    def recording(*a, **kw):
        kv = build(*a, **kw)
        blocks.append(sum(k.nbytes + v.nbytes for k, v in kv))
        return kv

    rerank.image_kv_block = recording
    text = lambda s, e: (embeds[s:e], mask[s:e])  # noqa: E731
    before, _ = rss_gib()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak mark
    t = time.perf_counter()
    rerank.rerank_fast(model, text, topk, gallery, chunk=args.queries, batch_size=args.batch,
                       device=torch.device("cpu"), kv_budget=budget)
    _, peak = rss_gib()
    rerank.image_kv_block = build
    union = len(torch.unique(topk))
    cpu_build = min(args.batch, rerank.cpu_rows(d) // tokens)
    f = memory_formula(union, args.queries, args.k, tokens, d, layers, 4, 4, budget, args.batch, cpu_build)
    per_image = layers * 2 * tokens * d * 4
    print(f"{union} candidate images, budget {args.kv_budget_mib} MiB: {len(blocks)} blocks "
          f"(formula {f['blocks']}), {time.perf_counter() - t:.0f} s")
    print(f"per image: formula layers*2*(1+N)*D*4 = {per_image / 2**20:.2f} MiB, measured "
          f"{blocks[0] / (min(union, budget // per_image)) / 2**20:.2f} MiB")
    block = f["k/v block min(G, budget/per_image)*per_image"]
    print(f"largest block: measured {max(blocks) / 2**30:.3f} GiB, formula {block / 2**30:.3f} GiB")
    extra = sum(f[key] for key in ("k/v block min(G, budget/per_image)*per_image", "k/v build batch images*per_image",
                                   "gathered pair k/v 2*batch*(1+N)*D*b"))
    print(f"peak resident memory above the inputs: measured {peak - before:.3f} GiB; block + build batch + "
          f"gathered pair k/v {extra / 2**30:.3f} GiB, the rest is fusion activations")
    for device, b, build_images in (("CPU fp32", 4, cpu_build), ("CUDA bf16", 2, args.batch)):
        f = memory_formula(20000, 20000, 256, tokens, d, layers, b, b, 16 * 2**30, args.batch, build_images)
        print(f"20,000 x 20,000 at full size, {device}, budget 16 GiB: " + "; ".join(
            f"{name} {v:.0f}" if name == "blocks" else f"{name} {v / 2**30:.2f} GiB" for name, v in f.items()))


def parse_args() -> argparse.Namespace:
    """The command line; --k deeper than the gallery is refused, as no query has that many candidates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2)
    parser.add_argument("--gallery", type=int, default=256)
    parser.add_argument("--k", type=int, default=256)
    parser.add_argument("--batch", type=int, default=256, help="(b): pairs per fusion batch (CPU: token-capped)")
    parser.add_argument("--ref-batch", type=int, default=256, help="(a): pairs per forward")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads; 1 keeps the ratio stable when other jobs share the cores")
    parser.add_argument("--memory", action="store_true",
                        help="instead of timing: run ours alone under --kv-budget-mib and check the memory formula")
    parser.add_argument("--kv-budget-mib", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.k > args.gallery:
        parser.error("--k must not exceed --gallery")
    return args


@dataclass
class Inputs:
    """The full-size model, its sizes, and the queries and gallery both methods re-rank."""
    model: torch.nn.Module
    d: int  # width
    ff: int  # feed-forward width
    layers: int  # fusion layers
    tokens: int  # image tokens, 1 + patches
    pad_to: int  # experiment.text_length, the padded caption length of (a)
    lengths: torch.Tensor  # [Q] caption lengths
    mask: torch.Tensor  # [Q, pad_to]
    embeds: torch.Tensor  # [Q, pad_to, d] encoded captions
    gallery: torch.Tensor  # [G, tokens, d] random image embeddings
    topk: torch.Tensor  # [Q, k] random candidates


def build_inputs(args: argparse.Namespace) -> Inputs:
    """The published architecture with random weights (no download: a tiny tokenizer and an
    xlm-roberta-base-shaped config in a temporary folder) and random inputs of its sizes."""
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        write_text_config(Path(tmp))
        cfg = load_config("config/config.yaml", [f"text_encoder={tmp}", "model.resume=", "device=cpu"])
        model, _ = build_model(cfg)
    model.eval()
    text_cfg = model.text_encoder.config
    h, w = cfg.experiment.input_resolution
    tokens = (h // cfg.patch_size) * (w // cfg.patch_size) + 1
    pad_to = cfg.experiment.text_length
    q = args.queries
    lengths = torch.linspace(20, 60, q).round().long() if q > 1 else torch.tensor([40])
    mask = (torch.arange(pad_to)[None] < lengths[:, None]).long()
    ids = torch.randint(5, text_cfg.vocab_size, (q, pad_to))
    ids[:, 0], ids[mask == 0] = 0, text_cfg.pad_token_id
    with torch.no_grad():
        embeds = model.encode_text(ids, mask)
    gallery = torch.randn(args.gallery, tokens, text_cfg.hidden_size)
    topk = torch.rand(q, args.gallery).argsort(dim=1)[:, :args.k]
    return Inputs(model, text_cfg.hidden_size, text_cfg.intermediate_size, len(model.cross_encoder.layer), tokens,
                  pad_to, lengths, mask, embeds, gallery, topk)


@dataclass
class Timings:
    """What :func:`time_methods` measured: per query wall and CPU seconds of (a) and (b), their scores."""
    scores_a: torch.Tensor
    scores_b: torch.Tensor
    time_a: list[float]
    time_b: list[float]
    cpu_a: list[float]
    cpu_b: list[float]
    rates: list[float]  # matmul rates, before and after each query
    cache_s: float  # seconds to cache the gallery's keys/values
    cached: int  # images in the cache


def time_methods(inp: Inputs, args: argparse.Namespace) -> Timings:
    """(a) and (b) on each query, alternating which goes first so both see the same load."""
    cpu, q, model, embeds, mask, topk = torch.device("cpu"), args.queries, inp.model, inp.embeds, inp.mask, inp.topk
    rates = [matmul_rate()]
    t = time.perf_counter()
    block_ids, kv = next(kv_blocks(model, inp.gallery, topk, None, args.batch, cpu))
    if len(block_ids) != len(torch.unique(topk)):
        raise SystemExit("the gallery's keys/values do not fit the default budget: lower --gallery")
    cache_s = time.perf_counter() - t
    m = Timings(torch.empty(q, args.k), torch.empty(q, args.k), [0.0] * q, [0.0] * q, [0.0] * q, [0.0] * q,
                rates, cache_s, len(block_ids))
    for i in range(q):
        def run_a() -> None:
            m.scores_a[i] = rerank_reference(model, embeds[i:i + 1], mask[i:i + 1], topk[i:i + 1], inp.gallery,
                                             args.ref_batch, cpu)[0]

        def run_b() -> None:
            score_block(model, lambda s, e: (embeds[i:i + 1], mask[i:i + 1]), topk[i:i + 1], block_ids, kv,
                        m.scores_b[i:i + 1], chunk=1, batch_size=args.batch, device=cpu)

        for name, run in (("a", run_a), ("b", run_b)) if i % 2 == 0 else (("b", run_b), ("a", run_a)):
            t, c = time.perf_counter(), time.process_time()
            run()
            (m.time_a if name == "a" else m.time_b)[i] = time.perf_counter() - t
            (m.cpu_a if name == "a" else m.cpu_b)[i] = time.process_time() - c
        rates.append(matmul_rate())
        print(f"query {i} ({int(inp.lengths[i])} tokens): (a) {m.time_a[i]:.1f} s, (b) {m.time_b[i]:.1f} s "
              f"(CPU time {m.cpu_a[i]:.1f} s, {m.cpu_b[i]:.1f} s)", flush=True)
    return m


def print_results(inp: Inputs, m: Timings, args: argparse.Namespace) -> None:
    """Totals, FLOP rates against the measured floor, the CUHK-PEDES projection, and the last line."""
    q, k, (tokens, d, ff, layers) = args.queries, args.k, (inp.tokens, inp.d, inp.ff, inp.layers)
    ta, tb, cpu_a, cpu_b = sum(m.time_a), sum(m.time_b), sum(m.cpu_a), sum(m.cpu_b)
    maxdiff = float((m.scores_a - m.scores_b).abs().max())
    rate = max(m.rates)
    flops_a = q * k * reference_pair_flops(inp.pad_to, tokens, d, ff, layers)
    flops_b = fast_flops(inp.lengths.tolist(), k, tokens, d, ff, layers, args.batch, cpu_max_tokens(inp.model))
    floor = flops_b / rate
    flops_cache = m.cached * layers * 4 * tokens * d * d
    print(f"matmul rate (fp32, best of {len(m.rates)} measurements in CPU time): {rate / 1e9:.1f} GFLOP/s "
          f"(all: {', '.join(f'{r / 1e9:.1f}' for r in m.rates)})")
    print(f"(a) upstream-style: {ta:.1f} s (CPU time {cpu_a:.1f} s), {flops_a / 1e12:.2f} TFLOP "
          f"({flops_a / ta / 1e9:.1f} GFLOP/s)")
    print(f"(b) ours:           {tb:.1f} s (CPU time {cpu_b:.1f} s), {flops_b / 1e12:.2f} TFLOP "
          f"({flops_b / tb / 1e9:.1f} GFLOP/s), FLOP floor {floor:.1f} s")
    print(f"ratio of CPU times: {cpu_a / cpu_b:.2f}")
    print(f"k/v cache of {m.cached} images (once per gallery): {m.cache_s:.1f} s, {flops_cache / 1e12:.2f} TFLOP; "
          f"ratio with it charged to these {q} queries: {ta / (tb + m.cache_s):.2f}")
    pair_a, pair_b = ta / (q * k), tb / (q * k)
    proj_a = CUHK_QUERIES * k * pair_a
    proj_b = CUHK_QUERIES * k * pair_b + CUHK_IMAGES * m.cache_s / m.cached
    print(f"projected CUHK-PEDES test re-ranking ({CUHK_QUERIES} queries x {k}, {CUHK_IMAGES} images, "
          f"these caption lengths): (a) {proj_a / 3600:.1f} h, (b) {proj_b / 3600:.1f} h incl. cache, "
          f"ratio {proj_a / proj_b:.2f}")
    print(f"speedup {ta / tb:.2f} maxdiff {maxdiff:.2e} floor_ratio {tb / floor:.2f}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    inp = build_inputs(args)
    print(f"full-size model: {inp.layers} fusion layers, width {inp.d}, {inp.tokens} image tokens; {args.queries} "
          f"queries x k {args.k}, caption lengths {inp.lengths.tolist()} (padded to {inp.pad_to} for (a)), "
          f"gallery {args.gallery}; {torch.get_num_threads()} threads")
    if args.memory:
        measure_memory(inp.model, inp.embeds, inp.mask, inp.topk, inp.gallery, args, (inp.tokens, inp.d, inp.layers))
        return
    print_results(inp, time_methods(inp, args), args)


if __name__ == "__main__":
    main()
