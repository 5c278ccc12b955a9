"""Fixtures shared by the test modules, registered here once: a test asks for one by name.

What they are built with, which tests may also call directly: tests/data_fixtures.py (the
synthetic datasets), tests/model_fixtures.py (text encoder folders, the tiny config,
batches), tests/engine_fixtures.py (main.py in a subprocess), tests/retrieval_fixtures.py
(the briefly trained retrieval model).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.data_fixtures import make_synthetic
from tests.model_fixtures import write_text_dir
from tests.retrieval_fixtures import TrainedRun, train


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's in-process model calls: tiny tensors gain nothing
    from threads, and on a shared machine waiting at every op for a descheduled second
    thread made such tests 10-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> Callable[[str], Path]:
    """``synthetic(variant)``: the folder of a variant of ``data_fixtures.SYNTHETIC``, generated
    once per session. Tests read it; one that changes files works on a copy."""
    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in made:
            made[variant] = make_synthetic(tmp_path_factory.mktemp(f"synthetic_{variant}"), variant)
        return made[variant]

    return get


@pytest.fixture(scope="session")
def synthetic_root(synthetic) -> Path:
    """The "small" variant of the data tests: 4 train / 1 val / 3 test people x 2 views."""
    return synthetic("small")


@pytest.fixture(scope="session")
def tiny_data(synthetic) -> Path:
    """The "engine" variant main.py trains on: 12 train / 4 val / 6 test people x 3 views."""
    return synthetic("engine")


@pytest.fixture(scope="session")
def tokenizer(synthetic_root):
    """The tokenizer of ``synthetic_root``'s text encoder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(synthetic_root / "text_encoder"))


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenizer + tiny XLM-R config.json (no weights)."""
    return write_text_dir(tmp_path_factory.mktemp("tiny_xlmr"), tiny=True)


@pytest.fixture(scope="session")
def base_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenizer + xlm-roberta-base-shaped config.json (no weights)."""
    return write_text_dir(tmp_path_factory.mktemp("xlmr_base"), tiny=False)


@pytest.fixture(scope="session")
def trained_run(synthetic, tmp_path_factory) -> TrainedRun:
    """The tiny model main.py trains (in a subprocess) on the "retrieval" variant: see retrieval_fixtures."""
    return train(synthetic("retrieval"), tmp_path_factory.mktemp("retrieval") / "run")
