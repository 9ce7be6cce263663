"""Loop implementation of the Models Genesis transforms, as the published code runs them.

A numpy port of the per-sample Python loops of the reference implementation (Zhou et al. 2021,
github.com/MrGiovanni/ModelsGenesis, ``utils.py``: ``nonlinear_transformation``,
``local_pixel_shuffling``, ``image_in_painting``, ``image_out_painting``, ``data_augmentation`` and
the ``generate_pair`` composition), written here only as the speed baseline for
``bench_proxy_transforms.py``. Same algorithms, same constants, same per-sample loops; randomness
comes from explicit ``random.Random`` / ``numpy.random.RandomState`` objects instead of the global
generators. Arrays are one sample ``(C, D, H, W)`` in [0, 1]; the reference's axis order differs
(rows, cols, deps) but every loop treats the three axes alike.
"""

from __future__ import annotations

import random

import numpy as np
from scipy.special import comb


def bezier_curve(points: list[list[float]], n_times: int = 100000) -> tuple[np.ndarray, np.ndarray]:
    """Curve samples of the Bernstein form used by the reference (parameter runs from P3 to P0)."""
    n = len(points) - 1
    t = np.linspace(0.0, 1.0, n_times)
    basis = np.array([comb(n, i) * t ** (n - i) * (1 - t) ** i for i in range(n + 1)])
    xs = np.array([p[0] for p in points]) @ basis
    ys = np.array([p[1] for p in points]) @ basis
    return xs, ys


def nonlinear(x: np.ndarray, rng: random.Random, prob: float = 0.5) -> np.ndarray:
    if rng.random() >= prob:
        return x
    points = [[0, 0], [rng.random(), rng.random()], [rng.random(), rng.random()], [1, 1]]
    xs, ys = bezier_curve(points, n_times=100000)
    if rng.random() < 0.5:
        xs = np.sort(xs)  # decreasing map
    else:
        xs, ys = np.sort(xs), np.sort(ys)
    return np.interp(x, xs, ys)


def local_shuffle(
    x: np.ndarray, rng: random.Random, nprng: np.random.RandomState, prob: float = 0.5, num_windows: int = 10000
) -> np.ndarray:
    if rng.random() >= prob:
        return x
    out = x.copy()
    orig = x.copy()
    _, d, h, w = x.shape
    for _ in range(num_windows):
        sd, sh, sw = rng.randint(1, d // 10), rng.randint(1, h // 10), rng.randint(1, w // 10)
        z, y, xx = rng.randint(0, d - sd), rng.randint(0, h - sh), rng.randint(0, w - sw)
        window = orig[0, z : z + sd, y : y + sh, xx : xx + sw].flatten()
        nprng.shuffle(window)
        out[0, z : z + sd, y : y + sh, xx : xx + sw] = window.reshape((sd, sh, sw))
    return out


def inner_cutout(x: np.ndarray, rng: random.Random, nprng: np.random.RandomState) -> np.ndarray:
    _, d, h, w = x.shape
    count = 5
    while count > 0 and rng.random() < 0.95:
        sd, sh, sw = rng.randint(d // 6, d // 3), rng.randint(h // 6, h // 3), rng.randint(w // 6, w // 3)
        z, y, xx = rng.randint(3, d - sd - 3), rng.randint(3, h - sh - 3), rng.randint(3, w - sw - 3)
        x[:, z : z + sd, y : y + sh, xx : xx + sw] = nprng.rand(sd, sh, sw) * 1.0
        count -= 1
    return x


def outer_cutout(x: np.ndarray, rng: random.Random, nprng: np.random.RandomState) -> np.ndarray:
    _, d, h, w = x.shape
    orig = x.copy()
    x = nprng.rand(*x.shape) * 1.0

    def keep_one() -> None:
        sd = d - rng.randint(3 * d // 7, 4 * d // 7)
        sh = h - rng.randint(3 * h // 7, 4 * h // 7)
        sw = w - rng.randint(3 * w // 7, 4 * w // 7)
        z, y, xx = rng.randint(3, d - sd - 3), rng.randint(3, h - sh - 3), rng.randint(3, w - sw - 3)
        x[:, z : z + sd, y : y + sh, xx : xx + sw] = orig[:, z : z + sd, y : y + sh, xx : xx + sw]

    keep_one()
    count = 4
    while count > 0 and rng.random() < 0.95:
        keep_one()
        count -= 1
    return x


def flip(x: np.ndarray, y: np.ndarray, rng: random.Random, prob: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Reference flip: axes drawn from {0, 1, 2} of a (C, ...) array, so axis 0 is the channel axis."""
    count = 3
    while rng.random() < prob and count > 0:
        axis = rng.choice([0, 1, 2])
        x, y = np.flip(x, axis=axis), np.flip(y, axis=axis)
        count -= 1
    return x, y


def combined(
    batch: np.ndarray, rng: random.Random, nprng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """``generate_pair`` for one batch (B, C, D, H, W) with the reference rates."""
    y = batch.copy()
    x = batch.copy()
    for i in range(batch.shape[0]):
        xi, yi = flip(x[i], y[i], rng, 0.4)
        xi = local_shuffle(xi, rng, nprng, prob=0.5)
        xi = nonlinear(xi, rng, 0.9)
        if rng.random() < 0.9:
            if rng.random() < 0.2:
                xi = inner_cutout(np.array(xi), rng, nprng)
            else:
                xi = outer_cutout(xi, rng, nprng)
        x[i], y[i] = xi, yi
    return x, y
