"""Tiny Bi-IRRA builders (no downloads): text encoder folders, the one tiny config, batches.

The fixtures built from them (``tiny_text_dir``, ``base_text_dir``) are in conftest.py.
``tiny_config_file`` is the one builder of tiny configs (and ``write_vision_json`` the one
writer of vision JSON files); ``tiny_config`` loads what it writes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from utils.config import Config, apply_override, load_config

SENTENCES = [
    "a man wearing a red shirt and blue jeans walks with a black backpack",
    "the woman has long black hair and carries a white bag on her shoulder",
    "un homme avec une chemise rouge et un jean bleu",
    "eine frau mit langen schwarzen haaren und einer weissen tasche",
    "一个穿红色衬衫和蓝色牛仔裤的男人背着黑色背包",
    "一个长黑发的女人肩上背着白色的包",
]

XLMR_BASE = {"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 514, "layer_norm_eps": 1e-5,
             "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
             "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
             "initializer_range": 0.02, "model_type": "xlm-roberta", "architectures": ["XLMRobertaForMaskedLM"]}


def write_tokenizer(folder: Path) -> None:
    """A ~100-piece SentencePiece model in the xlm-roberta-base file layout."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 20), model_prefix=str(folder / "sentencepiece.bpe"),
        vocab_size=100, hard_vocab_limit=False, model_type="unigram",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    (folder / "sentencepiece.bpe.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512}))


def write_text_config(folder: Path, **sizes: object) -> None:
    (folder / "config.json").write_text(json.dumps({**XLMR_BASE, **sizes}))


def tiny_text_sizes(vocab: int) -> dict[str, object]:
    return {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
            "intermediate_size": 64, "max_position_embeddings": 64}


def write_text_dir(folder: Path, tiny: bool = True) -> Path:
    """Tokenizer + XLM-R config.json (no weights) in ``folder``: tiny sizes, or xlm-roberta-base's."""
    write_tokenizer(folder)
    if tiny:
        from transformers import AutoTokenizer

        write_text_config(folder, **tiny_text_sizes(len(AutoTokenizer.from_pretrained(folder, local_files_only=True))))
    else:
        write_text_config(folder)
    return folder


def write_vision_json(path: Path, width: int = 32, patch: int = 8, depth: int = 2, heads: int = 2) -> Path:
    """The vision JSON of a tiny BEiT tower (MLP ratio 2, no drop path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"vision_width": width, "patch_size": patch, "depth": depth, "num_heads": heads,
                                "mlp_ratio": 2.0, "drop_path_rate": 0.0}))
    return path


# What a config on a synthetic dataset adds to the tiny model: a shallower model (1 vision block
# unless ``depth`` says otherwise, 1 text + 1 fusion layer) and the settings of a short run of main.py.
RUN: dict[str, Any] = {
    "misc": {"seed": 5},
    "experiment": {"text_length": 24},
    "schedule": {"lr": 1e-3, "epoch": 2, "epoch_warmup": 1, "lr_start": 1e-4, "lr_end": 1e-4},
    "model": {"k_test": 4},
    "itm": {"weight": 1.0},
    "mim": {"weight": 1.0},
    "text_num_hidden_layers": 2,
    "text_fusion_start_at": 1,
    "log": {"print_period": 1},
    "data": {"batch_size": 8, "test_batch_size": 16, "num_workers": 0},
    "distributed": {"backend": "gloo"},
}


def _update(raw: dict[str, Any], sections: dict[str, Any]) -> None:
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value


def tiny_config_file(source: Path, out: Path, *overrides: str, name: str = "config.yaml",
                     resolution: tuple[int, int] = (32, 16), patch: int = 8, width: int = 32,
                     depth: int | None = None, **sections: Any) -> Path:
    """Write the YAML config of a tiny Bi-IRRA to ``out.parent / f"{out.name}_{name}"``, its vision
    JSON beside it, and return the YAML's path; ``out`` (``model.saved_path``) is created.

    ``source`` is either a synthetic dataset folder (imgs/, annos/, text_encoder/): a config
    main.py trains and evaluates on it, with ``RUN``'s settings; or a text encoder folder: the
    model alone (width 32, 2 heads, ``depth`` 2 vision blocks, 2 text + 2 fusion layers,
    embedding 16; the rest the defaults). ``sections`` then update the top-level keys (a dict
    updates that section) and ``overrides`` (``key=value``) apply as on the command line.
    """
    dataset = (source / "annos").is_dir()
    depth = depth if depth is not None else 1 if dataset else 2
    vision = write_vision_json(out.parent / f"{out.name}_vision.json", width=width, patch=patch, depth=depth)
    raw: dict[str, Any] = {
        "device": "cpu", "vision_config": str(vision), "patch_size": patch,
        "text_encoder": str(source / "text_encoder" if dataset else source),
        "experiment": {"input_resolution": list(resolution)},
        "text_num_hidden_layers": 4, "text_fusion_start_at": 2,
        "model": {"saved_path": str(out), "resume": "", "embed_dim": 16},
    }
    if dataset:
        _update(raw, RUN)
        raw.update(image_res=resolution[0], anno_dir=str(source / "annos"), image_dir=str(source / "imgs"))
    _update(raw, sections)
    for override in overrides:
        apply_override(raw, override)
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}_{name}"
    path.write_text(yaml.safe_dump(raw))
    return path


def tiny_config(source: Path, folder: Path, *overrides: str, **options: Any) -> Config:
    """The loaded config of ``tiny_config_file`` (same arguments), its files written in ``folder``
    (``model.saved_path`` is ``folder / "run"``)."""
    return load_config(tiny_config_file(source, folder / "run", *overrides, **options))


def make_batch(cfg: Config, tokenizer, pids: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch as the data pipeline delivers it (random images and captions)."""
    from model.vision import BlockMaskGenerator

    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    b = len(pids)
    h, w = cfg.experiment.input_resolution
    grid = (h // cfg.patch_size, w // cfg.patch_size)
    masker = BlockMaskGenerator(grid, cfg.mim.mask_ratio)
    batch = {
        "images": torch.randn(b, 3, h, w, generator=g),
        "image_mask": torch.from_numpy(np.stack([masker(rng).reshape(-1) for _ in range(b)])),
        "pids": torch.tensor(pids, dtype=torch.long),
    }
    special = set(tokenizer.all_special_ids)
    for lang, offset in (("src", 0), ("tgt", 4)):
        texts = [SENTENCES[(offset + int(rng.integers(0, 2)) + i) % len(SENTENCES)] for i in range(b)]
        texts = [" ".join(t.split()[: int(rng.integers(3, 8))]) for t in texts]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        batch[f"{lang}_ids"], batch[f"{lang}_mask"] = ids, mask
        mlm_ids, labels = ids.clone(), torch.full_like(ids, -100)
        for i in range(b):
            positions = [j for j in range(ids.shape[1]) if mask[i, j] and int(ids[i, j]) not in special]
            for j in rng.choice(positions, size=min(2, len(positions)), replace=False):
                labels[i, j] = ids[i, j]
                mlm_ids[i, j] = tokenizer.mask_token_id
        batch[f"{lang}_mlm_ids"], batch[f"{lang}_mlm_labels"] = mlm_ids, labels
    return batch
