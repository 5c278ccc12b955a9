"""Image transforms as upstream ``misc/data.py`` builds them.

Train: bilinear resize -> tensor -> two random operations drawn with replacement -> ImageNet
normalisation; test: bicubic antialiased resize -> tensor -> normalisation.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from utils.config import Config

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
OP_NAMES = ("color_jitter", "rotation", "resized_crop", "grayscale", "hflip", "erasing")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode; 16/32-bit integer and float images are rescaled, not clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


class TwoRandomOps:
    """Two of the six operations (the order of ``OP_NAMES``), drawn with replacement, applied to a [0, 1] tensor.

    Upstream draws with ``np.random.choice(ops, 2)``, so the same operation can come twice;
    each keeps its own torchvision probability (flip 0.5, grayscale 0.1, erasing 0.5).
    Erasing acts before normalisation, so its box is black. The draw uses torch's RNG so
    the dataset's per-sample seed makes the whole transform reproducible.
    """

    def __init__(self, height: int, width: int) -> None:
        self.ops: list[Callable[[torch.Tensor], torch.Tensor]] = [
            T.ColorJitter(0.1, 0.1, 0.1, 0),
            T.RandomRotation(15),
            T.RandomResizedCrop((height, width), scale=(0.9, 1.0), antialias=True),
            T.RandomGrayscale(),
            T.RandomHorizontalFlip(),
            T.RandomErasing(scale=(0.10, 0.20)),
        ]

    def choose(self) -> list[int]:
        """Indices of the two operations to apply, in order."""
        return torch.randint(len(self.ops), (2,)).tolist()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for k in self.choose():
            x = self.ops[k](x)
        return x


def build_transforms(cfg: Config, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """Train: bilinear resize, tensor, two random ops, normalise; test: bicubic antialiased resize, tensor, normalise."""
    h, w = cfg.experiment.input_resolution
    normalise = T.Normalize(MEAN, STD)
    if train:
        return T.Compose([to_rgb, T.Resize((h, w)), T.ToTensor(), TwoRandomOps(h, w), normalise])
    return T.Compose([to_rgb, T.Resize((h, w), interpolation=InterpolationMode.BICUBIC, antialias=True),
                      T.ToTensor(), normalise])
