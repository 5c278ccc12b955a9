"""torchrun-aware process-group helpers that are no-ops in a plain single process.

Upstream assumed torchrun and bound the GPU by global rank; here the device follows
LOCAL_RANK (multi-node safe) and ``python main.py`` works without any launcher.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.config import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_distributed(device: str | int = "cuda", backend: str = "nccl", timeout_s: float = 1800.0) -> DistInfo:
    """Bind the device and join the process group when torchrun started us.

    ``device`` is ``cpu``, ``cuda``, ``cuda:N`` or ``N`` (upstream's ``device: 5``). In a
    plain single process ``cuda:N`` / ``N`` pick that GPU; under torchrun every process
    takes the GPU of its LOCAL_RANK (multi-node safe) and a given number is ignored, which
    rank 0 says once. A CUDA device without a GPU falls back to the CPU with a warning.
    ``backend`` is used as given with CUDA; on CPU gloo is the only choice, so it replaces nccl.
    """
    index = device if isinstance(device, int) else int(device[5:]) if device.startswith("cuda:") else None
    want_cuda = index is not None or device == "cuda"
    use_cuda = want_cuda and torch.cuda.is_available()
    if want_cuda and not use_cuda:
        print("warning: CUDA is not available; running on the CPU", file=sys.stderr)
    if not launched_by_torchrun():
        if not use_cuda:
            return DistInfo(0, 0, 1, torch.device("cpu"))
        if index is None:
            return DistInfo(0, 0, 1, torch.device("cuda"))
        if index >= torch.cuda.device_count():
            raise ConfigError(f"key 'device': CUDA device {index} does not exist "
                              f"({torch.cuda.device_count()} visible; device numbers start at 0)")
        torch.cuda.set_device(index)
        return DistInfo(0, 0, 1, torch.device("cuda", index))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    if index is not None and use_cuda and rank == 0:
        print(f"warning: device {device!r} is ignored under torchrun: each process uses the GPU of its LOCAL_RANK",
              file=sys.stderr)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
        if backend == "nccl":
            backend = "gloo"
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s),
                                device_id=dev if use_cuda else None)
    return DistInfo(rank, local_rank, world_size, dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0, keeping the autograd graph.

    Forward: every process gets the same ``[world_size * B, ...]`` tensor, rank order.
    Backward: the gradient arriving at the gathered tensor is summed over processes
    (reduce-scatter) and each process receives the slice for its own rows. So when each
    process computes a loss over the gathered tensor, the gradient of every local row is
    the sum of all processes' contributions, exactly what one process computing the sum
    of those losses on the concatenated batch would give. DDP then averages parameter
    gradients over processes, so losses written as a mean over local rows reproduce the
    single-process mean over the global batch (``model.gather_with_grad``; upstream's
    gather is :func:`all_gather_local_grad`).
    All processes must pass tensors of the same shape.
    """
    if not is_dist():
        return x
    from torch.distributed._functional_collectives import all_gather_tensor_autograd

    return all_gather_tensor_autograd(x.contiguous(), gather_dim=0, group=dist.group.WORLD)


def all_gather_local_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0; gradient only into this process's slice.

    Upstream's gather (X-VLM ``AllGather``): the backward returns the local slice of this
    process's gradient and drops what the other processes' losses contribute, so when
    every process computes the same loss over the gathered batch and DDP averages, the
    update is that of one process scaled by 1/world_size. All processes must pass
    tensors of the same shape.
    """
    if not is_dist():
        return x
    gathered = all_gather_no_grad(x)
    start = get_rank() * x.shape[0]
    return torch.cat([gathered[:start], x, gathered[start + x.shape[0]:]])


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process along dim 0 (no gradient); sizes may differ."""
    if not is_dist():
        return x
    x = x.contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    n_max = int(max(s.item() for s in sizes))
    padded = x.new_zeros((n_max, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[: int(s.item())] for o, s in zip(out, sizes)], dim=0)


def all_gather_object(obj):
    """Gather a picklable object from every process (list in rank order)."""
    if not is_dist():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if not is_dist():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / get_world_size()


def cleanup_and_exit(code: int = 0) -> None:
    """Destroy the process group, flush streams and leave without interpreter teardown.

    A gloo group that is still alive at interpreter exit can abort the process (and so
    fail the whole torchrun job) after the work is done; ``os._exit`` after an explicit
    destroy avoids that.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - shutting down; nothing left to save
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
