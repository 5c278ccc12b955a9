"""The fixed-seed run of tests/golden_run.py gives the committed numbers (refactors change none)."""
from __future__ import annotations

import json

import pytest

from tests.golden_run import GOLDEN, RUNS, run_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict:
    return run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("name", list(RUNS))
def test_losses_and_weights_match_golden(fresh: dict, name: str) -> None:
    golden, got = json.loads(GOLDEN.read_text())[name], fresh[name]
    assert [s["step"] for s in got["steps"]] == [s["step"] for s in golden["steps"]]
    for g, s in zip(golden["steps"], got["steps"]):
        assert set(g) == set(s), f"step {g['step']}: logged terms {sorted(s)} != {sorted(g)}"
        for key, value in g.items():
            assert s[key] == pytest.approx(value, rel=1e-6, abs=1e-7), f"step {g['step']} {key}"
    assert set(got["weights"]) == set(golden["weights"])
    exact = sum(got["weights"][k][2] == v[2] for k, v in golden["weights"].items())
    for key, (total, squares, _) in golden["weights"].items():
        assert got["weights"][key][0] == pytest.approx(total, rel=1e-5, abs=1e-6), key
        assert got["weights"][key][1] == pytest.approx(squares, rel=1e-5, abs=1e-6), key
    print(f"{name}: {exact} of {len(golden['weights'])} tensors bit for bit equal")
