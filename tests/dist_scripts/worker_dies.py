"""Run under torchrun (2 processes, gloo): rank 1 is SIGKILLed half a second after both
start working, as a worker that crashes mid-step would be.

``collective`` (argument): both run a stream of all-reduces, so rank 0 is left waiting in
one; gloo's closed-connection error or torchrun's agent ends it. ``compute``: rank 0 runs
local matrix products only, so nothing but the agent (SIGTERM) can end it. The
process-group timeout is an hour, so no collective times out within the test.
"""
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from utils.distributed import get_rank, init_distributed  # noqa: E402

init_distributed("cpu", "gloo", timeout_s=3600.0)
x = torch.ones(1_000_000)
dist.all_reduce(x)  # both alive and connected here
rank = get_rank()
print(f"rank {rank} in collectives", flush=True)


def die() -> None:
    print(f"rank 1 killed at {time.time():.3f}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if rank == 1:
    threading.Timer(0.5, die).start()
start = time.monotonic()
a = torch.randn(256, 256)
while time.monotonic() - start < 3000:
    if sys.argv[1] == "collective":
        dist.all_reduce(x)  # rank 1 dies inside (or between) these
    else:
        a = torch.tanh(a @ a)
print(f"rank {rank} still running", flush=True)
