"""The config schema: one dataclass per YAML section, with the published defaults, each
checking its own values (the checks types alone cannot express).

Every key of the published Bi-IRRA ``config.yaml`` has a field here (except ``image_res``:
unset, it follows the input resolution), so a user's edited upstream file loads unchanged.
:meth:`Config.validate` runs the section checks in a fixed order, which decides the error
reported first when a config has several problems.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from utils.config.languages import LANGUAGE_CODE, LANGUAGES, evaluated_languages
from utils.config.report import ConfigError, note_ignored
from utils.config.vision_json import load_vision_json

AMP_MODES = ("fp16", "bf16", "fp32")  # schedule.amp ("off" would read as false in YAML)
RERANK_SCORES = ("logit", "log_odds")  # model.rerank_score
ITM_NEGATIVES = ("hard", "random")  # itm.negatives

Check = typing.Callable[[bool, str, str], None]  # check(ok, dotted key, message): raises ConfigError unless ok


def _check_weight(check: Check, key: str, weight: float) -> None:
    check(weight >= 0, key, f"must be >= 0, got {weight}")


def _check_fraction(check: Check, key: str, value: float) -> None:
    check(0 <= value <= 1, key, f"must be in [0, 1], got {value}")


@dataclass
class Misc:
    seed: int = 1
    deterministic: bool = False  # PyTorch deterministic algorithms (slower on CUDA)


@dataclass
class Experiment:
    input_resolution: list[int] = field(default_factory=lambda: [224, 224])
    text_length: int = 77

    def validate(self, check: Check, patch_size: int) -> None:
        """The input resolution, which must also be a multiple of the top-level ``patch_size``."""
        res = self.input_resolution
        check(len(res) == 2 and all(v > 0 for v in res), "experiment.input_resolution",
              f"must be [height, width] of positive ints, got {res}")
        for v in res:
            check(v % patch_size == 0, "experiment.input_resolution", f"{res} must be divisible by patch_size {patch_size}")
        check(self.text_length >= 4, "experiment.text_length", f"must be >= 4, got {self.text_length}")


@dataclass
class Schedule:
    lr: float = 5e-5
    epoch: int = 10
    epoch_warmup: int = 1
    lr_start: float = 1e-6
    lr_end: float = 5e-6
    weight_decay: float = 0.02
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    ratio_factor: float = 1.0
    grad_clip: float = 0.0  # max gradient norm; 0 disables clipping
    skip_nonfinite: bool = False  # skip (and count) steps with a non-finite loss instead of stopping
    amp: str = "fp16"  # CUDA training precision: fp16 (autocast + GradScaler, upstream) | bf16 | fp32
    cpu_amp: bool = False  # apply schedule.amp on the CPU too (checks the mixed-precision path without a GPU)
    save_every_steps: int = 0  # also write checkpoint_last.pth every N steps inside an epoch; 0 = end of epoch only
    steps_per_epoch: int = 0  # N > 0: an epoch ends after N steps (evaluation, checkpoint, schedule); 0 = one full pass

    def validate(self, check: Check) -> None:
        """The optimizer and learning-rate schedule."""
        for key in ("lr", "lr_start", "lr_end", "eps"):
            check(getattr(self, key) >= 0, f"schedule.{key}", f"must be >= 0, got {getattr(self, key)}")
        check(self.lr > 0, "schedule.lr", f"must be positive, got {self.lr}")
        check(self.epoch > 0, "schedule.epoch", f"must be positive, got {self.epoch}")
        check(0 <= self.epoch_warmup <= self.epoch, "schedule.epoch_warmup",
              f"must be in [0, schedule.epoch], got {self.epoch_warmup}")
        check(self.weight_decay >= 0, "schedule.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "schedule.betas",
              f"must be two values in [0, 1), got {self.betas}")
        check(self.ratio_factor > 0, "schedule.ratio_factor", f"must be positive, got {self.ratio_factor}")
        check(self.grad_clip >= 0, "schedule.grad_clip", f"must be >= 0, got {self.grad_clip}")
        check(self.amp in AMP_MODES, "schedule.amp", f"must be one of {', '.join(AMP_MODES)}, got '{self.amp}'")
        check(self.save_every_steps >= 0, "schedule.save_every_steps",
              f"must be >= 0 (0: checkpoint at the end of each epoch only), got {self.save_every_steps}")
        check(self.steps_per_epoch >= 0, "schedule.steps_per_epoch",
              f"must be >= 0 (0: one full pass over the training set), got {self.steps_per_epoch}")


@dataclass
class Model:
    resume: str = ""
    saved_path: str = "runs/bi_irra"
    use_gather: bool = True
    embed_dim: int = 256
    temp: float = 0.07
    k_test: int = 256
    grad_checkpointing: bool = False
    gather_with_grad: bool = False  # ITC/SDM gather returns the other processes' gradients too (upstream: local slice only)
    roberta_position_ids: bool = False  # text position ids from padding_idx + 1 (HF/CCLM); upstream fine-tunes with arange(L)
    rerank_score: str = "logit"  # re-rank by the raw match logit (upstream) | log_odds (match minus non-match logit)
    eval_amp: bool = False  # evaluate under the training autocast dtype on CUDA (upstream: fp32)
    compile: bool = False  # torch.compile the encoders and fusion layers in place (parameter names unchanged)

    def validate(self, check: Check) -> None:
        check(self.rerank_score in RERANK_SCORES, "model.rerank_score",
              f"must be one of {', '.join(RERANK_SCORES)}, got '{self.rerank_score}'")
        check(self.k_test > 0, "model.k_test", f"must be positive, got {self.k_test}")
        check(self.embed_dim > 0, "model.embed_dim", f"must be positive, got {self.embed_dim}")
        check(self.temp > 0, "model.temp", f"must be positive, got {self.temp}")
        check(bool(self.saved_path), "model.saved_path", "must name an output folder")


@dataclass
class Itm:
    weight: float = 4.0
    use_mask: bool = True
    negatives: str = "hard"  # hard: drawn by ITC similarity (upstream) | random: any other person, uniformly

    def validate(self, check: Check) -> None:
        check(self.negatives in ITM_NEGATIVES, "itm.negatives",
              f"must be one of {', '.join(ITM_NEGATIVES)}, got '{self.negatives}'")
        _check_weight(check, "itm.weight", self.weight)


@dataclass
class Mim:
    weight: float = 4.0
    use_mim: bool = True
    mask_ratio: float = 0.5
    per_sample_mask: bool = False  # one block mask per sample (upstream: one per batch)

    def validate(self, check: Check) -> None:
        _check_fraction(check, "mim.mask_ratio", self.mask_ratio)
        _check_weight(check, "mim.weight", self.weight)


@dataclass
class Mlm:
    is_mlm: bool = True
    mask_prob: float = 0.4
    max_masks: int = 12
    skipgram_prb: float = 0.2
    skipgram_size: int = 3
    protect_special: bool = False  # never mask <s>/</s> nor draw special tokens as replacements (upstream does)

    def validate(self, check: Check) -> None:
        _check_fraction(check, "mlm.mask_prob", self.mask_prob)
        _check_fraction(check, "mlm.skipgram_prb", self.skipgram_prb)
        check(self.max_masks > 0, "mlm.max_masks", f"must be positive, got {self.max_masks}")
        check(self.skipgram_size >= 1, "mlm.skipgram_size", f"must be >= 1, got {self.skipgram_size}")


@dataclass
class Sdm:
    use_sdm: bool = False
    weight: float = 1.0

    def validate(self, check: Check) -> None:
        _check_weight(check, "sdm.weight", self.weight)


@dataclass
class Id:
    use_id: bool = False
    weight: float = 1.0

    def validate(self, check: Check) -> None:
        _check_weight(check, "id.weight", self.weight)


@dataclass
class Log:
    print_period: int = 50
    tensorboard: bool = False  # also write every logged scalar to model.saved_path/tb/ (needs the tensorboard package)

    def validate(self, check: Check) -> None:
        check(self.print_period > 0, "log.print_period", f"must be positive, got {self.print_period}")


@dataclass
class Data:
    batch_size: int = 32
    test_batch_size: int = 128
    num_workers: int = 8
    source_language: str = "en"
    target_language: str = "ch"
    on_bad_image: str = "error"  # error | skip
    num_instances: int = 0  # K > 0: identity-balanced batches of K samples per person; 0: random (upstream)
    unicode_cleaning: bool = False  # captions: every Unicode punctuation/symbol -> space (upstream: ten ASCII characters)
    eval_languages: list[str] = field(default_factory=list)  # query languages evaluated; empty = source and target
    tl_proj_languages: list[str] = field(default_factory=list)  # extra query languages that use tl_text_proj

    def validate(self, check: Check) -> None:
        """Language codes first (they become file names), then the loader settings."""
        codes = [("source_language", self.source_language), ("target_language", self.target_language)]
        codes += [(key, lang) for key in ("eval_languages", "tl_proj_languages") for lang in getattr(self, key)]
        for key, lang in codes:
            check(bool(LANGUAGE_CODE.fullmatch(lang)), f"data.{key}",
                  f"must hold language codes of annotation files ({', '.join(LANGUAGES)} are published), got '{lang}'")
        check(self.source_language != self.target_language, "data.target_language",
              f"must differ from data.source_language ('{self.source_language}')")
        check(self.source_language not in self.tl_proj_languages, "data.tl_proj_languages",
              f"must not hold the source language '{self.source_language}' (its queries use text_proj)")
        for lang in self.tl_proj_languages:
            check(lang in evaluated_languages(self), "data.tl_proj_languages",
                  f"names '{lang}', which is not evaluated; add it to data.eval_languages")
        check(self.on_bad_image in ("error", "skip"), "data.on_bad_image",
              f"must be 'error' or 'skip', got '{self.on_bad_image}'")
        for key in ("batch_size", "test_batch_size"):
            check(getattr(self, key) > 0, f"data.{key}", f"must be positive, got {getattr(self, key)}")
        check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        check(self.num_instances >= 0 and (self.num_instances == 0 or self.batch_size % self.num_instances == 0),
              "data.num_instances", f"must be 0 or divide data.batch_size ({self.batch_size}), got {self.num_instances}")


@dataclass
class Distributed:
    backend: str = "nccl"
    url: str = "env://"  # upstream's init_method; processes always join through torchrun's env://
    virtual_processes: int = 1  # V > 1: each process runs V virtual processes per optimizer step

    def validate(self, check: Check) -> None:
        check(self.virtual_processes >= 1, "distributed.virtual_processes", f"must be >= 1, got {self.virtual_processes}")

    def note_ignored(self, source: str) -> None:
        """``url`` loads (upstream files set it) but cannot act: say so once."""
        if self.url != "env://":
            note_ignored(source, "distributed.url", self.url,
                         "processes join through torchrun's environment variables (env://)")


def device_ok(device: str | int) -> bool:
    """``device`` is cuda, cuda:N, cpu or a CUDA device number (upstream's ``device: 5``)."""
    if isinstance(device, int):
        return device >= 0
    return device in ("cuda", "cpu") or bool(re.fullmatch(r"cuda:\d+", device))


@dataclass
class Config:
    device: str | int = "cuda"  # cuda | cuda:N | cpu | N (upstream's form: CUDA device N); torchrun: LOCAL_RANK decides
    misc: Misc = field(default_factory=Misc)
    experiment: Experiment = field(default_factory=Experiment)
    schedule: Schedule = field(default_factory=Schedule)
    model: Model = field(default_factory=Model)
    itm: Itm = field(default_factory=Itm)
    mim: Mim = field(default_factory=Mim)
    mlm: Mlm = field(default_factory=Mlm)
    sdm: Sdm = field(default_factory=Sdm)
    id: Id = field(default_factory=Id)
    vision_config: str = "config/config_beit2_base.json"
    use_clip_vit: bool = False  # upstream's encoder switches: only the BEiT-v2 setting is accepted
    use_beit_v2: bool = True
    image_res: int = 0  # upstream's square image size (published: 224); when set, must equal the input height
    patch_size: int = 16
    text_encoder: str = "data/xlm-roberta-base"
    text_num_hidden_layers: int = 18
    text_fusion_start_at: int = 12
    use_one_cl_proj_only: bool = False
    log: Log = field(default_factory=Log)
    data: Data = field(default_factory=Data)
    distributed: Distributed = field(default_factory=Distributed)
    anno_dir: str = "data/CUHK-PEDES/annos"
    image_dir: str = "data/CUHK-PEDES/imgs"
    source: str = field(default="<defaults>", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out

    def vision_json(self) -> dict[str, Any]:
        """The parsed ``vision_config`` JSON (sizes of the vision encoder)."""
        return load_vision_json(self.vision_config, self.experiment.input_resolution)

    def _check(self, ok: bool, key: str, msg: str) -> None:
        if not ok:
            raise ConfigError(f"{self.source}: key '{key}' {msg}")

    def validate(self) -> None:
        """Every section checks itself; then the keys that span sections. The first problem is reported."""
        check = self._check
        self.data.validate(check)
        check(device_ok(self.device), "device",
              f"must be 'cuda', 'cuda:N', 'cpu' or a CUDA device number N, got {self.device!r}")
        check(self.patch_size > 0, "patch_size", f"must be positive, got {self.patch_size}")
        self.experiment.validate(check, self.patch_size)
        for section in (self.schedule, self.distributed, self.model, self.itm, self.mim, self.mlm, self.sdm, self.id,
                        self.log):
            section.validate(check)
        self._validate_encoders(check)
        self.distributed.note_ignored(self.source)

    def _validate_encoders(self, check: Check) -> None:
        """The top-level encoder keys: text fusion depth, the vision encoder switches, image_res."""
        res = self.experiment.input_resolution
        check(0 < self.text_fusion_start_at < self.text_num_hidden_layers, "text_fusion_start_at",
              f"must be in (0, text_num_hidden_layers={self.text_num_hidden_layers}), got {self.text_fusion_start_at}")
        check(not self.use_clip_vit, "use_clip_vit", "is not supported: Bi-IRRA uses BEiT-v2 (set use_beit_v2: true)")
        check(self.use_beit_v2, "use_beit_v2", "must be true: BEiT-v2 is the only vision encoder")
        check(self.image_res in (0, res[0]), "image_res",
              f"is {self.image_res} but experiment.input_resolution is {res}, which the model is built "
              f"for; set image_res to its height {res[0]}")


def validate(cfg: Config) -> None:
    """Value checks that types alone cannot express (see :meth:`Config.validate`)."""
    cfg.validate()
