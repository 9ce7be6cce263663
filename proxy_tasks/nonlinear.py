"""Non-linear intensity transformation of Models Genesis (appearance): a random monotonic Bezier map.

Zhou et al. 2021 (Models Genesis, MedIA), section 2.2: intensities are mapped through a cubic Bezier
curve ``B(s) = (1-s)^3 P0 + 3s(1-s)^2 P1 + 3s^2(1-s) P2 + s^3 P3`` with ``P0 = (0, 0)``,
``P3 = (1, 1)`` and two control points ``P1, P2`` uniform in [0, 1)^2. With control points in the
unit square both coordinates ``X(s)`` and ``Y(s)`` are non-decreasing, so the map is monotonic and
every intensity stays distinguishable (the network can learn to invert it).

Direction ("decreasing half the time"): the reference samples the curve, then with probability 0.5
sorts only the x samples (``xvals = np.sort(xvals)``, leaving ``yvals`` in curve order), otherwise
sorts both. Because the reference evaluates the curve backwards (``s = 1 - t``), sorting x alone
pairs ``X(s)`` with ``Y(1 - s)``: the decreasing map is ``f(X(s)) = Y(1 - s)`` (f(0) = 1, f(1) = 0),
which is what :func:`bezier_lut` builds when ``decreasing`` is True. Sorting both gives the
increasing map ``f(X(s)) = Y(s)``.

Speed: the reference samples 100,000 curve points and calls ``np.interp`` per voxel. Here each
sample's map is tabulated once on a uniform intensity grid (``lut_size`` = 4,096 entries,
interpolated from ``curve_points`` curve samples like ``np.interp`` does) and read with linear
interpolation. For cubes the table is first refined 16 times (one small matrix product: 65,521
entries against 131,072 voxels of a 64x64x32 cube) and each voxel reads its nearest entry: one
rounded index and one table read per voxel, no search and no per-voxel interpolation; samples
smaller than the refined table (2D slices) interpolate per voxel. On contiguous float32/64 CPU
batches (``use_kernels``) the table is built in float64 and read in a compiled loop
(``_cpu_kernels``) that interpolates every voxel linearly (no refined table, no rounding of the
position; 2x faster per call at batch 6). Tests bound the deviation from the 100,000-point
``np.interp`` reference and from the exact Bezier map.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from proxy_tasks import _cpu_kernels
from proxy_tasks._genesis_common import Workspace, check_prob, dimension_agnostic, run_with_prob
from proxy_tasks.base import ProxyPair, ProxyTask, register_task


@lru_cache(maxsize=16)
def _bezier_basis(n: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, n) weights of P1 and P2 and (n,) weight of P3 at ``s = linspace(0, 1, n)`` (constants, cached)."""
    s = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    r = 1.0 - s
    basis = torch.stack([3.0 * s * r * r, 3.0 * s * s * r])
    return basis.to(device=device, dtype=dtype), (s * s * s).to(device=device, dtype=dtype)


