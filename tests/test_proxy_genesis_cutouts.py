"""Inner and outer cut-outs against loop implementations of the reference box sampling."""

from __future__ import annotations

import numpy as np
import torch

import proxy_tasks

SHAPE = (32, 64, 64)


def _loop_inner_mask(shape, rng: np.random.Generator) -> np.ndarray:
    """Reference in-painting: up to 5 boxes while random() < 0.95, sides dim//6..dim//3, 3 voxels from the border."""
    mask = np.zeros(shape, bool)
    count = 5
    while count > 0 and rng.random() < 0.95:
        size = [int(rng.integers(s // 6, s // 3 + 1)) for s in shape]
        start = [int(rng.integers(3, s - z - 3 + 1)) for s, z in zip(shape, size)]
        mask[tuple(slice(a, a + z) for a, z in zip(start, size))] = True
        count -= 1
    return mask


def _loop_outer_kept(shape, rng: np.random.Generator) -> np.ndarray:
    """Reference out-painting: one kept box, then up to 4 more while random() < 0.95."""
    kept = np.zeros(shape, bool)

    def one() -> None:
        size = [s - int(rng.integers(3 * s // 7, 4 * s // 7 + 1)) for s in shape]
        start = [int(rng.integers(3, s - z - 3 + 1)) for s, z in zip(shape, size)]
        kept[tuple(slice(a, a + z) for a, z in zip(start, size))] = True

    one()
    count = 4
    while count > 0 and rng.random() < 0.95:
        one()
        count -= 1
    return kept


def _changed(name: str, n: int, seed: int) -> torch.Tensor:
    batch = torch.full((n, 1, *SHAPE), 2.0 / 3.0)  # noise never equals this value (16-bit grid)
    return proxy_tasks.build(name, prob=1.0)(batch, generator=torch.Generator().manual_seed(seed)).mask[:, 0]


def test_inner_cutout_fraction_and_border_match_reference() -> None:
    rng = np.random.default_rng(0)
    ref = np.array([_loop_inner_mask(SHAPE, rng).mean() for _ in range(300)])
    ours = _changed("inner_cutout", 150, seed=1)
    frac = ours.flatten(1).float().mean(1).numpy()
    assert abs(frac.mean() - ref.mean()) < 0.1 * ref.mean()
    assert abs((frac == 0).mean() - (ref == 0).mean()) < 0.04  # no box at all: 5% of samples
    border = torch.ones(SHAPE, dtype=torch.bool)
    border[3:-3, 3:-3, 3:-3] = False
    assert not ours[:, border].any()


def test_outer_cutout_fraction_matches_reference() -> None:
    rng = np.random.default_rng(0)
    ref = np.array([1.0 - _loop_outer_kept(SHAPE, rng).mean() for _ in range(300)])
    ours = _changed("outer_cutout", 150, seed=2)
    frac = ours.flatten(1).float().mean(1).numpy()
    assert abs(frac.mean() - ref.mean()) < 0.05 * ref.mean()
    assert abs(frac.std() - ref.std()) < 0.3 * ref.std()
    assert frac.max() < 1.0  # at least one box is always kept


def test_cutouts_fill_with_uniform_noise() -> None:
    batch = torch.zeros(4, 1, *SHAPE)
    out = proxy_tasks.build("outer_cutout", prob=1.0)(batch, generator=torch.Generator().manual_seed(3)).input
    noise = out[out > 0]
    assert noise.numel() > 0.3 * out.numel()
    assert abs(noise.mean().item() - 0.5) < 0.01 and abs(noise.var().item() - 1 / 12) < 0.005
    assert float(noise.max()) < 1.0


def test_noise_is_drawn_once_per_call_and_is_uniform_within_each_sample() -> None:
    from proxy_tasks._genesis_common import batch_noise

    gen = torch.Generator().manual_seed(4)
    noise = batch_noise(5, 20000, gen, torch.device("cpu"), torch.float32)
    assert noise.shape == (5, 20000) and float(noise.min()) > 0.0 and float(noise.max()) < 1.0
    for row in noise:  # independent uniforms within a sample
        assert abs(row.mean().item() - 0.5) < 0.01 and abs(row.var().item() - 1 / 12) < 0.003
        assert row.unique().numel() > 0.7 * row.numel()  # 16-bit values: few repeats
    assert not torch.equal(noise[0], noise[1])
    again = batch_noise(5, 20000, torch.Generator().manual_seed(4), torch.device("cpu"), torch.float32)
    assert torch.equal(noise, again)
