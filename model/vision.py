"""BEiT-v2 vision encoder (timm's ``Beit``) with the X2-VLM output convention and MIM masking.

The encoder is a subclass of timm's ``Beit`` so its parameter names are exactly the
original BEiT-v2 names (``blocks.N.attn.qkv.weight``, ``gamma_1``, ``fc_norm`` ...) and
timm's ``checkpoint_filter_fn`` can load and resize the pretrained tables directly.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.utils.checkpoint
from torch import nn
from timm.models.beit import Beit



def _uniform(rng: np.random.Generator, a: float, b: float) -> float:
    """Python's ``random.uniform`` (BEiT's draw): a + (b - a) * U, also when b < a."""
    return a + (b - a) * rng.random()


class BlockMaskGenerator:
    """BEiT's block-wise ``MaskingGenerator`` as the released Bi-IRRA configures it.

    Target int(mask_ratio * N) patches; rectangles of area uniform(min_num_patches,
    remaining) (BEiT draws it even when remaining < min_num_patches) and log-uniform aspect
    in [0.3, 1/0.3], strictly smaller than the grid in both sides, up to ``attempts`` tries
    per rectangle; a rectangle is kept when it adds 1..remaining new patches. It stops at
    the first rectangle that cannot be placed, so a mask may fall short of the target.
    """

    def __init__(self, grid: tuple[int, int], mask_ratio: float, min_num_patches: int = 4,
                 min_aspect: float = 0.3, attempts: int = 10) -> None:
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_patches = self.grid[0] * self.grid[1]
        self.num_masked = int(self.num_patches * mask_ratio)
        self.min_num_patches = min_num_patches
        self.log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
        self.attempts = attempts

    def place_block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Try to mask one rectangle adding at most ``budget`` patches; return how many it added (0: none fits)."""
        gh, gw = self.grid
        for _ in range(self.attempts):
            area = _uniform(rng, self.min_num_patches, budget)
            aspect = math.exp(_uniform(rng, *self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h < gh and w < gw:
                top = int(rng.integers(0, gh - h + 1))
                left = int(rng.integers(0, gw - w + 1))
                window = mask[top:top + h, left:left + w]
                added = h * w - int(window.sum())
                if 0 < added <= budget:
                    window[...] = True
                    return added
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros(self.grid, dtype=bool)
        count = 0
        while count < self.num_masked:
            added = self.place_block(mask, self.num_masked - count, rng)
            if added == 0:
                break
            count += added
        return mask


class BeitV2Encoder(Beit):
    """BEiT-v2 whose output is ``[mean of fc_norm'd patch tokens, fc_norm'd patch tokens]``.

    The CLS token takes part in the blocks (as in BEiT-v2) but is dropped from the output
    (X2-VLM convention), so token 0 of the output is the pooled image token. A masked
    forward swaps the chosen patch embeddings for ``mask_token`` before the blocks; the
    token only exists when a loss uses masked images (DDP must see no unused parameters).
    """

    def __init__(self, sizes: dict[str, Any], img_size: tuple[int, int], use_mask_token: bool) -> None:
        super().__init__(
            img_size=img_size, patch_size=sizes["patch_size"], num_classes=0, global_pool="avg",
            embed_dim=sizes["vision_width"], depth=sizes["depth"], num_heads=sizes["num_heads"],
            mlp_ratio=sizes["mlp_ratio"], drop_path_rate=sizes["drop_path_rate"], qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), init_values=sizes["layer_scale_init"],
            use_abs_pos_emb=False, use_rel_pos_bias=True, use_fc_norm=True,
        )
        self.mask_token: nn.Parameter | None = None
        if use_mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.patch_embed(images)
        if image_mask is not None:
            if self.mask_token is None:
                raise RuntimeError("masked forward needs the mask token (enable mim.use_mim or itm.use_mask)")
            x = torch.where(image_mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        x = self.pos_drop(x)
        for blk in self.blocks:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        patches = self.fc_norm(x[:, 1:])
        return torch.cat((patches.mean(dim=1, keepdim=True), patches), dim=1)


__all__ = ["BlockMaskGenerator", "BeitV2Encoder"]
