"""Image transforms: shape, normalisation, two distinct random operations, any input mode."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from data.datasets import open_image
from data.transforms import MEAN, OP_NAMES, STD, TwoDistinctOps, build_transforms, to_rgb
from tests.data_fixtures import make_config


def _cfg(tmp_path, h=32, w=16):
    cfg = make_config(tmp_path)
    cfg.experiment.input_resolution = [h, w]
    return cfg


def test_test_transform_shape_and_normalisation(tmp_path):
    t = build_transforms(_cfg(tmp_path, 48, 24), train=False)
    x = t(Image.new("RGB", (100, 37), (128, 64, 200)))
    assert x.shape == (3, 48, 24) and x.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((128, 64, 200), MEAN, STD)]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)


def test_train_transform_shape_and_range(tmp_path):
    t = build_transforms(_cfg(tmp_path, 48, 24), train=True)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 40, 3), dtype=np.uint8))
    for _ in range(30):
        x = t(img)
        assert x.shape == (3, 48, 24)
        lo = min((0 - m) / s for m, s in zip(MEAN, STD))
        hi = max((1 - m) / s for m, s in zip(MEAN, STD))
        assert lo - 1e-4 <= x.min() and x.max() <= hi + 1e-4


def test_two_distinct_operations_cover_all_pairs():
    ops = TwoDistinctOps(32, 16)
    torch.manual_seed(0)
    pairs = set()
    for _ in range(600):
        a, b = ops.choose()
        assert a != b
        pairs.add(frozenset((a, b)))
    assert pairs == {frozenset(p) for p in itertools.combinations(range(len(OP_NAMES)), 2)}


def _apply(ops: TwoDistinctOps, chosen: list[int], img: Image.Image) -> torch.Tensor:
    ops.choose = lambda: chosen
    return ops(img)


def test_each_drawn_operation_acts():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    ops = TwoDistinctOps(64, 32)
    plain = ops.finish(img)
    for k in (0, 1, 2, 5):  # always act
        torch.manual_seed(k)
        assert not torch.allclose(_apply(ops, [k], img), plain), OP_NAMES[k]
    flipped = ops.finish(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    gray = ops.finish(img.convert("L").convert("RGB"))
    n_flip = n_gray = 0
    for seed in range(400):  # flip and grayscale act with torchvision's default probabilities
        torch.manual_seed(seed)
        out = _apply(ops, [4], img)
        assert torch.allclose(out, flipped) or torch.allclose(out, plain)
        n_flip += torch.allclose(out, flipped)
        out = _apply(ops, [3], img)
        assert torch.allclose(out, gray) or torch.allclose(out, plain)
        n_gray += torch.allclose(out, gray)
    assert 160 <= n_flip <= 240 and 20 <= n_gray <= 65, (n_flip, n_gray)
    flat = Image.new("RGB", (32, 64), (200, 30, 30))
    for seed in range(20):
        torch.manual_seed(seed)
        erased = _apply(ops, [5, 4], flat)
        frac = float((erased == 0).all(dim=0).float().mean())
        assert 0.08 <= frac <= 0.22


MODES = {
    "L": lambda: Image.new("L", (40, 80), 120),
    "1": lambda: Image.new("1", (40, 80), 1),
    "P": lambda: Image.new("RGB", (40, 80), (10, 200, 30)).convert("P"),
    "RGBA": lambda: Image.new("RGBA", (40, 80), (10, 200, 30, 100)),
    "LA": lambda: Image.new("LA", (40, 80), (100, 50)),
    "CMYK": lambda: Image.new("CMYK", (40, 80), (0, 255, 0, 0)),
    "I;16": lambda: Image.fromarray(np.full((80, 40), 40000, dtype=np.uint16)),
    "I": lambda: Image.new("I", (40, 80), 30000),
    "F": lambda: Image.new("F", (40, 80), 90.5),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_any_image_mode_works(tmp_path, mode):
    img = MODES[mode]()
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == (40, 80)
    if mode == "I;16":
        assert rgb.getpixel((0, 0)) == (155, 155, 155)  # 40000 / 257, not clipped to 255
    for train in (True, False):
        assert build_transforms(_cfg(tmp_path), train)(img).shape == (3, 32, 16)


@pytest.mark.parametrize("mode, ext", [("CMYK", "jpg"), ("I;16", "png"), ("RGBA", "png"), ("L", "jpg")])
def test_image_files_in_odd_modes_load(tmp_path, mode, ext):
    path = tmp_path / f"img.{ext}"
    MODES[mode]().save(path)
    img = open_image(str(path), (32, 16))
    assert build_transforms(_cfg(tmp_path), False)(img).shape == (3, 32, 16)


def test_very_large_jpeg_loads(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (6000, 4000), (90, 120, 30)).save(path, quality=50)
    img = open_image(str(path), (32, 16))
    assert max(img.size) <= 6000 and build_transforms(_cfg(tmp_path), True)(img).shape == (3, 32, 16)
