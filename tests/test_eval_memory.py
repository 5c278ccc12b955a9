"""Evaluation memory: the key/value budget is shared by a node's processes, and the --check
estimate reproduces the figures of docs/benchmarks.md and the re-ranker's real blocks."""
from __future__ import annotations

import json

import pytest
import torch

import engine.eval_memory as eval_memory
import engine.rerank as rerank
from engine.rerank import default_kv_budget, kv_blocks, kv_bytes_per_image
from model.bi_irra import BiIRRA
from tests.model_fixtures import tiny_config
from utils.config import load_config

GiB = 2**30
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("available, local, want", [
    (8 * GiB, None, 4 * GiB),  # half of what is free
    (8 * GiB, "4", 1 * GiB),  # ... shared by the node's 4 processes
    (64 * GiB, "1", 16 * GiB),  # the cap
    (64 * GiB, "4", 4 * GiB),  # the cap is the node's, shared too
])
def test_cpu_budget_is_shared_by_the_processes_of_a_node(monkeypatch, available, local, want):
    monkeypatch.setattr(rerank, "available_memory", lambda: available)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
    assert default_kv_budget(CPU) == want


def test_cuda_budget_is_per_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * GiB, 80 * GiB))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # each process has its own GPU
    assert default_kv_budget(CUDA) == 5 * GiB


@pytest.fixture
def big_gallery(tmp_path):
    """A 20,000-image x 20,000-caption test split (en and ch) of the full-size config, batch 256 (as the docs assume)."""
    entries = [{"file_path": f"{i}.jpg", "id": i // 4, "captions": ["a man in a red shirt"]} for i in range(20_000)]
    for lang in ("en", "ch"):
        (tmp_path / f"test_reid_{lang}.json").write_text(json.dumps(entries))
    return load_config("config/config.yaml", [f"anno_dir={tmp_path}", "device=cpu", "data.test_batch_size=256"])


def gib(est) -> dict[str, float]:
    return {name: round(size / GiB, 2) for name, size in est.buffers.items()}


def test_estimate_reproduces_the_documented_full_size_figures(big_gallery, monkeypatch):
    monkeypatch.setattr(eval_memory, "available_memory", lambda: 64 * GiB)
    est = eval_memory.estimate(big_gallery, processes=1, local_processes=1)
    assert (est.split, est.gallery, est.queries, est.budget, est.blocks) == ("test", 20_000, 20_000, 16 * GiB, 9)
    # docs/benchmarks.md, "Evaluation memory bound", CPU fp32 column
    assert gib(est) == {"gallery embeddings": 11.27, "gallery features": 0.02,
                        "cached image keys/values (largest block)": 16.0, "keys/values build batch": 0.28,
                        "keys/values gathered for one fusion batch": 0.29, "similarities of one query chunk": 0.1,
                        "top-k indices and ITM scores": 0.06, "open-set membership test of one query chunk": 0.02}
    assert round(est.total / GiB, 1) == 28.0
    # 4 processes on one node: a quarter of the queries each and a quarter of the budget
    four = eval_memory.estimate(big_gallery, processes=4, local_processes=4)
    assert (four.queries, four.budget, four.blocks) == (5_000, 4 * GiB, 34)


def test_estimate_under_eval_amp_on_cuda(big_gallery):
    cfg = load_config("config/config.yaml", [f"anno_dir={big_gallery.anno_dir}", "device=cuda", "model.eval_amp=true", "data.test_batch_size=256",
                                             "schedule.amp=bf16"])
    est = eval_memory.estimate(cfg, processes=1, local_processes=1)
    assert est.blocks == 5  # docs/benchmarks.md, CUDA bf16 column
    assert gib(est)["gallery embeddings"] == 5.64 and gib(est)["keys/values build batch"] == 0.87


def test_check_report_warns_when_it_does_not_fit(big_gallery, monkeypatch):
    monkeypatch.setattr(eval_memory, "available_memory", lambda: 8 * GiB)
    text = eval_memory.report(big_gallery)
    assert text.startswith("evaluation memory per process (estimate; largest set: test en, 20,000 gallery images")
    assert "  key/value cache budget 4.00 GiB per process, 34 block(s)" in text.splitlines()
    assert text.splitlines()[-1] == "warning: this is more than the 8.0 GiB of memory available now"


def test_key_value_bytes_and_blocks_are_those_of_the_reranker(tiny_text_dir, tmp_path):
    """The formula's per-image bytes and block count against the re-ranker's real cache."""
    model = BiIRRA.from_config(tiny_config(tiny_text_dir, tmp_path)).eval()
    gallery = torch.randn(10, 9, 32)  # 10 images of 1 + 8 tokens, width 32
    per_image = kv_bytes_per_image(model, 9, torch.float32)
    assert per_image == 2 * 2 * 9 * 32 * 4  # 2 fusion layers x (k, v) x tokens x width x fp32
    topk = torch.tensor([[0, 1, 2], [2, 3, 9], [4, 5, 6]])  # 8 distinct images needed
    blocks = list(kv_blocks(model, gallery, topk, 3 * per_image, batch_size=4, device=CPU))
    assert [len(ids) for ids, _ in blocks] == [3, 3, 2]  # ceil(8 / floor(B / P)) blocks of at most 3
    for ids, kv in blocks:
        assert sum(k.nbytes + v.nbytes for k, v in kv) == len(ids) * per_image
