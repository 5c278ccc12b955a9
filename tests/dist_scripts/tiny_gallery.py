"""Run under torchrun (2 processes, gloo): evaluate() on a gallery of one image, fewer images than processes."""
import os
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from engine.evaluate import evaluate  # noqa: E402
from utils.distributed import cleanup_and_exit, get_rank, get_world_size, init_distributed  # noqa: E402


class Stub:
    """The encoder calls evaluate() makes, on 4-value "images" and 4-token "captions"."""
    cfg = SimpleNamespace(model=SimpleNamespace(eval_amp=False), schedule=SimpleNamespace(amp="off"))

    def eval(self):
        return self

    def encode_image(self, images):
        return images[:, None, :]

    def image_feature(self, embeds):
        return F.normalize(embeds[:, 0], dim=-1)

    def encode_text(self, ids, mask):
        return F.one_hot(ids, 4).float()

    def text_feature(self, embeds, target):
        return F.normalize(embeds[:, 0], dim=-1)


init_distributed("cpu", "gloo")
assert get_world_size() == 2
data = SimpleNamespace(gallery=TensorDataset(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([0])),
                       gallery_pids=torch.tensor([7]), query_pids=torch.tensor([7, 7, 8]),
                       query_ids=torch.tensor([[0, 1], [2, 1], [0, 3]]), query_mask=torch.ones(3, 2, dtype=torch.long))
result = evaluate(Stub(), data, target=False, k_test=4, batch_size=2, rerank=False)
# one image: every query of person 7 finds it first; person 8 has none and is left out
assert result.metrics == {"R1": 100.0, "R5": 100.0, "R10": 100.0, "mAP": 100.0, "mINP": 100.0, "num_queries": 2,
                          "skipped_queries": 1}, result.metrics
assert result.stats["top"].tolist() == [[0], [0], [0]]
print(f"rank {get_rank()} ok", flush=True)
cleanup_and_exit(0)
