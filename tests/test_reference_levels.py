"""Reference levels beside the model's figures: chance, the synthetic colour-only and attribute-perfect rankers, ITC-only vs re-ranked."""
from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
import torch

from engine.evaluate import EvalResult
from engine.reference_levels import chance_levels, read_levels
from engine.report import markdown
from synthetic.captions import Identity, Plan, image_plans, mentioned_facets
from synthetic.generate import sample_identities
from synthetic.reference import attribute_ceiling, colour_reader, visible_colours
from utils.metrics import per_query_stats, summarize

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_chance(gallery_pids: torch.Tensor, query_pids: torch.Tensor) -> dict[str, float]:
    """Metrics averaged over every ordering of the gallery."""
    runs = [summarize(per_query_stats(gallery_pids[list(p)][None, :] == query_pids[:, None]), ranks=(1, 5, 10))
            for p in itertools.permutations(range(len(gallery_pids)))]
    return {k: sum(r[k] for r in runs) / len(runs) for k in ("R1", "R5", "R10", "mAP", "mINP")}


def test_chance_levels_equal_the_average_over_all_orderings():
    gallery = torch.tensor([1, 1, 2, 2, 2, 3, 4])
    queries = torch.tensor([1, 2, 3, 9, 2])  # 9: no relevant image, left out like the metrics do
    got = chance_levels(gallery, queries)
    want = brute_force_chance(gallery, queries)
    assert got == pytest.approx(want, abs=1e-5)  # brute force sums float32 APs


def test_chance_levels_of_the_demo_test_split_shape():
    gallery = torch.arange(100).repeat_interleave(4)  # 100 people x 4 images
    got = chance_levels(gallery, torch.arange(100).repeat_interleave(8))
    assert got["R1"] == pytest.approx(1.0)
    # no hit in the top 10 = all 10 drawn from the 396 others: C(396, 10) / C(400, 10)
    assert got["R10"] == pytest.approx(100 * (1 - (390 * 389 * 388 * 387) / (400 * 399 * 398 * 397)), rel=1e-9)
    assert 2.0 < got["mAP"] < 3.0


def _person(**changes) -> Identity:
    base = Identity(gender="man", build="slim", skin=0, hair_style="short", hair_colour="black", upper="shirt",
                    upper_colour="red", pattern="striped", lower="trousers", lower_colour="blue", shoes_colour="black",
                    bag="backpack", bag_colour="green", hat="none", hat_colour="red", obj="none")
    return dataclasses.replace(base, **changes)


def test_mentioned_facets_follow_the_plan():
    p = _person()
    assert mentioned_facets(p, Plan(("bag", "upper"), 0, True)) == {
        "gender": "man", "bag": "backpack", "bag_colour": "green", "upper": "shirt", "upper_colour": "red",
        "pattern": "striped"}
    assert "pattern" not in mentioned_facets(p, Plan(("upper",), 0, False))
    assert "pattern" not in mentioned_facets(_person(pattern="plain"), Plan(("upper",), 0, True))


def test_ceiling_ties_people_the_captions_cannot_tell_apart():
    # skin is never put into words: every caption of either person fits both -> R1 = 1/2
    same = [(1, _person(skin=0)), (2, _person(skin=3))]
    assert attribute_ceiling(0, same, images_per_id=1)["R1"] == pytest.approx(50.0)
    # the gender is always stated: always told apart
    apart = [(1, _person()), (2, _person(gender="woman", lower="skirt"))]
    got = attribute_ceiling(0, apart, images_per_id=2)
    assert got == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0, "mINP": 100.0}


def test_ceiling_scores_only_stated_attributes():
    # person 2 differs from person 1 only in the shoes: captions of person 1 that do not
    # mention the shoes tie the two, those that do rank person 1 first
    people = [(1, _person()), (2, _person(shoes_colour="white"))]
    plans = [p for k in range(3) for p in image_plans(0, 1, people[0][1], k)]
    plans += [p for k in range(3) for p in image_plans(0, 2, people[1][1], k)]
    want = 100 * sum(1.0 if "shoes" in p.keys else 0.5 for p in plans) / len(plans)
    assert attribute_ceiling(0, people, images_per_id=3)["R1"] == pytest.approx(want)
    assert 50.0 < want < 100.0  # the plans do both


def test_visible_colours_count_bag_and_hat_only_when_worn():
    assert visible_colours(_person()) == {"black": 2, "red": 1, "blue": 1, "green": 1}  # hair + shoes black
    assert visible_colours(_person(bag="none", hat="cap")) == {"black": 2, "red": 2, "blue": 1}


def test_colour_reader_ignores_what_wears_each_colour():
    # the same colours on swapped garments: every caption ties the two people for the colour
    # reader (R1 1/2), also when their genders differ, which the ceiling reads (always stated)
    swapped = [(1, _person()), (2, _person(upper_colour="blue", lower_colour="red"))]
    assert colour_reader(0, swapped, images_per_id=2)["R1"] == pytest.approx(50.0)
    people = [(1, _person()), (2, _person(upper_colour="blue", lower_colour="red", gender="woman"))]
    assert attribute_ceiling(0, people, images_per_id=2)["R1"] == pytest.approx(100.0)
    assert colour_reader(0, people, images_per_id=2)["R1"] == pytest.approx(50.0)


