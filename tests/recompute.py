"""Which blocks gradient checkpointing recomputes: block calls counted in the forward pass
(with gradients) and during the backward pass, where only a checkpointed block runs again."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def blocks(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The blocks that ``model.grad_checkpointing`` checkpoints, per encoder."""
    return {"vision": list(model.vision_encoder.blocks), "text": list(model.text_encoder.encoder.layer),
            "fusion": list(model.cross_encoder.layer)}


@contextmanager
def block_calls(model: nn.Module) -> Iterator[tuple[dict[str, list[int]], dict[str, bool]]]:
    """Yields (counts, phase): ``counts[part]`` = [calls with gradients before the backward,
    calls during it]; set ``phase["backward"] = True`` just before calling ``backward()``.

    What is counted is the last linear layer of each block (the feed-forward output, which
    every block calls as a module), through its ``forward`` wrapped
    on the instance: module hooks do not fire when ``torch.utils.checkpoint`` recomputes,
    and Hugging Face layers checkpoint (and recompute) their class's ``forward``, not the
    module call, so a block-level wrapper would see only the first pass.
    """
    counts = {part: [0, 0] for part in blocks(model)}
    phase = {"backward": False}

    def counting(part: str, forward):
        def wrapped(*args, **kwargs):
            if phase["backward"]:
                counts[part][1] += 1
            elif torch.is_grad_enabled():
                counts[part][0] += 1
            return forward(*args, **kwargs)
        return wrapped

    probes = {part: [[x for x in m.modules() if isinstance(x, nn.Linear)][-1] for m in mods]
              for part, mods in blocks(model).items()}
    wrapped = [m for mods in probes.values() for m in mods]
    for part, mods in probes.items():
        for m in mods:
            m.forward = counting(part, m.forward)
    try:
        yield counts, phase
    finally:
        for m in wrapped:
            del m.forward  # back to the class's method


def assert_recomputed(counts: dict[str, list[int]], checkpointing: bool) -> None:
    """With checkpointing, every block call that kept a graph runs once more in the backward
    pass (and there are such calls in every encoder); without it, none does."""
    for part, (forward, backward) in counts.items():
        assert forward > 0, part
        assert backward == (forward if checkpointing else 0), (part, forward, backward)
