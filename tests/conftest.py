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
