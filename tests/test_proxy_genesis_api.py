"""Contract of the Models Genesis transforms: registry, shapes, ranges, dtypes, seeding, prob=0."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import proxy_tasks
from proxy_tasks.base import ProxyPair

GENESIS = ("identity", "nonlinear", "local_shuffle", "inner_cutout", "outer_cutout", "combined")


def _batch(b: int = 2, shape=(16, 24, 24), seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, *shape, generator=g).to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_all_genesis_tasks_are_registered() -> None:
    assert set(GENESIS) <= set(proxy_tasks.list_tasks())


@pytest.mark.parametrize("name", GENESIS)
def test_shapes_range_dtype_and_mask(name: str) -> None:
    batch = _batch()
    pair = proxy_tasks.build(name, prob=1.0)(batch, generator=_gen())
    assert isinstance(pair, ProxyPair)
    for t in (pair.input, pair.target, pair.mask):
        assert t.shape == batch.shape
    assert pair.input.dtype == batch.dtype and pair.target.dtype == batch.dtype
    assert pair.mask.dtype == torch.bool
    assert float(pair.input.min()) >= 0.0 and float(pair.input.max()) <= 1.0
    assert torch.equal(pair.mask, pair.input != pair.target)
    if name == "identity":
        assert not pair.mask.any()
    else:
        assert pair.mask.any()


@pytest.mark.parametrize("name", GENESIS[1:])
def test_same_seed_same_result_other_seed_differs(name: str) -> None:
    batch = _batch()
    task = proxy_tasks.build(name, prob=1.0)
    a = task(batch, generator=_gen(7))
    b = task(batch, generator=_gen(7))
    c = task(batch, generator=_gen(8))
    assert torch.equal(a.input, b.input) and torch.equal(a.target, b.target)
    assert not torch.equal(a.input, c.input)


@pytest.mark.parametrize("name", GENESIS)
def test_prob_zero_is_identity(name: str) -> None:
    batch = _batch()
    pair = proxy_tasks.build(name, prob=0.0)(batch, generator=_gen())
    assert torch.equal(pair.input, batch) and torch.equal(pair.target, batch)
    assert not pair.mask.any()


@pytest.mark.parametrize("name", ("nonlinear", "local_shuffle", "inner_cutout", "outer_cutout"))
def test_each_sample_gets_its_own_parameters(name: str) -> None:
    one = _batch(1)
    batch = one.expand(4, -1, -1, -1, -1).contiguous()  # four copies of the same cube
    out = proxy_tasks.build(name, prob=1.0)(batch, generator=_gen(3)).input
    assert len({out[i].numpy().tobytes() for i in range(4)}) == 4


@pytest.mark.parametrize("name", ("nonlinear", "local_shuffle", "outer_cutout"))
def test_prob_selects_about_that_share_of_samples(name: str) -> None:
    batch = _batch(150, shape=(20, 20, 20))  # sides >= 20 so that local shuffle windows exceed 1 voxel
    pair = proxy_tasks.build(name, prob=0.3)(batch, generator=_gen(5))
    changed = pair.mask.flatten(1).any(1).float().mean().item()
    assert abs(changed - 0.3) < 0.1


@pytest.mark.parametrize("dtype", (torch.float64, torch.float16))
@pytest.mark.parametrize("name", GENESIS[1:])
def test_dtype_preserved(name: str, dtype: torch.dtype) -> None:
    batch = _batch(dtype=dtype)
    pair = proxy_tasks.build(name, prob=1.0)(batch, generator=_gen())
    assert pair.input.dtype == dtype and pair.target.dtype == dtype


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="nonlinear"):
        proxy_tasks.build("nonlinear", prob=1.5)
    with pytest.raises(ValueError, match="local_shuffle"):
        proxy_tasks.build("local_shuffle")(torch.rand(2, 1, 8), generator=_gen())  # 1D: neither 2D nor 3D
    with pytest.raises(ValueError, match="combined"):
        proxy_tasks.build("combined", flip_axes=(3,))


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(GENESIS),
    b=st.integers(1, 3),
    c=st.integers(1, 2),
    d=st.integers(4, 20),
    h=st.integers(4, 24),
    w=st.integers(4, 24),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_any_shape(name: str, b: int, c: int, d: int, h: int, w: int, seed: int) -> None:
    batch = torch.rand(b, c, d, h, w, generator=_gen(seed))
    pair = proxy_tasks.build(name, prob=1.0)(batch, generator=_gen(seed))
    assert pair.input.shape == batch.shape and pair.target.shape == batch.shape and pair.mask.shape == batch.shape
    assert float(pair.input.min()) >= 0.0 and float(pair.input.max()) <= 1.0
    if name == "local_shuffle":  # a permutation of each sample, the same one for every channel
        for i in range(b):
            assert torch.equal(pair.input[i].flatten().sort().values, batch[i].flatten().sort().values)


@pytest.mark.parametrize("name", ("nonlinear", "local_shuffle", "inner_cutout", "outer_cutout"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
def test_in_place_rows_match_the_sub_batch_transform(name: str, dtype: torch.dtype) -> None:
    """``transform_(batch, g, rows)`` (used by ``combined``) = ``transform(batch[rows], g)``, others untouched."""
    batch = _batch(b=5, dtype=dtype)
    task = proxy_tasks.build(name, prob=1.0)
    rows = [1, 3, 4]
    expected = task.transform(batch[rows], _gen(7))
    out = task.transform_(batch.clone(), _gen(7), rows)
    assert torch.equal(out[rows], expected)
    assert torch.equal(out[[0, 2]], batch[[0, 2]])


def test_restoration_mask_is_computed_on_first_read_and_behaves_like_a_field() -> None:
    import dataclasses
    import pickle

    from proxy_tasks._genesis_common import restoration_pair

    target = torch.rand(2, 1, 4, 4, 4, generator=_gen(1))
    changed = target.clone()
    changed[0, 0, 1, 2, 3] = 2.0
    pair = restoration_pair(changed, target)
    assert vars(pair).get("_mask") is None  # nothing computed yet
    assert torch.equal(pair.mask, changed != target) and int(pair.mask.sum()) == 1
    assert torch.equal(pickle.loads(pickle.dumps(restoration_pair(changed, target))).mask, pair.mask)
    assert torch.equal(dataclasses.replace(pair, label=None).mask, pair.mask)
    pair.mask = None
    assert pair.mask is None
