"""Image transforms as upstream builds them: resizes, two ops drawn with replacement, black erasing, any input mode."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from data.datasets import open_image
from data.transforms import MEAN, OP_NAMES, STD, TwoRandomOps, build_transforms, to_rgb
from tests.model_fixtures import tiny_config

FINISH = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


def _cfg(tmp_path, h=32, w=16):
    cfg = tiny_config(tmp_path, tmp_path)
    cfg.experiment.input_resolution = [h, w]
    return cfg


def _noise(h: int, w: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _random_ops(t: T.Compose) -> TwoRandomOps:
    return next(op for op in t.transforms if isinstance(op, TwoRandomOps))


def test_test_transform_shape_and_normalisation(tmp_path):
    t = build_transforms(_cfg(tmp_path, 48, 24), train=False)
    x = t(Image.new("RGB", (100, 37), (128, 64, 200)))
    assert x.shape == (3, 48, 24) and x.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((128, 64, 200), MEAN, STD)]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4)


def test_test_resize_is_bicubic_antialiased_train_resize_bilinear(tmp_path):
    img = _noise(90, 40)
    bicubic = FINISH(F.resize(img, [48, 24], InterpolationMode.BICUBIC, antialias=True))
    bilinear = FINISH(F.resize(img, [48, 24], InterpolationMode.BILINEAR, antialias=True))
    assert not torch.allclose(bicubic, bilinear, atol=1e-3)
    assert torch.equal(build_transforms(_cfg(tmp_path, 48, 24), train=False)(img), bicubic)
    train = build_transforms(_cfg(tmp_path, 48, 24), train=True)
    _random_ops(train).ops = [lambda x: x] * len(OP_NAMES)  # resize, tensor and normalise only
    assert torch.equal(train(img), bilinear)


def test_train_transform_shape_and_range(tmp_path):
    t = build_transforms(_cfg(tmp_path, 48, 24), train=True)
    img = _noise(90, 40)
    for _ in range(30):
        x = t(img)
        assert x.shape == (3, 48, 24)
        lo = min((0 - m) / s for m, s in zip(MEAN, STD))
        hi = max((1 - m) / s for m, s in zip(MEAN, STD))
        assert lo - 1e-4 <= x.min() and x.max() <= hi + 1e-4


def test_two_operations_are_drawn_with_replacement():
    ops = TwoRandomOps(32, 16)
    torch.manual_seed(0)
    pairs = [tuple(ops.choose()) for _ in range(1000)]
    assert set(pairs) == set(itertools.product(range(len(OP_NAMES)), repeat=2))  # (k, k) included
    assert 110 <= sum(a == b for a, b in pairs) <= 225  # 1/6 of the draws repeat an operation


def test_same_seed_same_output_other_seed_differs(tmp_path):
    t = build_transforms(_cfg(tmp_path, 48, 24), train=True)
    img = _noise(90, 40, seed=3)
    outs = []
    for seed in range(6):
        torch.manual_seed(seed)
        a = t(img)
        torch.manual_seed(seed)
        assert torch.equal(a, t(img))
        outs.append(a)
    assert sum(not torch.equal(outs[0], o) for o in outs[1:]) >= 4


def test_rotation_is_nearest_with_black_fill():
    rotate = TwoRandomOps(64, 32).ops[OP_NAMES.index("rotation")]
    x = torch.where(torch.rand(3, 64, 32, generator=torch.Generator().manual_seed(0)) < 0.5, 0.25, 0.75)
    changed = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out = rotate(x)
        changed += not torch.equal(out, x)
        assert set(out.unique().tolist()) <= {0.0, 0.25, 0.75}  # bilinear would blend neighbours
    assert changed >= 8


def test_erasing_box_is_black_after_normalisation(tmp_path):
    t = build_transforms(_cfg(tmp_path, 64, 32), train=True)
    ops = _random_ops(t)
    ops.choose = lambda: [OP_NAMES.index("erasing")] * 2
    black = T.Normalize(MEAN, STD)(torch.zeros(3, 1, 1))
    flat = Image.new("RGB", (32, 64), (200, 30, 30))
    plain = FINISH(flat)
    erased = 0
    for seed in range(40):
        torch.manual_seed(seed)
        x = t(flat)
        box = (x == black).all(dim=0)
        if box.any():
            erased += 1
            assert torch.equal(x[:, ~box], plain[:, ~box])  # the rest is untouched
            assert 0.08 * 64 * 32 <= int(box.sum()) <= 2 * 0.22 * 64 * 32  # one or two boxes of 10-20%
    assert 20 <= erased <= 38  # each of the two draws erases with p 0.5: 3/4 of the images


def test_flip_grayscale_erasing_keep_torchvision_probabilities():
    ops = TwoRandomOps(64, 32)
    x = T.ToTensor()(_noise(64, 32, seed=1))
    flip, gray, erase = (ops.ops[OP_NAMES.index(k)] for k in ("hflip", "grayscale", "erasing"))
    n_flip = n_gray = n_erase = 0
    for seed in range(400):
        torch.manual_seed(seed)
        out = flip(x)
        assert torch.equal(out, x.flip(-1)) or torch.equal(out, x)
        n_flip += torch.equal(out, x.flip(-1))
        out = gray(x)
        n_gray += not torch.equal(out, x)
        n_erase += not torch.equal(erase(x), x)
    assert 160 <= n_flip <= 240 and 20 <= n_gray <= 65 and 160 <= n_erase <= 240, (n_flip, n_gray, n_erase)


def test_jitter_and_crop_always_act_and_keep_the_size():
    ops = TwoRandomOps(64, 32)
    x = T.ToTensor()(_noise(64, 32, seed=2))
    for name in ("color_jitter", "resized_crop"):
        torch.manual_seed(0)
        out = ops.ops[OP_NAMES.index(name)](x)
        assert out.shape == x.shape and not torch.allclose(out, x), name


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


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    """A 16-bit PNG opens as ``I;16``; ``to_rgb`` divides by 257 where upstream's ``convert('RGB')`` clips to white."""
    levels = np.array([[0, 1000, 40000, 65535]], dtype=np.uint16).repeat(2, axis=0)
    path = tmp_path / "sixteen.png"
    Image.fromarray(levels).save(path)
    img = open_image(str(path), (32, 16))
    assert img.mode == "I;16"
    assert [to_rgb(img).getpixel((x, 0)) for x in range(4)] == [(0,) * 3, (3,) * 3, (155,) * 3, (255,) * 3]
    assert [img.convert("RGB").getpixel((x, 0)) for x in range(4)] == [(0,) * 3] + [(255,) * 3] * 3  # upstream
