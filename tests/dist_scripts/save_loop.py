"""Write checkpoints in a loop with save_atomic (the parent SIGKILLs this process mid-write)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from utils.checkpoint import save_atomic  # noqa: E402

path = sys.argv[1]
version = 0
while True:
    version += 1
    save_atomic({"version": version, "weights": torch.full((4_000_000,), float(version))}, path)
    print(version, flush=True)
