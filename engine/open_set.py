"""Open-set retrieval: when is the best hit good enough to say "this is the person"?

A closed-set benchmark always has the query's person in the gallery; a user's gallery may
not. For each labelled query we record, per score (``cosine``: the similarity ranking;
``itm``: the re-ranked top k), three things:

* ``<score>_best``: the score of the first hit in the full gallery, and ``<score>_right``
  whether that hit shows the query's person (a *genuine* trial when it does);
* ``<score>_absent``: the score of the first hit in the gallery without the query's person
  (an *impostor* trial: any answer would be a false match).

A threshold T turns search into detection: answer only when the first hit scores above T.
The false-match rate FMR(T) is the share of impostor trials above T; the true-match rate
TMR(T) the share of queries whose first hit is right *and* above T. :func:`threshold_at`
picks the T of a target FMR; :func:`open_set_summary` gives TMR at 1 / 5 / 10% FMR.

Under re-ranking, the impostor trial re-ranks the top k of the gallery without the person:
the images of the full top k that are not the person plus the next ones, which
:func:`extra_candidates` finds so that only those pairs are scored again (per query at most
as many as the images of its person in its top k).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

FMRS = (0.01, 0.05, 0.10)  # false-match rates of the report's open-set table
SCORES = ("cosine", "itm")


class Reranked(NamedTuple):
    """The re-ranking of one chunk of queries: the full top k and its ITM scores, and the
    :func:`impostor_candidates` of the impostor trials with their scores and validity."""
    topk: torch.Tensor  # [Q, k] gallery indices
    scores: torch.Tensor  # [Q, k]
    extra: torch.Tensor  # [Q, m] gallery indices
    extra_scores: torch.Tensor  # [Q, m]
    extra_valid: torch.Tensor  # [Q, m] bool


def extra_candidates(sim: torch.Tensor, same: torch.Tensor, topk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [Q, m], valid [Q, m]) of the images of each query's impostor top k (the top k by
    ``sim`` once its own person, ``same``, is removed) that are not in its full top k ``topk``:
    the only pairs re-ranking has not scored yet. Rows with fewer than m are padded with other
    images (``valid`` False: scored, not used); so is a gallery left with fewer than k images."""
    k = topk.shape[1]
    masked = sim.masked_fill(same, float("-inf"))
    absent = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
    new = ~(absent[:, :, None] == topk[:, None, :]).any(-1) & masked.gather(1, absent).isfinite()
    count = new.sum(1)
    m = int(count.max()) if len(count) else 0
    first = torch.argsort((~new).int(), dim=1, stable=True)[:, :m]  # the new images first, in rank order
    return absent.gather(1, first), torch.arange(m, device=topk.device)[None, :] < count[:, None]


