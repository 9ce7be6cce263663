"""Registry, atomic writes, safe checkpoints, RNG capture/restore."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from genesis.errors import CheckpointError, GenesisError, UnknownNameError
from genesis.fileio import atomic_path, atomic_write_text, write_report
from genesis.registry import Registry
from genesis.rng import capture_rng_state, restore_rng_state, torch_generator
from genesis.training.checkpoint import load_checkpoint, save_checkpoint


def test_registry_lists_and_reports_unknown_names():
    reg: Registry = Registry("widget")

    @reg.register("b")
    class B:
        pass

    @reg.register()
    def a():
        return 1

    assert reg.names() == ["a", "b"] and reg.get("b") is B and "a" in reg
    with pytest.raises(UnknownNameError) as info:
        reg.get("c")
    assert "unknown widget 'c'" in str(info.value) and "a, b" in str(info.value)
    assert isinstance(info.value, GenesisError)
    with pytest.raises(ValueError):
        reg.register("a")(B)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_write_report_writes_strict_json_and_markdown(tmp_path):
    import json

    import numpy as np

    data = {"ratio": float("nan"), "speed": np.float32(1.5), "counts": [np.int64(3), float("inf")]}
    json_path, md_path = write_report(tmp_path / "results", "bench", data, "# Bench")
    assert json_path == tmp_path / "results" / "bench.json" and md_path.name == "bench.md"
    assert json.loads(json_path.read_text()) == {"ratio": None, "speed": 1.5, "counts": [3, None]}
    assert "NaN" not in json_path.read_text()
    assert md_path.read_text() == "# Bench\n"


def test_checkpoint_round_trip_and_safe_loading(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "epoch": 2, "rng": capture_rng_state({"g": torch_generator(1)})}
    path = save_checkpoint(state, tmp_path / "last.pt")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0)) and loaded["epoch"] == 2


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_checkpoint_needing_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)


def test_truncated_and_missing_checkpoints(tmp_path):
    path = save_checkpoint({"model": {"w": torch.zeros(1000)}}, tmp_path / "c.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="c.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a checkpoint\n" * 10)
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_checkpoint(text)


def test_rng_state_restores_every_stream(tmp_path):
    gen = torch_generator(7)
    state = capture_rng_state({"g": gen})
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"], {"g": gen})
    second = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=gen))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2] and torch.equal(first[3], second[3])
