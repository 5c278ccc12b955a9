"""data.datasets.open_image: a JPEG far larger than the input is decoded at reduced scale
(JPEG's 1/2, 1/4, 1/8 DCT scaling), never below twice the input size; other formats whole."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.annotations import DataError
from data.datasets import open_image


def halves(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue (so a reduced decode can be checked to keep the picture)."""
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2] = (200, 30, 30)
    arr[:, w // 2:] = (30, 30, 200)
    return Image.fromarray(arr)


@pytest.mark.parametrize("size, hint, decoded", [
    ((6000, 4000), (32, 16), (750, 500)),  # 1/8: the smallest scale still >= 2 x (16 wide, 32 high)
    ((1600, 3200), (384, 128), (400, 800)),  # 1/4 would give 400 x 800 >= 256 x 768
    ((1600, 3200), (800, 400), (800, 1600)),  # 1/2: 1/4 (400 x 800) would be below 800 x 1600
    ((300, 600), (384, 128), (300, 600)),  # not larger than needed: decoded whole
])
def test_jpeg_is_decoded_at_the_smallest_scale_that_keeps_twice_the_input(tmp_path, size, hint, decoded):
    path = tmp_path / "big.jpg"
    halves(size).save(path, quality=90)
    img = open_image(str(path), hint)
    assert img.size == decoded
    arr = np.asarray(img.convert("RGB")).astype(int)
    w = decoded[0]
    assert np.abs(arr[:, : w // 2 - 4] - (200, 30, 30)).max() <= 12  # JPEG keeps each colour to a few levels
    assert np.abs(arr[:, w // 2 + 4:] - (30, 30, 200)).max() <= 12


def test_png_is_decoded_whole(tmp_path):
    path = tmp_path / "big.png"
    halves((1200, 800)).save(path)
    img = open_image(str(path), (32, 16))
    assert img.size == (1200, 800)
    assert np.array_equal(np.asarray(img), np.asarray(halves((1200, 800))))


def test_unreadable_file_is_one_data_error(tmp_path):
    path = tmp_path / "cut.jpg"
    halves((400, 400)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=f"cannot read image {path}"):
        open_image(str(path), (32, 16))
