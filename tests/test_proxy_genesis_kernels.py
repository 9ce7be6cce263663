"""The compiled CPU loops (``proxy_tasks._cpu_kernels``) against the torch path they replace.

Both paths read the same draws from the generator, so the local shuffle, the out-painting and the
flips of the combined scheme must agree bit for bit; the non-linear map interpolates its table per
voxel on the compiled path and is checked against ``np.interp`` of the same table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import proxy_tasks
from proxy_tasks import _cpu_kernels
from proxy_tasks.nonlinear import bezier_lut

pytestmark = pytest.mark.skipif(not _cpu_kernels.available(), reason="numba is not installed")

# windows have sides up to a tenth of the axis: every shape has an axis of 20 voxels or more
SHAPES = [(4, 1, 16, 24, 40), (3, 2, 9, 22, 25), (5, 1, 1, 32, 48), (2, 1, 3, 5, 24)]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(name: str, **kwargs) -> tuple:
    return (
        proxy_tasks.build(name, use_kernels=True, **kwargs),
        proxy_tasks.build(name, use_kernels=False, **kwargs),
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["local_shuffle", "outer_cutout"])
@pytest.mark.parametrize("rows", [None, [0, 1]])
def test_compiled_path_is_bit_identical(name: str, shape: tuple[int, ...], rows: list[int] | None) -> None:
    compiled, plain = _pair(name, prob=1.0)
    batch = torch.rand(shape, generator=_gen(1))
    a, b = batch.clone(), batch.clone()
    compiled.transform_(a, _gen(2), rows)
    plain.transform_(b, _gen(2), rows)
    assert torch.equal(a, b)
    assert not torch.equal(a, batch)  # something was transformed
    if rows is not None:  # the other samples are untouched
        assert torch.equal(a[2:], batch[2:])
    assert torch.equal(compiled.transform(batch, _gen(3)), plain.transform(batch, _gen(3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_local_shuffle_plans_agree_and_the_sample_stays_a_permutation(dtype: torch.dtype) -> None:
    compiled, plain = _pair("local_shuffle", prob=1.0)
    for shape in SHAPES:
        a = compiled.plan(shape, shape[0], _gen(5), torch.device("cpu"))
        b = plain.plan(shape, shape[0], _gen(5), torch.device("cpu"))
        for field, x, y in zip(a._fields, a, b):
            assert x.shape == y.shape and torch.equal(x, y), field
    batch = torch.randn(3, 2, 12, 20, 30, dtype=dtype, generator=_gen(6))
    batch[:, 1] = batch[:, 0] * 2 + 1
    out = compiled.transform(batch, _gen(7))
    assert not torch.equal(out, batch)
    assert torch.equal(torch.sort(out.flatten(1)).values, torch.sort(batch.flatten(1)).values)
    assert torch.equal(out[:, 1], out[:, 0] * 2 + 1)  # every channel gets the same permutation


def test_local_shuffle_with_long_windows_lays_out_in_torch_and_shuffles_in_the_loop() -> None:
    compiled, plain = _pair("local_shuffle", prob=1.0, max_side_divisor=2)  # windows up to 10 > 7 voxels
    batch = torch.rand(2, 1, 8, 20, 20, generator=_gen(8))
    a = compiled.transform(batch, _gen(9))
    assert torch.equal(a, plain.transform(batch, _gen(9)))
    assert torch.equal(torch.sort(a.flatten(1)).values, torch.sort(batch.flatten(1)).values)


def test_nonlinear_tables_match_the_torch_tables() -> None:
    points = torch.rand(32, 2, 2, generator=_gen(10), dtype=torch.float64)
    decreasing = torch.arange(32) % 3 == 0
    ours = _cpu_kernels.bezier_tables(points, decreasing, 4096, 4096)
    assert ours.dtype == torch.float64
    assert torch.allclose(ours, bezier_lut(points, decreasing, 4096, 4096), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nonlinear_loop_interpolates_the_table_like_np_interp(dtype: torch.dtype) -> None:
    compiled, plain = _pair("nonlinear", prob=1.0)
    x = np.concatenate([np.linspace(-0.2, 1.2, 5001), np.random.default_rng(0).random(3000)])
    batch = torch.tensor(x, dtype=dtype).view(1, 1, 1, 1, -1).repeat(6, 1, 1, 1, 1)
    points = torch.rand(6, 2, 2, generator=_gen(11), dtype=torch.float64)
    decreasing = torch.tensor([True, False] * 3)
    ours = compiled.apply(batch, points, decreasing).view(6, -1).double().numpy()
    tables = bezier_lut(points, decreasing, 4096, 4096).numpy()
    grid = np.linspace(0.0, 1.0, 4096)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-12
    for i in range(6):
        table = tables[i].astype(np.float32).astype(np.float64) if dtype == torch.float32 else tables[i]
        assert np.abs(ours[i] - np.interp(x, grid, table)).max() < tolerance
    # the torch path reads a 16 times refined table at the nearest entry: the same map up to that rounding
    theirs = plain.apply(batch, points, decreasing).view(6, -1).double().numpy()
    assert np.abs(ours - theirs).max() < 5e-3 and np.median(np.abs(ours - theirs)) < 1e-5


def test_nonlinear_loop_keeps_nan_and_writes_only_its_rows() -> None:
    task = proxy_tasks.build("nonlinear", prob=1.0)
    batch = torch.rand(3, 1, 4, 5, 6, generator=_gen(12))
    batch[1, 0, 0, 0, :3] = torch.tensor([float("nan"), -1.0, 2.0])
    before = batch.clone()
    task.transform_(batch, _gen(13), [1])
    assert torch.isnan(batch[1, 0, 0, 0, 0]) and batch[1, 0, 0, 0, 1:3].isfinite().all()
    assert torch.equal(batch[0], before[0]) and torch.equal(batch[2], before[2])


@pytest.mark.parametrize("shape", [(6, 1, 16, 24, 40), (5, 1, 32, 48), (4, 2, 8, 12, 10)])
def test_combined_compiled_path_matches_the_torch_path(shape: tuple[int, ...]) -> None:
    compiled, plain = _pair("combined")
    batch = torch.rand(shape, generator=_gen(14))
    a, b = compiled(batch, _gen(15)), plain(batch, _gen(15))
    assert torch.equal(a.target, b.target)  # the flips
    draws = compiled.last_draws
    assert torch.equal(draws["nonlinear"], plain.last_draws["nonlinear"])
    same = ~draws["nonlinear"]  # without the non-linear map everything else is bit-identical
    assert torch.equal(a.input[same], b.input[same])
    assert (a.input - b.input).abs().max() < 5e-3
    assert torch.equal(a.mask, a.input != a.target)


def test_without_numba_the_torch_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = torch.rand(3, 1, 8, 12, 16, generator=_gen(16))
    expected = proxy_tasks.build("combined", use_kernels=False)(batch, _gen(17))
    monkeypatch.setattr(_cpu_kernels, "numba", None)
    assert not _cpu_kernels.available() and not _cpu_kernels.usable(batch)
    got = proxy_tasks.build("combined")(batch, _gen(17))
    assert torch.equal(got.input, expected.input) and torch.equal(got.target, expected.target)


def test_the_loops_are_used_only_where_they_apply() -> None:
    batch = torch.rand(2, 1, 4, 6, 8)
    assert _cpu_kernels.usable(batch)
    assert not _cpu_kernels.usable(batch.half())
    assert not _cpu_kernels.usable(batch.transpose(3, 4))  # not contiguous
    assert not _cpu_kernels.usable(batch.clone().requires_grad_())
    task = proxy_tasks.build("combined")
    for variant in (batch.half(), batch.transpose(3, 4)):  # these take the torch path and still work
        pair = task(variant, _gen(18))
        assert pair.input.shape == variant.shape and pair.input.dtype == variant.dtype
