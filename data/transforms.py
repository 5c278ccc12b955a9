"""Image transforms of SPEC §6: resize, two distinct random operations (train), ImageNet normalisation."""
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


class TwoDistinctOps:
    """Apply two different operations drawn (with torch's RNG) from the six of SPEC §6.

    Jitter, rotation, crop and erasing always act; flip and grayscale keep torchvision's
    default probabilities (0.5 and 0.1) as in the published pool of *random* operations:
    always-grey images would contradict the colour words of a third of the captions.
    Erasing works on the normalised tensor
    (erased area = mean colour), the others on the PIL image; drawing with torch's RNG
    lets the dataset make the whole transform reproducible from a per-sample seed.
    """

    def __init__(self, height: int, width: int):
        self.pil_ops: dict[int, Callable] = {
            0: T.ColorJitter(0.1, 0.1, 0.1),
            1: T.RandomRotation(15, interpolation=InterpolationMode.BILINEAR),
            2: T.RandomResizedCrop((height, width), scale=(0.9, 1.0), interpolation=InterpolationMode.BICUBIC),
            3: T.RandomGrayscale(p=0.1),
            4: T.RandomHorizontalFlip(p=0.5),
        }
        self.erase = T.RandomErasing(p=1.0, scale=(0.1, 0.2), value=0)
        self.finish = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])

    def choose(self) -> list[int]:
        return torch.randperm(len(OP_NAMES))[:2].tolist()

    def __call__(self, img: Image.Image) -> torch.Tensor:
        ops = self.choose()
        for k in ops:
            if k in self.pil_ops:
                img = self.pil_ops[k](img)
        x = self.finish(img)
        return self.erase(x) if 5 in ops else x


def build_transforms(cfg: Config, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """Train: bicubic resize to input_resolution, two distinct random ops, normalise; test: resize + normalise."""
    h, w = cfg.experiment.input_resolution
    resize = T.Resize((h, w), interpolation=InterpolationMode.BICUBIC)
    if train:
        return T.Compose([to_rgb, resize, TwoDistinctOps(h, w)])
    return T.Compose([to_rgb, resize, T.ToTensor(), T.Normalize(MEAN, STD)])
