"""Non-linear (Bezier) transform against a numpy implementation of the reference algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import proxy_tasks
from proxy_tasks.nonlinear import bezier_lut


def _reference_map(x: np.ndarray, p1, p2, decreasing: bool, n_times: int = 100000) -> np.ndarray:
    """The reference: Bernstein form with the parameter running from P3 to P0, 100,000 samples, np.interp."""
    t = np.linspace(0.0, 1.0, n_times)
    pts = np.array([[0.0, 0.0], p1, p2, [1.0, 1.0]])
    basis = np.array([t**3, 3 * t**2 * (1 - t), 3 * t * (1 - t) ** 2, (1 - t) ** 3])  # comb(3, i) t^(3-i) (1-t)^i
    xs, ys = pts[:, 0] @ basis, pts[:, 1] @ basis
    if decreasing:
        xs = np.sort(xs)
    else:
        xs, ys = np.sort(xs), np.sort(ys)
    return np.interp(x, xs, ys)


def test_matches_reference_interpolation() -> None:
    task = proxy_tasks.build("nonlinear", prob=1.0)
    rng = np.random.default_rng(0)
    x = np.linspace(0.0, 1.0, 3001)
    batch = torch.tensor(x, dtype=torch.float64).view(1, 1, 1, 1, -1).expand(40, -1, -1, -1, -1).contiguous()
    points = torch.tensor(rng.random((40, 2, 2)))
    decreasing = torch.arange(40) % 2 == 1
    ours = task.apply(batch, points, decreasing).view(40, -1).numpy()
    errors = []
    for i in range(40):
        ref = _reference_map(x, points[i, 0].tolist(), points[i, 1].tolist(), bool(decreasing[i]))
        errors.append(np.abs(ours[i] - ref))
    errors = np.stack(errors)
    assert errors.max() < 5e-3  # only next to near-vertical tangents of the curve
    assert np.median(errors) < 1e-5 and errors.mean() < 1e-4


@pytest.mark.parametrize("decreasing", (False, True))
def test_monotonic_in_the_drawn_direction(decreasing: bool) -> None:
    task = proxy_tasks.build("nonlinear", prob=1.0, decreasing_prob=float(decreasing))
    x = torch.linspace(0, 1, 2000).view(1, 1, 1, 1, -1).expand(16, -1, -1, -1, -1).contiguous()
    y = task(x, generator=torch.Generator().manual_seed(1)).input.view(16, -1)
    steps = y.diff(dim=1)
    if decreasing:
        assert bool((steps <= 1e-6).all())
        assert torch.allclose(y[:, 0], torch.ones(16), atol=1e-6) and torch.allclose(y[:, -1], torch.zeros(16), atol=1e-6)
    else:
        assert bool((steps >= -1e-6).all())
        assert torch.allclose(y[:, 0], torch.zeros(16), atol=1e-6) and torch.allclose(y[:, -1], torch.ones(16), atol=1e-6)


def test_decreasing_half_the_time() -> None:
    task = proxy_tasks.build("nonlinear", prob=1.0)
    _, decreasing = task.sample_curves(4000, torch.Generator().manual_seed(2), torch.device("cpu"))
    assert abs(decreasing.double().mean().item() - 0.5) < 0.03


def test_decreasing_map_is_the_curve_read_backwards() -> None:
    """f(X(s)) = Y(1 - s): at the x of a curve point, the map takes the y of the mirrored point."""
    points = torch.tensor([[[0.2, 0.7], [0.6, 0.1]]], dtype=torch.float64)
    s = 0.3
    xs = 3 * s * (1 - s) ** 2 * 0.2 + 3 * s**2 * (1 - s) * 0.6 + s**3
    r = 1 - s
    y_back = 3 * r * (1 - r) ** 2 * 0.7 + 3 * r**2 * (1 - r) * 0.1 + r**3
    lut = bezier_lut(points, torch.tensor([True]), 100001, 100001)
    assert abs(lut[0, round(xs * 100000)].item() - y_back) < 1e-4


def _exact_map(x: np.ndarray, p1, p2, decreasing: bool) -> np.ndarray:
    """The exact Bezier map: solve X(s) = x by bisection (float64), then f = Y(s), or Y(1 - s) decreasing."""
    def bern(s, a, b):
        return 3 * s * (1 - s) ** 2 * a + 3 * s**2 * (1 - s) * b + s**3

    lo, hi = np.zeros_like(x), np.ones_like(x)
    for _ in range(40):  # s to 1e-12
        mid = (lo + hi) / 2
        below = bern(mid, p1[0], p2[0]) < x
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    s = (lo + hi) / 2
    return bern(1 - s if decreasing else s, p1[1], p2[1])


@pytest.mark.parametrize("size", (3001, 70001))
def test_4k_table_with_linear_interpolation_is_close_to_the_exact_map(size: int) -> None:
    """The 4,096-entry table read with linear interpolation, per voxel (small samples, 3,001 values) or
    through the 16x refined table (samples of at least 65,521 voxels), against the exact Bezier map
    and the 100,000-point ``np.interp`` reference."""
    n = 8
    rng = np.random.default_rng(size)
    x = np.linspace(0.0, 1.0, size)
    batch = torch.tensor(x, dtype=torch.float32).view(1, 1, 1, 1, -1).expand(n, -1, -1, -1, -1).contiguous()
    points = torch.tensor(rng.random((n, 2, 2)))
    decreasing = torch.arange(n) % 2 == 1
    ours = proxy_tasks.build("nonlinear", prob=1.0).apply(batch, points, decreasing).view(n, -1).double().numpy()
    for reference in (_exact_map, _reference_map):
        errors = np.stack([
            np.abs(ours[i] - reference(x, points[i, 0].numpy(), points[i, 1].numpy(), bool(decreasing[i])))
            for i in range(n)
        ])
        if size < 65521:  # per-voxel interpolation: float32 rounding and the table's curvature error
            assert errors.max() < 5e-4 and np.median(errors) < 1e-6
        else:  # nearest entry of the refined table: within slope / (2 * 65520) more
            assert errors.max() < 2e-3 and np.median(errors) < 1e-5 and errors.mean() < 2e-5
