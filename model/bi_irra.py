"""The Bi-IRRA network: BEiT-v2 image encoder, XLM-R text encoder, fusion layers and heads.

The network computes features, fused states and head outputs; the losses that train it
are :class:`model.objective.BiIRRALoss` (as OpenCLIP keeps ``CLIP`` apart from ``ClipLoss``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.config import Config
from .architecture import Architecture, resolve_architecture
from .fusion import KV, FusionEncoder
from .heads import MLMHead, mlp_head
from .text import build_text_encoder
from .vision import BeitV2Encoder

TEMP_RANGE = (0.001, 0.5)


class Encoded(NamedTuple):
    """The encoder outputs of a training batch that the contrastive losses use."""
    image: torch.Tensor  # [B, 1 + N, D]
    src: torch.Tensor  # [B, L, D]
    tgt: torch.Tensor
    image_proj: torch.Tensor  # [B, E], before normalisation
    src_proj: torch.Tensor
    tgt_proj: torch.Tensor

    def features(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised image, source and target features."""
        return tuple(F.normalize(p, dim=-1) for p in (self.image_proj, self.src_proj, self.tgt_proj))


class BiIRRA(nn.Module):
    """Encoders, projections, fusion layers and heads (see model.architecture for which exist).

    Parameter names are those of the released code, so its checkpoints load unchanged.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        width, embed_dim = arch.width, arch.embed_dim
        self.vision_encoder = BeitV2Encoder(arch.vision, arch.input_resolution, arch.mask_token)
        self.text_encoder = build_text_encoder(arch.text_folder, arch.text_layers, arch.roberta_position_ids,
                                               config=arch.text)
        config = self.text_encoder.config
        self.cross_encoder = FusionEncoder(config, arch.fusion_layers)

        self.vision_proj = nn.Linear(width, embed_dim)
        self.text_proj = nn.Linear(width, embed_dim)
        self.tl_text_proj = nn.Linear(width, embed_dim) if arch.tl_text_proj else None
        if self.tl_text_proj is not None:
            self.tl_text_proj.load_state_dict(self.text_proj.state_dict())
        self.temp = nn.Parameter(torch.tensor(arch.temp))
        self.itm_head = mlp_head(width, 2)
        self.mim_head = mlp_head(width, width) if arch.mim_head else None
        self.mlm_head = None
        if arch.mlm_head:
            self.mlm_head = MLMHead(width, config.vocab_size, config.layer_norm_eps)
            if config.tie_word_embeddings:
                self.mlm_head.tie(self.text_encoder.embeddings.word_embeddings)
        self.classifier = nn.Linear(embed_dim, arch.num_ids) if arch.num_ids else None
        if arch.grad_checkpointing:
            self.vision_encoder.set_grad_checkpointing(True)
            self.text_encoder.activation_checkpointing_enable({"use_reentrant": False})
            self.cross_encoder.grad_checkpointing = True

    @classmethod
    def from_config(cls, cfg: Config, num_ids: int = 0) -> BiIRRA:
        """The network ``cfg`` describes, freshly initialised (``model.build_model`` also loads weights)."""
        return cls(resolve_architecture(cfg, num_ids))

    # ----------------------------------------------------------------- encoders and features
    def temperature(self) -> torch.Tensor:
        """The learnable temperature, clamped to a sane range where it is used."""
        return self.temp.clamp(*TEMP_RANGE)

    def encode_image(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1 + N, D]; token 0 is the pooled token."""
        return self.vision_encoder(images, image_mask)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text layers only: [B, L] ids and padding mask -> [B, L, D]."""
        return self.text_encoder(ids, mask)

    def image_feature(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)

    def text_projection(self, target: bool) -> nn.Linear:
        """``tl_text_proj`` for target-language captions (when it exists), else ``text_proj``."""
        return self.tl_text_proj if target and self.tl_text_proj is not None else self.text_proj

    def text_feature(self, text_embeds: torch.Tensor, target: bool) -> torch.Tensor:
        """Source captions use ``text_proj``, target-language captions ``tl_text_proj``."""
        return F.normalize(self.text_projection(target)(text_embeds[:, 0]), dim=-1)

    def encode_batch(self, batch: dict[str, torch.Tensor]) -> Encoded:
        """Unmasked image, source and target captions, in this order.

        The objective starts with exactly these passes, so a no-grad call drawing the same
        random numbers (dropout) gives the features the training pass will compute
        (virtual processes rely on it).
        """
        image = self.encode_image(batch["images"])
        src = self.encode_text(batch["src_ids"], batch["src_mask"])
        tgt = self.encode_text(batch["tgt_ids"], batch["tgt_mask"])
        return Encoded(image, src, tgt, self.vision_proj(image[:, 0]), self.text_projection(False)(src[:, 0]),
                       self.text_projection(True)(tgt[:, 0]))

    # ----------------------------------------------------------------- fusion layers and heads
    def image_kv(self, image_embeds: torch.Tensor) -> list[KV]:
        """Cross-attention keys/values of every fusion layer, reusable for many captions."""
        return self.cross_encoder.cross_kv(image_embeds)

    def fuse_text(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor | None = None,
                  image_kv: list[KV] | None = None) -> torch.Tensor:
        """Fusion layers with the text as queries and the image as context."""
        return self.cross_encoder(text_embeds, text_mask, context=image_embeds, cross_kv=image_kv)

    def itm_logits(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor | None = None,
                   image_kv: list[KV] | None = None) -> torch.Tensor:
        """ITM logits [B, 2] (class 1 = match) of each caption with its image."""
        return self.itm_head(self.fuse_text(text_embeds, text_mask, image_embeds, image_kv)[:, 0])

    def itm_logits_pairs(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, pair_text: torch.Tensor,
                         pair_image_kv: Callable[[int], KV]) -> torch.Tensor:
        """``itm_logits`` [P, 2] of caption ``pair_text[p]`` of ``text_embeds`` [U, L, D] with an
        image whose fusion-layer-i keys/values are ``pair_image_kv(i)``.

        For re-ranking, where many captions meet many images whose keys/values were
        computed once; see ``FusionEncoder.first_token_pairs``.
        """
        return self.itm_head(self.cross_encoder.first_token_pairs(text_embeds, text_mask, pair_text, pair_image_kv))

    def masked_token_logits(self, ids: torch.Tensor, mask: torch.Tensor, image_kv: list[KV],
                            positions: torch.Tensor) -> torch.Tensor:
        """MLM logits at ``positions`` ([B, L] bool) of a masked caption read with its unmasked image."""
        hidden = self.fuse_text(self.encode_text(ids, mask), mask, image_kv=image_kv)
        return self.mlm_head(hidden[positions])

    def cross_attention(self, text_embeds: torch.Tensor, text_mask: torch.Tensor,
                        image_embeds: torch.Tensor) -> list[torch.Tensor]:
        """Per fusion layer, where each text token looks in the image: cross-attention
        probabilities [B, heads, L, 1 + N] (eval mode, no gradient; engine/explain.py)."""
        return self.cross_encoder.cross_attention_maps(text_embeds, text_mask, image_embeds)

    @torch.no_grad()
    def mim_teacher(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """D-MIM target: unmasked image tokens as queries over the source caption, no gradient."""
        return self.cross_encoder(image_embeds.detach(), None, context=text_embeds.detach(), context_mask=text_mask)

    def mim_student(self, masked_embeds: torch.Tensor, text_embeds: torch.Tensor,
                    text_mask: torch.Tensor) -> torch.Tensor:
        """D-MIM prediction: masked image tokens as queries over the target caption, through ``mim_head``."""
        return self.mim_head(self.cross_encoder(masked_embeds, None, context=text_embeds, context_mask=text_mask))


__all__ = ["BiIRRA", "Encoded", "TEMP_RANGE"]
