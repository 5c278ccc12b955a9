"""Tiny Bi-IRRA builders shared by the model and checkpoint tests (no downloads).

Import the fixtures into a test module (``from tests.model_fixtures import tiny_text_dir``)
so pytest picks them up.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.config import Config, load_config

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


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenizer + tiny XLM-R config.json (no weights)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny_xlmr")
    write_tokenizer(folder)
    vocab = len(AutoTokenizer.from_pretrained(folder, local_files_only=True))
    write_text_config(folder, **tiny_text_sizes(vocab))
    return folder


@pytest.fixture(scope="session")
def base_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenizer + xlm-roberta-base-shaped config.json (no weights)."""
    folder = tmp_path_factory.mktemp("xlmr_base")
    write_tokenizer(folder)
    write_text_config(folder)
    return folder


def write_vision_json(path: Path, width: int = 32, patch: int = 8, depth: int = 2, heads: int = 2) -> Path:
    path.write_text(json.dumps({"vision_width": width, "patch_size": patch, "depth": depth, "num_heads": heads,
                                "mlp_ratio": 2.0, "drop_path_rate": 0.0}))
    return path


def tiny_config(text_dir: Path, tmp_path: Path, *overrides: str, resolution: tuple[int, int] = (32, 16),
                patch: int = 8, width: int = 32) -> Config:
    """Tiny model config: width 32, 2 heads, 2 vision blocks, 2 text + 2 fusion layers."""
    vision = write_vision_json(tmp_path / "vision.json", width=width, patch=patch)
    base = [f"vision_config={vision}", f"patch_size={patch}", f"text_encoder={text_dir}",
            f"experiment.input_resolution=[{resolution[0]}, {resolution[1]}]", "text_num_hidden_layers=4",
            "text_fusion_start_at=2", "model.embed_dim=16", "model.resume=", "device=cpu"]
    return load_config(None, [*base, *overrides])


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
