"""The architecture of a Bi-IRRA network, resolved once from a run configuration.

``resolve_architecture`` reads the vision JSON and the text encoder's ``config.json``
and decides which optional parameters exist, so the network's constructor reads no file
and no loss switch. Optional parameters exist only where an enabled loss uses them,
because DDP must find no unused trainable parameter:

* ``mask_token`` when masked images are encoded (D-MIM, or ITM with ``itm.use_mask``);
* ``mim_head`` with D-MIM, ``mlm_head`` with MLM, ``classifier`` with the ID loss;
* ``tl_text_proj`` unless ``use_one_cl_proj_only``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import XLMRobertaConfig

from utils.config import Config, ConfigError
from .text import load_text_config


@dataclass(frozen=True)
class Architecture:
    """Sizes and optional parts of a :class:`model.bi_irra.BiIRRA`."""
    vision: dict[str, Any]  # the vision JSON with defaults filled in (model.vision.BeitV2Encoder)
    input_resolution: tuple[int, int]  # (height, width) the vision encoder is built for
    text: XLMRobertaConfig  # the text encoder's config.json as read (all layers)
    text_folder: str  # where the text encoder's weights may be
    text_layers: int  # layers of the text encoder; the rest of the stack are fusion layers
    fusion_layers: int
    embed_dim: int
    temp: float  # initial temperature
    roberta_position_ids: bool
    mask_token: bool
    mim_head: bool
    mlm_head: bool
    tl_text_proj: bool
    num_ids: int  # > 0: an identity classifier with this many classes
    grad_checkpointing: bool

    @property
    def width(self) -> int:
        return self.vision["vision_width"]


def resolve_architecture(cfg: Config, num_ids: int = 0) -> Architecture:
    """The architecture ``cfg`` describes; ``num_ids`` sizes the ID head (``id.use_id``)."""
    text = load_text_config(cfg.text_encoder)
    vision = cfg.vision_json()
    width = vision["vision_width"]
    if width != text.hidden_size:
        raise ConfigError(f"{cfg.source}: vision_width {width} of {cfg.vision_config} must equal the text "
                          f"encoder's hidden_size {text.hidden_size} ({cfg.text_encoder}/config.json)")
    if cfg.id.use_id and num_ids <= 0:
        raise ConfigError(f"{cfg.source}: key 'id.use_id' is true but the number of training identities "
                          "(num_ids, which sizes the ID head) is not known here")
    if vision["patch_size"] != cfg.patch_size:
        raise ConfigError(f"{cfg.source}: key 'patch_size' is {cfg.patch_size} but {cfg.vision_config} "
                          f"says patch_size {vision['patch_size']}; they must agree")
    use_itm = cfg.itm.weight > 0
    h, w = cfg.experiment.input_resolution
    return Architecture(
        vision=vision, input_resolution=(h, w), text=text, text_folder=cfg.text_encoder,
        text_layers=cfg.text_fusion_start_at, fusion_layers=cfg.text_num_hidden_layers - cfg.text_fusion_start_at,
        embed_dim=cfg.model.embed_dim, temp=float(cfg.model.temp), roberta_position_ids=cfg.model.roberta_position_ids,
        mask_token=cfg.mim.use_mim or (cfg.itm.use_mask and use_itm), mim_head=cfg.mim.use_mim,
        mlm_head=cfg.mlm.is_mlm, tl_text_proj=not cfg.use_one_cl_proj_only, num_ids=num_ids if cfg.id.use_id else 0,
        grad_checkpointing=cfg.model.grad_checkpointing)


__all__ = ["Architecture", "resolve_architecture"]
