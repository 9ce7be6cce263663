"""Local pixel shuffling: exact permutation, and the reference's statistics (loop implementation here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import proxy_tasks
from proxy_tasks.local_shuffle import axis_cover_probability

SHAPE = (32, 64, 64)  # the Models Genesis cube (D, H, W)


def _loop_reference_source(shape, rng: np.random.Generator, num_windows: int = 10000) -> np.ndarray:
    """The reference loop on an index volume: for each voxel, the flat index of the voxel it copies.

    Like the reference, each window is a random permutation of the *original* window written over
    the output, so the last window covering a voxel decides its source.
    """
    d, h, w = shape
    orig = np.arange(d * h * w).reshape(shape)
    out = orig.copy()
    for _ in range(num_windows):
        sd, sh, sw = (int(rng.integers(1, s // 10 + 1)) for s in shape)
        z, y, x = int(rng.integers(0, d - sd + 1)), int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        window = orig[z : z + sd, y : y + sh, x : x + sw].flatten()
        rng.shuffle(window)
        out[z : z + sd, y : y + sh, x : x + sw] = window.reshape(sd, sh, sw)
    return out.reshape(-1)


def _ours_source(shape, n: int, seed: int) -> np.ndarray:
    count = int(np.prod(shape))
    index = (torch.arange(count, dtype=torch.float64) / count).view(1, 1, *shape).expand(n, 1, *shape).contiguous()
    out = proxy_tasks.build("local_shuffle", prob=1.0)(index, generator=torch.Generator().manual_seed(seed)).input
    return (out.view(n, -1) * count).round().long().numpy()


def _stats(sources: np.ndarray, shape) -> dict[str, np.ndarray | float]:
    own = np.arange(int(np.prod(shape)))
    src = np.stack(np.unravel_index(sources.reshape(-1), shape))
    dst = np.stack(np.unravel_index(np.tile(own, sources.size // own.size), shape))
    moved = sources.reshape(-1) != np.tile(own, sources.size // own.size)
    disp = np.abs(src - dst)[:, moved]
    return {"moved": moved.mean(), "disp": disp}


@pytest.fixture(scope="module")
def reference_stats():
    rng = np.random.default_rng(0)
    return _stats(np.stack([_loop_reference_source(SHAPE, rng) for _ in range(2)]), SHAPE)


@pytest.fixture(scope="module")
def ours_stats():
    return _stats(_ours_source(SHAPE, 16, seed=0), SHAPE)  # many samples: each has one z partition


def test_exact_permutation_per_sample_same_for_all_channels() -> None:
    count = int(np.prod(SHAPE))
    batch = torch.rand(3, 2, *SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batch[:, 1] = (torch.arange(count, dtype=torch.float64) / count).view(SHAPE)  # channel 1 tracks sources
    out = proxy_tasks.build("local_shuffle", prob=1.0)(batch, generator=torch.Generator().manual_seed(2)).input
    for i in range(3):
        assert torch.equal(out[i, 0].flatten().sort().values, batch[i, 0].flatten().sort().values)
        src = (out[i, 1].flatten() * count).round().long()
        assert torch.equal(out[i, 0].flatten(), batch[i, 0].flatten()[src])
        assert (src != torch.arange(count)).any()


def test_fraction_of_moved_voxels_matches_reference(reference_stats, ours_stats) -> None:
    assert abs(ours_stats["moved"] - reference_stats["moved"]) < 0.02


def test_displacement_distribution_matches_reference(reference_stats, ours_stats) -> None:
    for axis, side in enumerate(SHAPE):
        m = side // 10
        ref = np.bincount(reference_stats["disp"][axis], minlength=m) / reference_stats["disp"].shape[1]
        ours = np.bincount(ours_stats["disp"][axis], minlength=m) / ours_stats["disp"].shape[1]
        assert len(ours) == m  # never further than the largest window allows
        assert 0.5 * np.abs(ref - ours).sum() < 0.025, (axis, ref, ours)  # total variation distance


def test_coverage_probability_is_the_reference_law() -> None:
    """axis_cover_probability against counting the windows that cover each position."""
    n, m = 12, 3
    counts = np.zeros(n)
    for length in range(1, m + 1):
        for start in range(n - length + 1):
            counts[start : start + length] += 1.0 / (n - length + 1) / m
    assert np.allclose(axis_cover_probability(n, m), counts)


def test_long_windows_use_the_sorting_path_and_stay_a_permutation() -> None:
    # max side 16 // 2 = 8 > 7: segments are permuted by sorting random keys instead of the table
    batch = torch.rand(2, 1, 16, 16, 20, generator=torch.Generator().manual_seed(4))
    task = proxy_tasks.build("local_shuffle", prob=1.0, max_side_divisor=2)
    out = task(batch, generator=torch.Generator().manual_seed(5)).input
    for i in range(2):
        assert torch.equal(out[i].flatten().sort().values, batch[i].flatten().sort().values)
    assert not torch.equal(out, batch)
