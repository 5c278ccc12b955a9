"""Run under torchrun (2 processes, gloo): all_gather_with_grad vs one process on the concatenated batch."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from utils.distributed import all_gather_with_grad, cleanup_and_exit, get_rank, get_world_size, init_distributed  # noqa: E402


def batch(rank: int) -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(100 + rank), dtype=torch.float64)


def local_loss(local: torch.Tensor, gathered: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(local @ gathered.t(), dim=1).mean()


info = init_distributed("cpu", "gloo")
rank, world = get_rank(), get_world_size()
assert world == 2, world
x = batch(rank).requires_grad_(True)
gathered = all_gather_with_grad(x)
local_loss(x, gathered).backward()

# reference: one process, whole batch, the sum of every process's loss
full = torch.cat([batch(r) for r in range(world)]).requires_grad_(True)
total = sum(local_loss(full[3 * r:3 * r + 3], full) for r in range(world))
total.backward()
assert torch.allclose(gathered.detach(), full.detach()), "forward differs"
assert torch.allclose(x.grad, full.grad[3 * rank:3 * rank + 3], atol=1e-12), "gradient differs"
print(f"rank {rank} ok", flush=True)
cleanup_and_exit(0)
