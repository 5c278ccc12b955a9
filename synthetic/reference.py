"""Reference levels of a generated dataset: two rankers that know the generator's attributes.

``colour_reader`` reads only the colour words of a caption; ``attribute_ceiling`` reads
every stated attribute perfectly. Their metrics per evaluation split go to
``annos/reference_levels.json``, which the evaluation report shows beside the model's.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from synthetic.captions import Identity, image_plans, mentioned_facets


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


def write_reference_levels(annos: Path, seed: int, people: dict[str, list[tuple[int, Identity]]],
                           images_per_id: int) -> None:
    """Both rankers' metrics on each non-empty evaluation split (val, test), into the annotation folder ``annos``."""
    from data.annotations import REFERENCE_FILE

    levels = {split: {"colours_only": colour_reader(seed, people[split], images_per_id),
                      "ceiling": attribute_ceiling(seed, people[split], images_per_id)}
              for split in ("val", "test") if people[split]}
    (annos / REFERENCE_FILE).write_text(json.dumps(levels, indent=2) + "\n")
