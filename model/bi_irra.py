"""Bi-IRRA: BEiT-v2 image encoder, XLM-R text encoder, fusion encoder and the SPEC §4 losses."""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.config import Config, ConfigError
from .fusion import KV, FusionEncoder
from .heads import MLMHead, mlp_head
from .losses import cosine_distill_loss, itc_loss, masked_token_ce, sample_negatives, sdm_loss
from .text import build_text_encoder, load_text_config
from .vision import build_vision_encoder

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


class ContrastGrad(NamedTuple):
    """Gradients of the contrastive losses computed outside the forward (virtual processes).

    ``forward`` then replaces those losses by ``scale * <features, grad>`` plus
    ``temp * d(loss)/d(temp)``, whose gradient is the given one (times ``scale`` for the features).
    """
    image: torch.Tensor
    src: torch.Tensor
    tgt: torch.Tensor
    temp: torch.Tensor
    scale: float

    def surrogate(self, feats: tuple[torch.Tensor, torch.Tensor, torch.Tensor], temp: torch.Tensor) -> torch.Tensor:
        inner = sum((f.float() * g).sum() for f, g in zip(feats, (self.image, self.src, self.tgt)))
        return self.scale * inner + temp * self.temp


class BiIRRA(nn.Module):
    """The Bi-IRRA model; ``forward(batch)`` returns the named, already weighted losses.

    Parameters exist only for enabled losses (DDP must find no unused parameter):
    ``mask_token`` when masked images are used (``mim.use_mim``, or ``itm.use_mask`` with
    ITM on), ``mim_head`` with ``mim.use_mim``, ``mlm_head`` with ``mlm.is_mlm``,
    ``tl_text_proj`` unless ``use_one_cl_proj_only``, ``classifier`` with ``id.use_id``.
    ``itm.weight: 0`` turns ITM off (not computed; e.g. a cheap contrastive pre-training
    stage): the ITM head, and the fusion layers when no MLM or D-MIM uses them, are
    frozen, so they keep their loaded weights and DDP sees no unused trainable parameter.
    """

    def __init__(self, cfg: Config, num_ids: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        text_config = load_text_config(cfg.text_encoder)
        width = cfg.vision_json()["vision_width"]
        if width != text_config.hidden_size:
            raise ConfigError(f"{cfg.source}: vision_width {width} of {cfg.vision_config} must equal the text "
                              f"encoder's hidden_size {text_config.hidden_size} ({cfg.text_encoder}/config.json)")
        if cfg.id.use_id and num_ids <= 0:
            raise ValueError("id.use_id needs the number of training identities (num_ids > 0)")
        self.use_itm = cfg.itm.weight > 0
        self.use_masked_image = cfg.mim.use_mim or (cfg.itm.use_mask and self.use_itm)
        embed_dim = cfg.model.embed_dim

        self.vision_encoder = build_vision_encoder(cfg, use_mask_token=self.use_masked_image)
        self.text_encoder = build_text_encoder(cfg.text_encoder, cfg.text_fusion_start_at,
                                               cfg.model.roberta_position_ids)
        config = self.text_encoder.config
        self.cross_encoder = FusionEncoder(config, cfg.text_num_hidden_layers - cfg.text_fusion_start_at)

        self.vision_proj = nn.Linear(width, embed_dim)
        self.text_proj = nn.Linear(width, embed_dim)
        self.tl_text_proj = None if cfg.use_one_cl_proj_only else nn.Linear(width, embed_dim)
        if self.tl_text_proj is not None:
            self.tl_text_proj.load_state_dict(self.text_proj.state_dict())
        self.temp = nn.Parameter(torch.tensor(float(cfg.model.temp)))
        self.itm_head = mlp_head(width, 2)
        self.mim_head = mlp_head(width, width) if cfg.mim.use_mim else None
        self.mlm_head = None
        if cfg.mlm.is_mlm:
            self.mlm_head = MLMHead(width, config.vocab_size, config.layer_norm_eps)
            if config.tie_word_embeddings:
                self.mlm_head.tie(self.text_encoder.embeddings.word_embeddings)
        self.classifier = nn.Linear(embed_dim, num_ids) if cfg.id.use_id else None
        if not self.use_itm:  # itm.weight 0: the loss is not computed, its weights stay as loaded
            self.itm_head.requires_grad_(False)
            if not (cfg.mlm.is_mlm or cfg.mim.use_mim):  # no loss reaches the fusion layers (DDP needs them frozen)
                self.cross_encoder.requires_grad_(False)

        if cfg.model.grad_checkpointing:
            self.vision_encoder.set_grad_checkpointing(True)
            self.text_encoder.activation_checkpointing_enable({"use_reentrant": False})
            self.cross_encoder.grad_checkpointing = True

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

    def _text_proj(self, target: bool) -> nn.Linear:
        return self.tl_text_proj if target and self.tl_text_proj is not None else self.text_proj

    def text_feature(self, text_embeds: torch.Tensor, target: bool) -> torch.Tensor:
        """Source captions use ``text_proj``, target-language captions ``tl_text_proj``."""
        return F.normalize(self._text_proj(target)(text_embeds[:, 0]), dim=-1)

    def image_kv(self, image_embeds: torch.Tensor) -> list[KV]:
        """Cross-attention keys/values of every fusion layer, reusable for many captions."""
        return self.cross_encoder.cross_kv(image_embeds)

    def fuse_text(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor | None = None,
                  image_kv: list[KV] | None = None) -> torch.Tensor:
        """Fusion layers with the text as queries and the image as context."""
        return self.cross_encoder(text_embeds, text_mask, context=image_embeds, cross_kv=image_kv)

    def itm_logits(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor | None = None,
                   image_kv: list[KV] | None = None) -> torch.Tensor:
        return self.itm_head(self.fuse_text(text_embeds, text_mask, image_embeds, image_kv)[:, 0])

    def rerank_score(self, logits: torch.Tensor) -> torch.Tensor:
        """Re-ranking score from ITM logits [B, 2] (class 1 = match).

        Upstream ranks by the raw match logit ``logits[:, 1]``; ``model.rerank_score:
        log_odds`` uses the match minus the non-match logit (the log-odds of a match).
        """
        if self.cfg.model.rerank_score == "log_odds":
            return logits[:, 1] - logits[:, 0]
        return logits[:, 1]

    def itm_score(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_embeds: torch.Tensor | None = None,
                  image_kv: list[KV] | None = None) -> torch.Tensor:
        """Re-ranking score [B] of each (caption, image) pair; see ``rerank_score``."""
        return self.rerank_score(self.itm_logits(text_embeds, text_mask, image_embeds, image_kv))

    def itm_score_pairs(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, pair_text: torch.Tensor,
                        pair_image_kv: Callable[[int], KV]) -> torch.Tensor:
        """``itm_score`` [P] of caption ``pair_text[p]`` of ``text_embeds`` [U, L, D] with an image
        whose fusion-layer-i keys/values are ``pair_image_kv(i)``.

        For re-ranking, where many captions meet many images whose keys/values were
        computed once; see ``FusionEncoder.first_token_pairs``.
        """
        return self.rerank_score(self.itm_head(
            self.cross_encoder.first_token_pairs(text_embeds, text_mask, pair_text, pair_image_kv)))

    @torch.no_grad()
    def mim_teacher(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """D-MIM target: unmasked image tokens as queries over the source caption, no gradient."""
        return self.cross_encoder(image_embeds.detach(), None, context=text_embeds.detach(), context_mask=text_mask)

    # ----------------------------------------------------------------- losses
    def _itm_loss(self, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_kv: list[KV],
                  image_feat: torch.Tensor, text_feat: torch.Tensor, pids: torch.Tensor,
                  temp: torch.Tensor) -> torch.Tensor:
        """B positive pairs plus one hard negative image per text and one hard negative text per image.

        ``itm.negatives: random`` draws them uniformly among the other people instead: a
        fusion encoder trained from scratch learns from those, while hard negatives from
        good ITC features keep it at chance (docs/benchmarks.md, demo diagnostic).

        Negatives come from the local batch (see ``losses.sample_negatives``: rows whose
        batch holds only their own person get no negative).
        """
        b = text_embeds.shape[0]
        rows = torch.arange(b, device=text_embeds.device)
        with torch.no_grad():
            sim_t2i = text_feat @ image_feat.t()
            if self.cfg.itm.negatives == "random":  # equal scores: every other person equally likely
                sim_t2i = torch.zeros_like(sim_t2i)
            neg_image, valid_t = sample_negatives(sim_t2i, pids, pids, temp)
            neg_text, valid_i = sample_negatives(sim_t2i.t(), pids, pids, temp)
        text_idx = torch.cat([rows, rows[valid_t], neg_text])
        image_idx = torch.cat([rows, neg_image, rows[valid_i]])
        kv = [(k[image_idx], v[image_idx]) for k, v in image_kv]
        logits = self.itm_logits(text_embeds[text_idx], text_mask[text_idx], image_kv=kv)
        labels = torch.zeros(text_idx.shape[0], dtype=torch.long, device=logits.device)
        labels[:b] = 1
        return F.cross_entropy(logits.float(), labels)

    def _mlm_loss(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor,
                  image_kv: list[KV], mean_count: float | None) -> torch.Tensor:
        """Masked caption through text + fusion layers (cross-attending to the unmasked image)."""
        hidden = self.fuse_text(self.encode_text(ids, mask), mask, image_kv=image_kv)
        chosen = labels != -100
        return masked_token_ce(self.mlm_head(hidden[chosen]), labels[chosen], mean_count)

    def encode_batch(self, batch: dict[str, torch.Tensor]) -> Encoded:
        """Unmasked image, source and target captions, in this order.

        ``forward`` starts with exactly these passes, so a no-grad call drawing the same
        random numbers (dropout) gives the features the forward will compute
        (engine/virtual.py relies on it).
        """
        image = self.encode_image(batch["images"])
        src = self.encode_text(batch["src_ids"], batch["src_mask"])
        tgt = self.encode_text(batch["tgt_ids"], batch["tgt_mask"])
        return Encoded(image, src, tgt, self.vision_proj(image[:, 0]), self._text_proj(False)(src[:, 0]),
                       self._text_proj(True)(tgt[:, 0]))

    def contrastive_losses(self, image_feat: torch.Tensor, src_feat: torch.Tensor, tgt_feat: torch.Tensor,
                           pids: torch.Tensor, temp: torch.Tensor, use_gather: bool,
                           gather_with_grad: bool = False) -> dict[str, torch.Tensor]:
        """Bi-lingual ITC (and SDM when enabled), weighted as in the total loss."""
        cfg = self.cfg
        gather = (use_gather, gather_with_grad)
        out = {"itc": 0.5 * (itc_loss(image_feat, src_feat, pids, temp, *gather)
                             + itc_loss(image_feat, tgt_feat, pids, temp, *gather))}
        if cfg.sdm.use_sdm:
            out["sdm"] = cfg.sdm.weight * 0.5 * (sdm_loss(image_feat, src_feat, pids, temp, *gather)
                                                 + sdm_loss(image_feat, tgt_feat, pids, temp, *gather))
        return out

    def forward(self, batch: dict[str, torch.Tensor], contrast: ContrastGrad | None = None,
                mlm_counts: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        """The named, weighted losses of one batch.

        ``contrast`` (virtual processes): the contrastive losses were computed over the
        whole global batch outside; their gradient enters through a surrogate term kept
        under ``"itc"`` (its value is not the loss). ``mlm_counts``: the mean masked-token
        counts (source, target) per process, when the caller knows them.
        """
        cfg = self.cfg
        pids = batch["pids"]
        src_mask, tgt_mask = batch["src_mask"], batch["tgt_mask"]
        temp = self.temperature()

        enc = self.encode_batch(batch)
        image, src, tgt = enc.image, enc.src, enc.tgt
        image_feat, src_feat, tgt_feat = enc.features()
        if contrast is None:
            losses = self.contrastive_losses(image_feat, src_feat, tgt_feat, pids, temp, cfg.model.use_gather,
                                             cfg.model.gather_with_grad)
        else:
            losses = {"itc": contrast.surrogate((image_feat, src_feat, tgt_feat), temp)}
        masked = self.encode_image(batch["images"], batch["image_mask"]) if self.use_masked_image else None

        image_kv = self.image_kv(image) if (self.use_itm or self.mlm_head is not None) else []
        if self.use_itm:
            itm_s = self._itm_loss(src, src_mask, image_kv, image_feat, src_feat, pids, temp)
            if cfg.itm.use_mask:  # upstream: masked image for the target pairs and for drawing their negatives
                itm_t = self._itm_loss(tgt, tgt_mask, self.image_kv(masked), self.image_feature(masked), tgt_feat,
                                       pids, temp)
            else:
                itm_t = self._itm_loss(tgt, tgt_mask, image_kv, image_feat, tgt_feat, pids, temp)
            losses["itm"] = cfg.itm.weight * 0.5 * (itm_s + itm_t)

        if self.mlm_head is not None:
            counts = mlm_counts or (None, None)
            losses["mlm"] = (self._mlm_loss(batch["src_mlm_ids"], src_mask, batch["src_mlm_labels"], image_kv, counts[0])
                             + self._mlm_loss(batch["tgt_mlm_ids"], tgt_mask, batch["tgt_mlm_labels"], image_kv,
                                              counts[1]))
        if self.mim_head is not None:
            teacher = self.mim_teacher(image, src, src_mask)
            student = self.mim_head(self.cross_encoder(masked, None, context=tgt, context_mask=tgt_mask))
            losses["mim"] = cfg.mim.weight * cosine_distill_loss(student, teacher)
        if self.classifier is not None:
            id_loss = sum(F.cross_entropy(self.classifier(p).float(), pids)
                          for p in (enc.image_proj, enc.src_proj, enc.tgt_proj))
            losses["id"] = cfg.id.weight * id_loss / 3
        return losses


__all__ = ["BiIRRA", "ContrastGrad", "Encoded", "TEMP_RANGE"]
