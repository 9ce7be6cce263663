"""benchmarks/bench_gpu.py skips cleanly (exit 0, nothing written) on a machine without CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpu.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_skips_cleanly_without_cuda(tmp_path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA device available; skipped" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
