"""Does re-ranking earn its place? ITC against the ITM head on the pairs re-ranking decides.

    python -m benchmarks.rerank_pairs --checkpoint runs/demo/best_en.pth --lang en
        [--split val] [--k 2 --k 4 ...] [key.sub=value ...]

Re-ranking the top 2 changes a query's R1 only when exactly one of its two most similar
gallery images shows the right person. On those queries ("split pairs") ITC is right
when that image is first; the ITM head is right when it scores it higher. Prints, per
language: R1 from ITC and after re-ranking the top k (``--k``, repeatable; default 2, 4,
8), the number of split pairs, ITC's and ITM's accuracy on them, and the spread (mean
per-query standard deviation over the top k) of the ITM scores and of similarity /
temperature, the scale of the logits ITC ranks by. An ITM head no more accurate than ITC
on split pairs cannot raise R1 at any depth; a flat score (small spread) has learnt
little beyond the easy negatives it was trained on.

The checkpoint is one written by training; its stored config, with the ``key=value``
overrides, names the data. Use each language's own ``best_<lang>.pth``.
"""
from __future__ import annotations

import argparse

import torch

from data.loader import build_eval_data
from engine.evaluate import encode_gallery, encode_queries, pad_batches, similarity_order
from engine.rerank import rerank_fast
from engine.retriever import Retriever
from utils.config import uses_tl_proj


def pair_table(correct: torch.Tensor, itm: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Figures of the module docstring from ``correct`` [Q, K] (candidate shows the query's person,
    candidates in ITC order) and the ITM scores ``itm`` [Q, K] of the same candidates.

    Ties in ITM keep ITC's order, as ``engine.evaluate.apply_rerank`` does. R1 counts every
    query, as the evaluation does when each query's person is in the gallery (true of the
    synthetic splits; the evaluation leaves out queries without one).
    """
    out = {"R1_itc": 100 * correct[:, 0].float().mean().item()}
    for k in ks:
        first = itm[:, :k].argmax(dim=1, keepdim=True)  # argmax returns the first of equal maxima
        out[f"R1_top{k}"] = 100 * correct[:, :k].gather(1, first).float().mean().item()
    split = correct[:, 0] ^ correct[:, 1]
    out["split_pairs"] = int(split.sum())
    if out["split_pairs"]:
        out["itc_acc"] = correct[split, 0].float().mean().item()
        itm_first = itm[split, 0] >= itm[split, 1]
        out["itm_acc"] = (itm_first == correct[split, 0]).float().mean().item()
    return out


def describe(t: dict[str, float], ks: list[int]) -> str:
    """One line of a ``pair_table``: R1 from ITC and re-ranked at each depth of ``ks``, split-pair accuracies."""
    depths = " ".join(f"top{k} {t[f'R1_top{k}']:.2f}" for k in ks)
    accs = f"ITC {t['itc_acc']:.3f}, ITM {t['itm_acc']:.3f}" if t["split_pairs"] else "-"
    return f"R1 ITC {t['R1_itc']:.2f}, re-ranked {depths}; split pairs {t['split_pairs']}: accuracy {accs}"


@torch.no_grad()
def candidates(r: Retriever, split: str, lang: str, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(correct [Q, k], ITM scores [Q, k], similarity [Q, k]) of each query's top k by ITC."""
    data = build_eval_data(r.cfg, split, lang, r.tokenizer)
    g_embeds, g_feats = encode_gallery(r.model, data, 64, 0, r.device)
    batches, q_feats = encode_queries(r.model, data.query_ids, data.query_mask, uses_tl_proj(r.cfg, lang), 64, r.device)
    sim = q_feats @ g_feats.t()
    topk = similarity_order(sim)[:, :min(k, sim.shape[1])]
    embeds, mask = pad_batches(batches)
    itm = rerank_fast(r.model, lambda s, e: (embeds[s:e], mask[s:e]), topk, g_embeds, chunk=256, batch_size=64,
                      device=r.device)
    correct = data.gallery_pids.to(r.device)[topk] == data.query_pids.to(r.device)[:, None]
    return correct.cpu(), itm.cpu(), sim.gather(1, topk).cpu()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rerank_pairs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--split", default="val", choices=("val", "test"))
    ap.add_argument("--lang", action="append", help="query language, repeatable (default: en and ch)")
    ap.add_argument("--k", type=int, action="append", help="re-ranking depth, repeatable (default: 2, 4, 8)")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = ap.parse_args(argv)
    ks = sorted(args.k or [2, 4, 8])
    if ks[0] < 2:
        raise SystemExit("error: --k must be at least 2")
    r = Retriever.from_checkpoint(args.checkpoint, overrides=args.overrides)
    temp = float(r.model.temperature().detach())
    for lang in args.lang or ["en", "ch"]:
        correct, itm, sim = candidates(r, args.split, lang, ks[-1])
        t = pair_table(correct, itm, ks)
        print(f"{lang} ({args.split}, {correct.shape[0]} queries): {describe(t, ks)}; spread over the top {ks[-1]}: "
              f"ITM {itm.std(dim=1).mean():.3f}, similarity/temperature {(sim / temp).std(dim=1).mean():.3f}")


if __name__ == "__main__":
    main()
