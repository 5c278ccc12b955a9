"""Fixtures shared by every test module."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module's in-process model calls: tiny tensors gain nothing
    from threads, and on a shared machine waiting at every op for a descheduled second
    thread made such tests 10-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
