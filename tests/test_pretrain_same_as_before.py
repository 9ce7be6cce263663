"""The method core changes nothing a run computes: same seeds, same losses and weights as before.

``tests/data/golden/pretrain_before_method_core.json`` holds the per-epoch losses and per-tensor
weight sums of a few steps of five methods, written by ``tests/_golden_pretrain.py`` on the code
before the method core (commit 2987d68, one CPU thread). The same runs on today's code must give
the same numbers (bit-identical on that machine; a relative 1e-3 leaves room for another CPU's
floating-point kernels, far below what another pair, seed or initialisation changes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._golden_pretrain import CASES, run_all

GOLDEN = Path(__file__).parent / "data" / "golden" / "pretrain_before_method_core.json"


@pytest.fixture(scope="module")
def now(tmp_path_factory) -> dict:
    return run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("method", sorted(CASES))
def test_losses_and_weights_match_the_code_before_the_method_core(now: dict, method: str) -> None:
    before = json.loads(GOLDEN.read_text())[method]
    after = now[method]
    assert len(after["history"]) == len(before["history"])
    for old, new in zip(before["history"], after["history"]):
        for key, value in old.items():
            assert new[key] == pytest.approx(value, rel=1e-3, abs=1e-6), (method, key)
    assert after["weights"].keys() == before["weights"].keys()
    for name, (total, absolute) in before["weights"].items():
        assert after["weights"][name][1] == pytest.approx(absolute, rel=1e-3, abs=1e-5), (method, name)
        assert after["weights"][name][0] == pytest.approx(total, rel=1e-3, abs=1e-3 * max(absolute, 1e-3)), (method, name)
