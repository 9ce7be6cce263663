"""Shared test fixtures: real data location (skipped cleanly when absent), small torch settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_REAL = Path(os.environ.get("GENESIS_REAL_DATA", REPO.parent / "shared" / "data" / "real"))
TEST_DATA = Path(__file__).resolve().parent / "data"

# Two cores on CI: one intra-op thread per process keeps parallel DataLoader/DDP tests honest.
# OMP_NUM_THREADS also reaches subprocesses and the CLIs' --threads default (which would
# otherwise give every in-process CLI run all cores, and oversubscribe a busy machine).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real`` (or $GENESIS_REAL_DATA); the test is skipped if it is absent."""
    if not SHARED_REAL.is_dir():
        pytest.skip(f"real data not available at {SHARED_REAL}")
    return SHARED_REAL


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Small files committed under tests/data (licensed for redistribution, see its README)."""
    return TEST_DATA


@pytest.fixture(scope="session", autouse=True)
def _volume_cache_in_tmp(tmp_path_factory):
    """Tests never write the per-user volume cache (``~/.cache/genesis``): point
    ``$GENESIS_CACHE`` at a session folder unless the caller chose one."""
    if os.environ.get("GENESIS_CACHE"):
        yield
        return
    os.environ["GENESIS_CACHE"] = str(tmp_path_factory.mktemp("genesis-cache"))
    try:
        yield
    finally:
        os.environ.pop("GENESIS_CACHE", None)
