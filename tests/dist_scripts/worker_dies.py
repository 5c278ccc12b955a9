"""Run under torchrun (2 processes, gloo): rank 1 dies by SIGKILL while rank 0 waits in a collective."""
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from utils.distributed import get_rank, init_distributed  # noqa: E402

init_distributed("cpu", "gloo")
x = torch.ones(1)
dist.all_reduce(x)  # both alive here
print(f"rank {get_rank()} ready", flush=True)
if get_rank() == 1:
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
while True:  # rank 0 would block here forever without torchrun's failure handling
    dist.all_reduce(x)
    time.sleep(0.01)
