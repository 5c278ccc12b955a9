"""The Bi-IRRA training objective: which losses run, their weights, ITM negatives, MLM
normalisation and the gradient-cache entry of virtual processes.

``BiIRRALoss(cfg)(model, batch)`` returns the named, already weighted loss terms of one
process's batch; their sum is what is back-propagated (docs/design.md gives the formulas).
"""
from __future__ import annotations

import contextlib
from typing import ContextManager, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.config import Config
from utils.distributed import all_gather_local_grad, all_gather_no_grad, get_world_size, is_dist
from .bi_irra import BiIRRA
from .fusion import KV
from .losses import cosine_distill_loss, itc_loss, masked_token_ce, sample_negatives, sdm_loss


class ContrastGrad(NamedTuple):
    """Gradients of the contrastive losses computed outside the objective (virtual processes).

    The objective then replaces those losses by ``scale * <features, grad>`` plus
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


class BiIRRALoss:
    """Bi-lingual ITC (+ SDM), ITM, bi-lingual MLM, D-MIM (+ ID), as the config switches them."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.use_itm = cfg.itm.weight > 0

    def freeze_unused(self, model: BiIRRA) -> None:
        """``itm.weight: 0`` turns ITM off (e.g. a cheap contrastive stage): its head, and the
        fusion layers when neither MLM nor D-MIM uses them, keep their loaded weights, and
        DDP sees no unused trainable parameter."""
        cfg = self.cfg
        if not self.use_itm:
            model.itm_head.requires_grad_(False)
            if not (cfg.mlm.is_mlm or cfg.mim.use_mim):
                model.cross_encoder.requires_grad_(False)

    def contrastive(self, image_feat: torch.Tensor, src_feat: torch.Tensor, tgt_feat: torch.Tensor,
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

    def itm(self, model: BiIRRA, text_embeds: torch.Tensor, text_mask: torch.Tensor, image_kv: list[KV],
            image_feat: torch.Tensor, text_feat: torch.Tensor, pids: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
        """B positive pairs plus one hard negative image per text and one hard negative text per image.

        ``itm.negatives: random`` draws them uniformly among the other people instead: a
        fusion encoder trained from scratch learns from those, while hard negatives from
        good ITC features keep it at chance (docs/benchmarks.md, the demo recipe).
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
        logits = model.itm_logits(text_embeds[text_idx], text_mask[text_idx], image_kv=kv)
        labels = torch.zeros(text_idx.shape[0], dtype=torch.long, device=logits.device)
        labels[:b] = 1
        return F.cross_entropy(logits.float(), labels)

    def contrast_grads(self, model: BiIRRA, local: list[torch.Tensor], pids: torch.Tensor, parts: int,
                       precision: ContextManager = contextlib.nullcontext(), loss_scale: float = 1.0
                       ) -> tuple[list[ContrastGrad], dict[str, torch.Tensor], bool]:
        """The gradient-cache half of virtual processes: the contrastive losses over the whole
        global batch (values to log) and, for each of this process's ``parts`` micro-batches,
        the gradient its training pass must carry back, and whether that gradient overflowed.

        ``local``: this process's normalised image, source and target features [parts x B, E]
        (no graph); the other processes' features are constants here. The gradient follows
        ``model.gather_with_grad``: upstream's local slice (each virtual process carries
        dL/dx of its own rows back, as each upstream process does) or the summed gradient
        of W x V processes (W V times that). ``loss_scale`` (fp16's GradScaler): the gradient
        is taken of the scaled losses under ``precision``, as a real process's backward is, so
        it overflows to inf exactly when a real process's would, and is unscaled afterwards. An
        overflowed gradient is returned as zeros with the flag set, the same on every process
        (DDP would have spread a real process's inf to all): the caller must then make the
        GradScaler skip the step, as the real processes' inf gradients would.
        """
        local = [f.requires_grad_(True) for f in local]
        full = [all_gather_local_grad(f) for f in local]
        temp = model.temperature().detach().requires_grad_(True)
        with precision:
            values = self.contrastive(*full, all_gather_no_grad(pids), temp, use_gather=False)
        grads = torch.autograd.grad(sum(values.values()) * loss_scale, [*local, temp])
        overflow = torch.tensor(float(not all(bool(torch.isfinite(g).all()) for g in grads)), device=pids.device)
        if is_dist():
            torch.distributed.all_reduce(overflow, op=torch.distributed.ReduceOp.MAX)
        overflow = bool(overflow)
        grads = [torch.zeros_like(g) if overflow else g / loss_scale for g in grads]
        scale = float(get_world_size() * parts) if self.cfg.model.gather_with_grad else 1.0
        size = local[0].shape[0] // parts
        out = [ContrastGrad(*(g[v * size:(v + 1) * size] for g in grads[:3]), temp=grads[3], scale=scale)
               for v in range(parts)]
        return out, {k: val.detach() for k, val in values.items()}, overflow

    @staticmethod
    def mlm(model: BiIRRA, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, image_kv: list[KV],
            mean_count: float | None) -> torch.Tensor:
        """Masked caption through text + fusion layers (cross-attending to the unmasked image)."""
        chosen = labels != -100
        return masked_token_ce(model.masked_token_logits(ids, mask, image_kv, chosen), labels[chosen], mean_count)

    def __call__(self, model: BiIRRA, batch: dict[str, torch.Tensor], contrast: ContrastGrad | None = None,
                 mlm_counts: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        """The named, weighted losses of one batch.

        ``contrast`` (virtual processes): the contrastive losses were computed over the
        whole global batch outside; their gradient enters through a surrogate term kept
        under ``"itc"`` (its value is not the loss). ``mlm_counts``: the mean masked-token
        counts (source, target) per process, when the caller knows them.
        """
        cfg = self.cfg
        pids, src_mask, tgt_mask = batch["pids"], batch["src_mask"], batch["tgt_mask"]
        temp = model.temperature()
        enc = model.encode_batch(batch)
        image_feat, src_feat, tgt_feat = enc.features()
        if contrast is None:
            losses = self.contrastive(image_feat, src_feat, tgt_feat, pids, temp, cfg.model.use_gather,
                                      cfg.model.gather_with_grad)
        else:
            losses = {"itc": contrast.surrogate((image_feat, src_feat, tgt_feat), temp)}
        # masked images are encoded where a loss uses them, which is where the model has a mask token
        masked = model.encode_image(batch["images"], batch["image_mask"]) if model.arch.mask_token else None

        image_kv = model.image_kv(enc.image) if (self.use_itm or cfg.mlm.is_mlm) else []
        if self.use_itm:
            itm_s = self.itm(model, enc.src, src_mask, image_kv, image_feat, src_feat, pids, temp)
            if cfg.itm.use_mask:  # upstream: masked image for the target pairs and for drawing their negatives
                itm_t = self.itm(model, enc.tgt, tgt_mask, model.image_kv(masked), model.image_feature(masked),
                                 tgt_feat, pids, temp)
            else:
                itm_t = self.itm(model, enc.tgt, tgt_mask, image_kv, image_feat, tgt_feat, pids, temp)
            losses["itm"] = cfg.itm.weight * 0.5 * (itm_s + itm_t)
        if cfg.mlm.is_mlm:
            counts = mlm_counts or (None, None)
            losses["mlm"] = (self.mlm(model, batch["src_mlm_ids"], src_mask, batch["src_mlm_labels"], image_kv,
                                      counts[0])
                             + self.mlm(model, batch["tgt_mlm_ids"], tgt_mask, batch["tgt_mlm_labels"], image_kv,
                                        counts[1]))
        if cfg.mim.use_mim:
            teacher = model.mim_teacher(enc.image, enc.src, src_mask)
            losses["mim"] = cfg.mim.weight * cosine_distill_loss(model.mim_student(masked, enc.tgt, tgt_mask), teacher)
        if cfg.id.use_id:
            id_loss = sum(F.cross_entropy(model.classifier(p).float(), pids)
                          for p in (enc.image_proj, enc.src_proj, enc.tgt_proj))
            losses["id"] = cfg.id.weight * id_loss / 3
        return losses


class TrainingModule(nn.Module):
    """The network with its objective as one module, for DDP: ``forward`` returns the losses.

    DDP must wrap the module whose forward runs every pass of a step; the parameters are
    the network's, under the same order.
    """

    def __init__(self, model: BiIRRA, objective: BiIRRALoss) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, batch: dict[str, torch.Tensor], contrast: ContrastGrad | None = None,
                mlm_counts: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        return self.objective(self.model, batch, contrast, mlm_counts)


__all__ = ["BiIRRALoss", "ContrastGrad", "TrainingModule"]