def impostor_candidates(q_feats: torch.Tensor, g_feats: torch.Tensor, g_pids: torch.Tensor, q_pids: torch.Tensor,
                        topk: torch.Tensor, starts: range, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`extra_candidates` of all queries, computed ``chunk`` queries at a time (the membership
    test takes chunk x k x k) and padded to one width, for one re-ranking pass."""
    parts = [extra_candidates(q_feats[s:s + chunk] @ g_feats.t(), g_pids[None, :] == q_pids[s:s + chunk, None],
                              topk[s:s + chunk]) for s in starts]
    m = max((idx.shape[1] for idx, _ in parts), default=0)
    pad = [(torch.cat([idx, topk[s:s + chunk, :1].expand(-1, m - idx.shape[1])], 1),
            torch.nn.functional.pad(valid, (0, m - valid.shape[1]), value=False)) for s, (idx, valid) in zip(starts, parts)]
    if not pad:
        return topk[:, :0], torch.zeros(topk[:, :0].shape, dtype=torch.bool, device=topk.device)
    return torch.cat([idx for idx, _ in pad]), torch.cat([valid for _, valid in pad])


def open_set_chunk(sim: torch.Tensor, g_pids: torch.Tensor, q_pids: torch.Tensor,
                   reranked: Reranked | None) -> dict[str, torch.Tensor]:
    """Per-query open-set trials of one chunk of queries that have their person in the gallery.

    ``sim`` [Q, G] similarities; ``reranked`` when the top k was re-ranked. A query whose
    person fills the gallery has an impostor score of -inf (nothing to match falsely).
    """
    same = g_pids[None, :] == q_pids[:, None]
    valid = same.any(1)
    first = sim.argmax(1, keepdim=True)  # the first of equal maxima, as the stable similarity order
    out = {"cosine_best": sim.gather(1, first)[:, 0], "cosine_right": same.gather(1, first)[:, 0],
           "cosine_absent": sim.masked_fill(same, float("-inf")).amax(1)}
    if reranked is not None:
        topk, scores, _, extra_scores, extra_valid = reranked
        best = scores.argmax(1, keepdim=True)  # the first of equal maxima: re-ranking's stable order
        top_same = same.gather(1, topk)
        out["itm_best"] = scores.gather(1, best)[:, 0]
        out["itm_right"] = top_same.gather(1, best)[:, 0]
        impostors = torch.cat([scores.masked_fill(top_same, float("-inf")),
                               extra_scores.masked_fill(~extra_valid, float("-inf"))], 1)
        out["itm_absent"] = impostors.amax(1)
    return {key: v[valid].cpu() for key, v in out.items()}


def threshold_at(impostor: torch.Tensor, fmr: float) -> float:
    """The threshold whose false-match rate on these impostor scores is at most ``fmr``, as close as the
    sample allows: floor(fmr * n) of the n scores lie strictly above it (the next highest is T itself)."""
    ranked = torch.sort(impostor.double(), descending=True).values
    m = math.floor(fmr * len(ranked) + 1e-9)
    return float(ranked[m]) if m < len(ranked) else float("-inf")


def rates(stats: dict[str, torch.Tensor], score: str, threshold: float) -> tuple[float, float]:
    """(TMR, FMR) in percent at ``threshold``: first hit right and above it; impostor above it."""
    above = stats[f"{score}_best"].double() > threshold
    tmr = (stats[f"{score}_right"] & above).double().mean()
    fmr = (stats[f"{score}_absent"].double() > threshold).double().mean()
    return float(tmr * 100), float(fmr * 100)


def open_set_summary(stats: dict[str, torch.Tensor], fmrs: tuple[float, ...] = FMRS) -> dict[str, list[dict]]:
    """Per score present: for each target FMR, the threshold, TMR and the FMR reached (percent)."""
    out = {}
    for score in SCORES:
        if f"{score}_best" not in stats:
            continue
        rows = []
        for f in fmrs:
            t = threshold_at(stats[f"{score}_absent"], f)
            tmr, fmr = rates(stats, score, t)
            rows.append({"target_fmr": 100 * f, "threshold": t, "tmr": tmr, "fmr": fmr})
        out[score] = rows
    return out


def open_set_table(summaries: dict[str, dict[str, list[dict]]]) -> list[str]:
    """Markdown lines of report.md's open-set table (one row per language and score), or nothing."""
    summaries = {lang: s for lang, s in summaries.items() if s}
    if not summaries:
        return []
    fmrs = [row["target_fmr"] for s in summaries.values() for rows in s.values() for row in rows]
    fmrs = list(dict.fromkeys(fmrs))
    head = " | ".join(f"TMR @ {f:g}% FMR (T)" for f in fmrs)
    lines = ["Open set: true-match rate (first hit right and above the threshold T) at a false-match rate "
             "(first hit above T when the query's person is removed from the gallery), thresholds set on this "
             "split's own impostor trials. `itm`: the re-ranked first hit's score; `cosine`: similarity only.", "",
             f"| language | score | {head} |", "|---|---|" + "---|" * len(fmrs)]
    for lang, s in summaries.items():
        for score, rows in s.items():
            cells = " | ".join(f"{r['tmr']:.2f} ({r['threshold']:.3f})" for r in rows)
            lines.append(f"| {lang} | {score} | {cells} |")
    return lines + [""]


__all__ = ["FMRS", "Reranked", "SCORES", "extra_candidates", "impostor_candidates", "open_set_chunk",
           "open_set_summary", "open_set_table", "rates", "threshold_at"]
