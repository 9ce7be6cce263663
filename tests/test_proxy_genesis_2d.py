"""Models Genesis transforms on 2D batches (B, C, H, W): Genesis 2D (Zhou et al. 2021) on slices.

Each transform runs on the depth-1 view of a 2D batch, so a 2D batch gives exactly the pair of
its depth-1 3D view with the same generator (checked below). The one exception is the combined
scheme's flip draw: with its default ``flip_axes=(0, 1, 2)`` a 3D batch spends a third of its flip
draws on the depth axis (a no-op on one slice), while a 2D batch draws H or W only, as Genesis
2D does; so 2D equals 3D depth-1 only with the 3D flip axes restricted to ``(1, 2)``.
"""

from __future__ import annotations

import pytest
import torch

import proxy_tasks

SINGLE = ("nonlinear", "local_shuffle", "inner_cutout", "outer_cutout")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _slices(b: int = 3, c: int = 1, h: int = 40, w: int = 48, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=_gen(seed)).to(dtype)


@pytest.mark.parametrize("name", SINGLE + ("combined",))
def test_tasks_declare_2d_and_3d(name: str) -> None:
    assert proxy_tasks.TASKS.get(name).spatial_dims is None  # the engine feeds slices for --dims 2


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("name", SINGLE + ("combined",))
def test_2d_shapes_range_dtype_device_and_seeding(name: str, dtype: torch.dtype) -> None:
    batch = _slices(dtype=dtype)
    task = proxy_tasks.build(name, prob=1.0)
    pair = task(batch, generator=_gen(5))
    for t in (pair.input, pair.target, pair.mask):
        assert t.shape == batch.shape and t.device == batch.device
    assert pair.input.dtype == dtype and pair.target.dtype == dtype
    assert float(pair.input.min()) >= 0.0 and float(pair.input.max()) <= 1.0
    assert torch.equal(pair.mask, pair.input != pair.target) and pair.mask.any()
    again = task(batch, generator=_gen(5))
    assert torch.equal(pair.input, again.input) and torch.equal(pair.target, again.target)
    assert not torch.equal(pair.input, task(batch, generator=_gen(6)).input)


@pytest.mark.parametrize("name", SINGLE)
def test_2d_equals_the_3d_transform_on_depth_1(name: str) -> None:
    batch = _slices(b=4, c=2)
    task = proxy_tasks.build(name, prob=0.7)
    flat = task(batch, generator=_gen(11))
    deep = task(batch.unsqueeze(2), generator=_gen(11))
    assert torch.equal(flat.input, deep.input.squeeze(2)) and torch.equal(flat.mask, deep.mask.squeeze(2))
    rows = [0, 2]  # the in-place form used by ``combined``
    expected = task.transform(batch[rows], _gen(3))
    out = task.transform_(batch.clone(), _gen(3), rows)
    assert out.shape == batch.shape and torch.equal(out[rows], expected) and torch.equal(out[[1, 3]], batch[[1, 3]])


def test_2d_combined_equals_3d_depth_1_with_in_plane_flips() -> None:
    batch = _slices(b=16)
    flat = proxy_tasks.build("combined")(batch, generator=_gen(4))
    deep = proxy_tasks.build("combined", flip_axes=(1, 2))(batch.unsqueeze(2), generator=_gen(4))
    assert torch.equal(flat.input, deep.input.squeeze(2)) and torch.equal(flat.target, deep.target.squeeze(2))


def test_2d_combined_flips_h_and_w_with_the_reference_rates() -> None:
    task = proxy_tasks.build("combined")
    draws = task.draw(20000, _gen(0), torch.device("cpu"), spatial_dims=2)
    assert not draws["flip_d"].any()
    p = 0.4  # k ~ truncated geometric(0.4) flips, each over one of 2 axes: P(odd count of one axis)
    pk = [1 - p, p * (1 - p), p * p * (1 - p), p**3]
    odd = [0.0, 1 / 2, 1 / 2, 1 / 2]
    expected = sum(a * b for a, b in zip(pk, odd))
    for axis in ("flip_h", "flip_w"):
        assert abs(draws[axis].double().mean().item() - expected) < 0.015
    assert abs(draws["local_shuffle"].double().mean().item() - 0.5) < 0.015  # same rates as 3D
    pair = task(_slices(b=8), generator=_gen(1))
    for i in range(8):  # the target is the flipped slice
        expected_t = _slices(b=8)[i]
        if task.last_draws["flip_h"][i]:
            expected_t = expected_t.flip(1)
        if task.last_draws["flip_w"][i]:
            expected_t = expected_t.flip(2)
        assert torch.equal(pair.target[i], expected_t)


def test_2d_local_shuffle_is_a_permutation_in_small_windows() -> None:
    batch = _slices(b=2, h=64, w=64)
    out = proxy_tasks.build("local_shuffle", prob=1.0)(batch, generator=_gen(2)).input
    for i in range(2):
        assert torch.equal(out[i].flatten().sort().values, batch[i].flatten().sort().values)
    assert (out != batch).float().mean() > 0.5


def test_2d_cutouts_keep_the_border() -> None:
    batch = torch.full((32, 1, 40, 40), 2.0 / 3.0)  # noise never equals this value
    mask = proxy_tasks.build("inner_cutout", prob=1.0)(batch, generator=_gen(3)).mask[:, 0]
    border = torch.ones(40, 40, dtype=torch.bool)
    border[3:-3, 3:-3] = False
    assert mask.any() and not mask[:, border].any()
    kept = ~proxy_tasks.build("outer_cutout", prob=1.0)(batch, generator=_gen(3)).mask[:, 0]
    assert kept.flatten(1).any(1).all()  # a box of the original is always kept