@lru_cache(maxsize=16)
def _grid(n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """(n,) ``linspace(0, 1, n)`` (a constant, cached)."""
    return torch.linspace(0.0, 1.0, n, dtype=dtype, device=device)


def bezier_xy(points: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample cubic Bezier curves with P0 = (0, 0), P3 = (1, 1) at ``n`` uniform parameters.

    Args:
        points: (B, 2, 2) control points ``[[x1, y1], [x2, y2]]`` per sample.
        n: number of parameter values ``s = linspace(0, 1, n)``.

    Returns:
        ``(X, Y)``, each (B, n), non-decreasing in ``s`` for control points in the unit square.
    """
    basis, end = _bezier_basis(n, points.dtype, str(points.device))  # P0 = (0, 0) adds nothing
    x = torch.addmm(end, points[:, :, 0], basis)  # (B, n)
    y = torch.addmm(end, points[:, :, 1], basis)
    # rounding can break monotonicity by an ulp; the interpolation below needs sorted x
    return torch.cummax(x, dim=1).values, torch.cummax(y, dim=1).values


def bezier_lut(points: torch.Tensor, decreasing: torch.Tensor, lut_size: int, curve_points: int) -> torch.Tensor:
    """Tabulate each sample's intensity map on ``lut_size`` uniform intensities in [0, 1].

    Args:
        points: (B, 2, 2) control points.
        decreasing: (B,) bool, True for the inverted map ``f(X(s)) = Y(1 - s)``.
        lut_size: number of table entries (>= 2).
        curve_points: number of curve samples the table is interpolated from.

    Returns:
        (B, lut_size) table ``f(j / (lut_size - 1))``.
    """
    xs, ys = bezier_xy(points, curve_points)
    ys = torch.where(decreasing[:, None], ys.flip(1), ys)
    n = points.shape[0]
    grid = _grid(lut_size, points.dtype, str(points.device)).expand(n, -1)
    # np.interp semantics: the right neighbour of grid value j/(K-1) is the first curve sample with
    # x > j/(K-1), i.e. the number of samples with ceil(x * (K-1)) <= j: a histogram and a cumsum
    # (ten times faster than searchsorted here).
    bins = torch.ceil(xs * (lut_size - 1)).long().clamp_(0, lut_size)
    counts = torch.zeros(n, lut_size + 1, dtype=torch.long, device=points.device)
    counts.scatter_add_(1, bins, torch.ones_like(bins))
    hi = counts.cumsum(1)[:, :lut_size].clamp_(1, curve_points - 1)
    lo = hi - 1
    x0, x1 = xs.gather(1, lo), xs.gather(1, hi)
    y0, y1 = ys.gather(1, lo), ys.gather(1, hi)
    w = ((grid - x0) / (x1 - x0).clamp_min(torch.finfo(xs.dtype).tiny)).clamp(0.0, 1.0)
    return y0 + w * (y1 - y0)


@lru_cache(maxsize=16)
def _refine_coef(factor: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """(2, factor) ``[[1, ...], [0, 1/factor, ...]]`` (a constant, cached)."""
    return torch.stack([torch.ones(factor), torch.arange(factor) / factor]).to(device=device, dtype=dtype)


def refine_lut(lut: torch.Tensor, factor: int, workspace: Workspace | None = None) -> torch.Tensor:
    """Subdivide each interval of the tables ``lut`` (B, K) into ``factor`` linearly interpolated steps.

    Returns (B, (K - 1) * factor + 1): entry ``j`` is the value at ``j / factor`` in units of the
    input table, so a nearest-entry read of the refined table is linear interpolation in ``lut``
    with the position rounded to ``1 / factor`` of an interval.

    One small matrix product ``[value, step] @ [[1, ...], [0, 1/factor, ...]]`` writes all entries
    (a broadcast ``lerp`` is several times slower on the CPU: its inner loop is only ``factor`` long).
    """
    n, k = lut.shape
    if factor == 1:
        return lut
    shape = (n, k * factor)  # interval k - 1 is a padding block holding f(1)
    fine = workspace.get("fine_lut", shape, lut.dtype, lut.device) if workspace is not None else torch.empty(
        shape, dtype=lut.dtype, device=lut.device
    )
    step = torch.zeros_like(lut)
    torch.sub(lut[:, 1:], lut[:, :-1], out=step[:, :-1])
    coef = _refine_coef(factor, lut.dtype, str(lut.device))
    torch.mm(torch.stack([lut, step], -1).view(n * k, 2), coef, out=fine.view(n * k, factor))
    return fine[:, : (k - 1) * factor + 1]


def apply_lut(
    batch: torch.Tensor,
    lut: torch.Tensor,
    workspace: Workspace | None = None,
    rows: list[int] | None = None,
    refine: int = 16,
) -> torch.Tensor:
    """Map intensities in [0, 1] of ``batch`` (B, ...) through per-sample tables ``lut`` (B, K) with
    linear interpolation (values outside [0, 1] are clamped to the ends of the table).

    Samples with at least as many voxels as a refined table (``(K - 1) refine + 1`` entries) read
    the nearest entry of the table refined ``refine`` times (:func:`refine_lut`): one rounded
    index and one table read per voxel, linear interpolation with the position rounded to
    ``1 / refine`` of an interval (within ``slope / (2 refine (K - 1))``). Smaller samples (2D
    slices) interpolate per voxel: two table reads, no table as large as the sample.

    With ``rows`` (one per table), the samples ``batch[rows]`` are mapped in place and ``batch``
    is returned; otherwise a new tensor.
    """
    n, k = lut.shape
    ws = workspace or Workspace()
    m = batch[0].numel()
    dt, dev = lut.dtype, lut.device
    sources = [batch[r].reshape(-1) for r in rows] if rows is not None else list(batch.reshape(n, -1))
    fine = refine_lut(lut, refine, ws) if refine > 1 and m >= (k - 1) * refine + 1 else None
    table = fine if fine is not None else lut
    size = table.shape[1]
    pos = ws.get("pos", (n, m), dt, dev)
    # position in table units (+ 0.5 for the nearest entry: truncation below rounds), clamped
    offset = torch.tensor(0.5 if fine is not None else 0.0, dtype=dt, device=dev)
    for j, flat in enumerate(sources):
        if flat.dtype == dt:
            torch.add(offset, flat, alpha=size - 1, out=pos[j])
        else:  # e.g. float16 batches: positions computed in the table's precision
            torch.add(offset, pos[j].copy_(flat), alpha=size - 1, out=pos[j])
    pos.clamp_(0.0, size - 1 + float(offset))
    # int32 indices (index_select takes int32: half the memory traffic of int64), one table per row
    index = ws.get("index", (n, m), torch.int32, dev).copy_(pos)  # truncation = floor here
    in_place = rows is not None and batch.dtype == dt and all(batch[r].is_contiguous() for r in rows)
    out = batch if in_place else torch.empty((n, m), dtype=dt, device=dev)
    if fine is None:
        step = torch.zeros_like(lut)
        torch.sub(lut[:, 1:], lut[:, :-1], out=step[:, :-1])  # f(1) has slope 0: x = 1 reads lut[K - 1]
        frac = torch.frac(pos, out=pos)
        step_at = ws.get("step_at", (m,), dt, dev)
    for j in range(n):
        dest = out[rows[j]].view(-1) if in_place else out[j]
        torch.index_select(table[j], 0, index[j], out=dest)
        if fine is None:
            dest.addcmul_(frac[j], torch.index_select(step[j], 0, index[j], out=step_at))
    if in_place:
        return batch
    out = out.view(n, *batch.shape[1:]).to(batch.dtype)
    if rows is None:
        return out
    for j, r in enumerate(rows):
        batch[r] = out[j]
    return batch


@register_task("nonlinear")
class NonLinear(ProxyTask):
    """Random monotonic Bezier intensity mapping, decreasing with probability ``decreasing_prob``.

    Args:
        prob: probability that a sample is transformed (reference ``nonlinear_rate`` 0.9).
        decreasing_prob: probability of the inverted (decreasing) map (reference 0.5).
        lut_size: entries of the per-sample table interpolated from the curve.
        curve_points: curve samples the table is built from (reference: 100,000 for ``np.interp``).
        refine: for samples of at least ``(lut_size - 1) refine + 1`` voxels the table is refined
            ``refine`` times by linear interpolation and read at the nearest entry (16: 65,521
            entries, within 7.6e-6 x slope of interpolating the table); smaller samples are
            interpolated per voxel.
        use_kernels: on contiguous float32/64 CPU batches, read the table in one compiled loop
            (``_cpu_kernels``, numba) that interpolates per voxel (no refined table): the same
            draws, several times faster. False forces the torch path.
    """

    kind = "restoration"
    paper = "Zhou et al. 2021 (Models Genesis)"
    loss_region = "all"
    spatial_dims = None  # 2D batches are transformed as a depth-1 view (Genesis 2D)

    def __init__(
        self,
        prob: float = 0.9,
        decreasing_prob: float = 0.5,
        lut_size: int = 4096,
        curve_points: int = 4096,
        refine: int = 16,
        use_kernels: bool = True,
    ) -> None:
        self.prob = check_prob(prob, "prob", "nonlinear")
        self.decreasing_prob = check_prob(decreasing_prob, "decreasing_prob", "nonlinear")
        if lut_size < 2 or curve_points < 2 or refine < 1:
            raise ValueError(
                f"nonlinear: need lut_size, curve_points >= 2 and refine >= 1, got {lut_size}, {curve_points}, {refine}"
            )
        self.lut_size = int(lut_size)
        self.curve_points = int(curve_points)
        self.refine = int(refine)
        self.use_kernels = bool(use_kernels)
        self._workspace = Workspace()

    def sample_curves(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` curves: control points (n, 2, 2) uniform in [0, 1) and (n,) bool decreasing flags."""
        points = torch.rand(n, 2, 2, generator=generator, device=device, dtype=torch.float64)
        decreasing = torch.rand(n, generator=generator, device=device, dtype=torch.float64) < self.decreasing_prob
        return points, decreasing

    def apply(self, batch: torch.Tensor, points: torch.Tensor, decreasing: torch.Tensor) -> torch.Tensor:
        """Map ``batch`` (B, C, ...) through the given curves (one per sample); ``batch`` is not modified."""
        if self.use_kernels and _cpu_kernels.usable(batch):
            rows = list(range(batch.shape[0]))
            return self.apply_(batch.clone(memory_format=torch.contiguous_format), rows, points, decreasing)
        return apply_lut(batch, self._tables(points, decreasing, batch.dtype), self._workspace, refine=self.refine)

    def apply_(
        self, batch: torch.Tensor, rows: list[int], points: torch.Tensor, decreasing: torch.Tensor
    ) -> torch.Tensor:
        """Map the samples ``rows`` of ``batch`` in place through the given curves (one per row); returns ``batch``."""
        if self.use_kernels and _cpu_kernels.usable(batch):
            lut = _cpu_kernels.bezier_tables(points, decreasing, self.lut_size, self.curve_points)
            _cpu_kernels.lut_rows_(batch, rows, lut.to(batch.dtype))
            return batch
        apply_lut(batch, self._tables(points, decreasing, batch.dtype), self._workspace, rows=rows, refine=self.refine)
        return batch

    def _tables(self, points: torch.Tensor, decreasing: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The torch path's tables, in float64 for float64 batches and float32 otherwise."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        return bezier_lut(points.to(work), decreasing, self.lut_size, self.curve_points)

    @dimension_agnostic
    def transform(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply a freshly drawn curve to every sample of ``batch``."""
        points, decreasing = self.sample_curves(batch.shape[0], generator, batch.device)
        return self.apply(batch, points, decreasing)

    @dimension_agnostic
    def transform_(
        self, batch: torch.Tensor, generator: torch.Generator | None = None, rows: list[int] | None = None
    ) -> torch.Tensor:
        """Map the samples ``rows`` of ``batch`` in place (default: all); same draws as :meth:`transform`."""
        rows = list(range(batch.shape[0])) if rows is None else rows
        points, decreasing = self.sample_curves(len(rows), generator, batch.device)
        return self.apply_(batch, rows, points, decreasing)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        return run_with_prob("nonlinear", batch, self.prob, generator, self.transform)
