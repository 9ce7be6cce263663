"""Next slice prediction and the denoising tasks."""

from __future__ import annotations

import pytest
import torch

import proxy_tasks


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _indexed_volume(b: int, depth: int, size: int = 4) -> torch.Tensor:
    """Every slice of sample i is filled with (i * depth + z) / 1000, so a slice names itself."""
    values = torch.arange(b * depth, dtype=torch.float32).view(b, 1, depth, 1, 1) / 1000
    return values.expand(b, 1, depth, size, size).clone()


@pytest.mark.parametrize("gap", [1, 3, 5])
@pytest.mark.parametrize("slab", [1, 3])
def test_next_slice_2d_targets_slice_n_plus_gap(gap: int, slab: int) -> None:
    b, depth = 16, 12
    batch = _indexed_volume(b, depth)
    task = proxy_tasks.build("next_slice", gap=gap, slab=slab)
    pair = task(batch, generator=_gen())
    assert pair.input.shape == (b, slab, 4, 4) and pair.target.shape == (b, 1, 4, 4)
    assert task.in_channels == slab
    n = task.last_index
    for i in range(b):
        slices = (pair.input[i, :, 0, 0] * 1000).round().long() - i * depth
        assert slices.tolist() == list(range(int(n[i]) - slab + 1, int(n[i]) + 1))
        assert int((pair.target[i, 0, 0, 0] * 1000).round()) - i * depth == int(n[i]) + gap
        assert torch.equal(pair.target[i, 0], batch[i, 0, int(n[i]) + gap])
    assert int(n.min()) >= slab - 1 and int(n.max()) <= depth - 1 - gap


def test_next_slice_3d_predicts_the_next_slab() -> None:
    b, depth, slab, gap = 8, 16, 4, 3
    batch = _indexed_volume(b, depth)
    task = proxy_tasks.build("next_slice", gap=gap, slab=slab, spatial_dims_out=3)
    pair = task(batch, generator=_gen(1))
    assert pair.input.shape == (b, 1, slab, 4, 4) and pair.target.shape == (b, 1, slab, 4, 4)
    for i in range(b):
        n = int(task.last_index[i])
        assert torch.equal(pair.input[i, 0], batch[i, 0, n - slab + 1 : n + 1])
        assert torch.equal(pair.target[i, 0], batch[i, 0, n + gap : n + gap + slab])
    with pytest.raises(ValueError, match="too thin"):
        task(torch.rand(1, 1, 8, 4, 4))
    with pytest.raises(ValueError):
        task(torch.rand(1, 1, 8, 8))  # a 2D batch has no next slice


def test_next_slice_covers_every_position() -> None:
    task = proxy_tasks.build("next_slice", gap=1)
    task(torch.rand(400, 1, 6, 2, 2), generator=_gen())
    assert sorted(set(task.last_index.tolist())) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("amount, salt_ratio", [(0.5, 0.5), (0.2, 0.9)])
def test_salt_and_pepper_fraction_and_values(amount: float, salt_ratio: float) -> None:
    batch = torch.rand(4, 1, 16, 32, 32) * 0.98 + 0.01  # never exactly 0 or 1
    pair = proxy_tasks.build("denoise_sp", amount=amount, salt_ratio=salt_ratio)(batch, generator=_gen())
    corrupted = pair.mask
    assert abs(corrupted.float().mean().item() - amount) < 0.01
    assert torch.equal(pair.input[~corrupted], batch[~corrupted])
    noisy = pair.input[corrupted]
    assert torch.all((noisy == 0) | (noisy == 1))
    assert abs((noisy == 1).float().mean().item() - salt_ratio) < 0.02
    assert torch.equal(pair.target, batch)


def test_gaussian_noise_sigma_range_and_clipping() -> None:
    batch = torch.full((64, 1, 8, 16, 16), 0.5)
    task = proxy_tasks.build("denoise_gaussian")
    pair = task(batch, generator=_gen())
    sigma = task.last_sigma
    assert sigma.min() >= 0 and sigma.max() <= 0.1 and sigma.max() > 0.05
    measured = (pair.input - batch).flatten(1).std(dim=1)
    assert torch.allclose(measured, sigma, atol=0.01)
    edge = task(torch.ones(2, 1, 8, 8), generator=_gen())
    assert edge.input.max() <= 1.0 and edge.input.min() >= 0.0
    fixed = proxy_tasks.build("denoise_gaussian", sigma_range=(0.05, 0.05), clip=False)(batch, generator=_gen())
    assert abs((fixed.input - batch).std().item() - 0.05) < 0.002