def test_colour_reader_counts_repeated_colours():
    # person 1's bag is blue like its trousers, person 2's is yellow (a colour no one else shows).
    # Person 1's captions rank it first only when they state both blue items (blue twice: a set
    # would tie them); person 2's whenever they state the bag.
    people = [(1, _person(bag_colour="blue")), (2, _person(bag_colour="yellow"))]
    hits = [1.0 if {"bag", "lower"} <= set(p.keys) else 0.5 for k in range(3) for p in image_plans(0, 1, people[0][1], k)]
    hits += [1.0 if "bag" in p.keys else 0.5 for k in range(3) for p in image_plans(0, 2, people[1][1], k)]
    want = 100 * sum(hits) / len(hits)
    assert colour_reader(0, people, images_per_id=3)["R1"] == pytest.approx(want)
    assert 50.0 < want < 100.0 and 0.5 in hits[:6] and 1.0 in hits[:6]  # both cases occur for person 1


def test_generated_dataset_has_the_reference_file(synthetic_root):
    levels = read_levels(synthetic_root / "annos", "test")
    assert set(levels) == {"colours_only", "ceiling"}
    assert set(levels["ceiling"]) == {"R1", "R5", "R10", "mAP", "mINP"}
    people = sample_identities(0, {"train": 4, "val": 1, "test": 3})
    assert levels["ceiling"] == pytest.approx(attribute_ceiling(0, people["test"], 2))
    assert levels["colours_only"] == pytest.approx(colour_reader(0, people["test"], 2))
    assert read_levels(synthetic_root / "annos", "val")["ceiling"] == pytest.approx(attribute_ceiling(0, people["val"], 2))
    assert read_levels(synthetic_root / "annos", "train") == {}  # evaluation splits only
    assert read_levels(None, "test") == {} and read_levels(synthetic_root, "test") == {}


def test_report_shows_chance_references_itc_only_and_reranked():
    gallery_pids = torch.tensor([1, 1, 2, 2])
    data = SimpleNamespace(gallery_pids=gallery_pids, query_pids=torch.tensor([1, 2]), captions=["a", "b"],
                           gallery_paths=["g/1.png", "g/2.png", "g/3.png", "g/4.png"])
    stats = {"first": torch.tensor([1, 2]), "ap": torch.tensor([1.0, 0.5]), "inp": torch.tensor([1.0, 0.5]),
             "valid": torch.tensor([True, True]), "top": torch.tensor([[0, 2, 1, 3], [0, 2, 3, 1]])}
    reranked = {"R1": 50.0, "R5": 100.0, "R10": 100.0, "mAP": 75.0, "mINP": 75.0}
    itc = {"R1": 0.0, "R5": 100.0, "R10": 100.0, "mAP": 41.0, "mINP": 41.0}
    ceiling = {"R1": 97.5, "R5": 99.0, "R10": 99.5, "mAP": 96.0, "mINP": 90.0}
    colours = {"R1": 60.0, "R5": 80.0, "R10": 90.0, "mAP": 55.0, "mINP": 40.0}
    text = markdown({"en": EvalResult(reranked, stats, itc)}, {"en": data}, "test",
                    levels={"ceiling": ceiling, "colours_only": colours, "unknown": colours})
    rows = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| en |")}
    chance = chance_levels(gallery_pids, data.query_pids)
    assert chance["R1"] == pytest.approx(50.0)
    assert rows["chance (random order)"].endswith(" | ".join(f"{chance[k]:.2f}" for k in reranked) + " |")
    assert "| 97.50 | 99.00 | 99.50 | 96.00 | 90.00 |" in rows["ceiling (attribute-perfect ranker)"]
    assert "| 60.00 | 80.00 | 90.00 | 55.00 | 40.00 |" in rows["colours only (ranker reading the stated colours, not what wears them)"]
    names = ["chance (random order)", "colours only (ranker reading the stated colours, not what wears them)",
             "ceiling (attribute-perfect ranker)", "model, ITC similarity only", "model, re-ranked (ITM)"]
    assert [n for n in rows if not n[0].isdigit()] == names  # in this order; the unknown key is not shown
    assert "| 0.00 | 100.00 | 100.00 | 41.00 | 41.00 |" in rows["model, ITC similarity only"]
    assert "| 50.00 | 100.00 | 100.00 | 75.00 | 75.00 |" in rows["model, re-ranked (ITM)"]


def test_evaluate_returns_the_itc_only_metrics_of_the_same_run(tiny_text_dir, tmp_path):
    from engine.evaluate import evaluate
    from tests.test_rerank import fake_data, tiny_model

    model = tiny_model(tiny_text_dir, tmp_path)
    data = fake_data(model, n_gallery=12, lengths=[2, 9, 4, 11, 6, 3, 8, 5, 10], padded=14)
    plain = evaluate(model, data, target=False, k_test=6, batch_size=4, chunk=4, rerank=False)
    both = evaluate(model, data, target=False, k_test=6, batch_size=4, chunk=4)
    assert plain.itc_metrics is None
    assert both.itc_metrics == plain.metrics and both.metrics != plain.metrics
