"""Masked region prediction and its curriculum (Tariq et al. 2023)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy_tasks
from proxy_tasks.masked_region import box_sides, exact_fraction


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bounding_box_volume(mask: torch.Tensor) -> int:
    """Volume of the bounding box of a single-sample mask (*spatial)."""
    idx = mask.nonzero()
    return int(math.prod((idx.max(0).values - idx.min(0).values + 1).tolist()))


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2, 0.33])
@pytest.mark.parametrize("shape", [(4, 1, 64, 64), (3, 1, 32, 64, 64)])
def test_mask_covers_the_fraction_as_one_box_inside(fraction: float, shape: tuple[int, ...]) -> None:
    batch = torch.rand(shape) * 0.9 + 0.05  # no exact zeros, so the fill is recognisable
    pair = proxy_tasks.build("masked_region", fraction=fraction)(batch, generator=_gen())
    spatial = shape[2:]
    assert pair.mask is not None and pair.mask.shape == (shape[0], 1, *spatial) and pair.mask.dtype == torch.bool
    expected = math.prod(box_sides(spatial, fraction))
    # rounding each side to whole voxels moves the fraction by at most ~ndim/side
    sides = box_sides(spatial, fraction)
    assert abs(exact_fraction(spatial, fraction) - fraction) <= fraction * len(spatial) / min(sides)
    for b in range(shape[0]):
        m = pair.mask[b, 0]
        assert int(m.sum()) == expected
        assert _bounding_box_volume(m) == expected  # one solid box, not scattered voxels
    assert torch.all(pair.input[pair.mask.expand_as(batch)] == 0)
    assert torch.equal(pair.input[~pair.mask.expand_as(batch)], batch[~pair.mask.expand_as(batch)])
    assert pair.target is batch
    assert pair.label is None


def test_square_in_2d_and_box_follows_the_aspect_ratio_in_3d() -> None:
    assert box_sides((512, 512), 0.2) == [229, 229]
    assert box_sides((32, 64, 64), 0.33) == [22, 44, 44]  # 0.33 ** (1/3) = 0.691 of each side


def test_square_aspect_on_non_square_slices() -> None:
    batch = torch.rand(2, 1, 40, 80)
    pair = proxy_tasks.build("masked_region", fraction=0.2, aspect="square")(batch, generator=_gen())
    rows, cols = pair.mask[0, 0].any(dim=1).sum(), pair.mask[0, 0].any(dim=0).sum()
    assert rows == cols == 25 and abs(exact_fraction((40, 80), 0.2, "square") - 0.2) < 0.01
    with pytest.raises(ValueError, match="aspect"):
        proxy_tasks.build("masked_region", aspect="round")


def test_positions_vary_and_reach_both_borders() -> None:
    batch = torch.rand(200, 1, 16, 16)
    mask = proxy_tasks.build("masked_region", fraction=0.25)(batch, generator=_gen(3)).mask[:, 0]
    starts = mask.any(dim=1).float().argmax(dim=1)  # first masked column per sample
    assert int(starts.min()) == 0 and int(starts.max()) == 16 - 8


def test_fill_value_and_noise() -> None:
    batch = torch.rand(2, 1, 8, 16, 16)
    pair = proxy_tasks.build("masked_region", fraction=0.1, fill=0.5)(batch, generator=_gen())
    assert torch.all(pair.input[pair.mask] == 0.5)
    noisy = proxy_tasks.build("masked_region", fraction=0.1, fill="noise")(batch, generator=_gen())
    values = noisy.input[noisy.mask]
    assert values.std() > 0.1 and values.min() >= 0 and values.max() <= 1
    with pytest.raises(ValueError):
        proxy_tasks.build("masked_region", fraction=1.5)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(4, 40), w=st.integers(4, 40), fraction=st.floats(0.02, 0.9), seed=st.integers(0, 2**31))
def test_mask_is_always_inside_and_deterministic(h: int, w: int, fraction: float, seed: int) -> None:
    batch = torch.rand(3, 1, h, w)
    task = proxy_tasks.build("masked_region", fraction=fraction)
    first = task(batch, generator=_gen(seed))
    second = task(batch, generator=_gen(seed))
    assert torch.equal(first.input, second.input) and torch.equal(first.mask, second.mask)
    assert int(first.mask[0].sum()) == math.prod(box_sides((h, w), fraction))


def test_curriculum_stages_and_current_stage() -> None:
    scheme = proxy_tasks.build("masked_curriculum")
    assert [s.fraction for s in scheme.stages] == [0.05, 0.1, 0.2, 0.33]
    batch = torch.rand(2, 1, 64, 64)
    areas = []
    for stage in range(4):
        scheme.stage = stage
        pair = scheme(batch, generator=_gen())
        areas.append(int(pair.mask[0].sum()))
        assert torch.equal(pair.mask, scheme.stages[stage](batch, generator=_gen()).mask)
    assert areas == sorted(areas) and len(set(areas)) == 4
    custom = proxy_tasks.build("masked_curriculum", fractions=(0.1, 0.2), stage=1)
    assert custom.stage == 1 and len(custom.stages) == 2
    with pytest.raises(ValueError):
        custom.stage = 2
