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
sample's map is tabulated once on a uniform intensity grid (``lut_size`` entries, interpolated
from ``curve_points`` curve samples like ``np.interp`` does), and voxels are mapped by linear
interpolation in that table: one table read per voxel, no search. Tests bound the deviation from the
100,000-point ``np.interp`` reference.
"""

from __future__ import annotations

import torch

from proxy_tasks._genesis_common import Workspace, check_prob, run_with_prob
from proxy_tasks.base import ProxyPair, ProxyTask, register_task


def bezier_xy(points: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample cubic Bezier curves with P0 = (0, 0), P3 = (1, 1) at ``n`` uniform parameters.

    Args:
        points: (B, 2, 2) control points ``[[x1, y1], [x2, y2]]`` per sample.
        n: number of parameter values ``s = linspace(0, 1, n)``.

    Returns:
        ``(X, Y)``, each (B, n), non-decreasing in ``s`` for control points in the unit square.
    """
    s = torch.linspace(0.0, 1.0, n, device=points.device, dtype=points.dtype)
    r = 1.0 - s
    basis = torch.stack([3.0 * s * r * r, 3.0 * s * s * r])  # (2, n): weights of P1 and P2
    end = s * s * s  # weight of P3 = (1, 1); P0 = (0, 0) adds nothing
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
    grid = torch.linspace(0.0, 1.0, lut_size, device=points.device, dtype=points.dtype).expand(n, -1)
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


def apply_lut(batch: torch.Tensor, lut: torch.Tensor, workspace: Workspace | None = None) -> torch.Tensor:
    """Map intensities in [0, 1] of ``batch`` (B, ...) through per-sample tables ``lut`` (B, K).

    Linear interpolation between the two table entries around each value; values outside [0, 1]
    are clamped to the ends of the table. ``workspace`` holds reusable scratch tensors.
    """
    n, k = lut.shape
    ws = workspace or Workspace()
    m = batch[0].numel()
    # entries j and j+1 side by side as one complex number: a single int32 index_select fetches
    # both (about twice as fast on the CPU as two int64 gathers)
    pairs = torch.view_as_complex(torch.stack([lut, torch.cat([lut[:, 1:], lut[:, -1:]], 1)], -1).contiguous())
    pos = ws.get("pos", (n, m), lut.dtype, lut.device)
    torch.clamp(batch.reshape(n, -1).to(lut.dtype), 0.0, 1.0, out=pos).mul_(k - 1)
    weight = torch.frac(pos, out=ws.get("weight", (n, m), lut.dtype, lut.device))
    index = ws.get("index", (n, m), torch.int32, lut.device).copy_(pos)  # truncation = floor here
    index.add_(torch.arange(0, n * k, k, device=lut.device, dtype=torch.int32)[:, None])
    ends = ws.get("ends", (n * m,), pairs.dtype, lut.device)
    ends = torch.view_as_real(torch.index_select(pairs.view(-1), 0, index.view(-1), out=ends)).view(n, -1, 2)
    out = torch.lerp(ends[..., 0], ends[..., 1], weight)
    return out.view(batch.shape).to(batch.dtype)


@register_task("nonlinear")
class NonLinear(ProxyTask):
    """Random monotonic Bezier intensity mapping, decreasing with probability ``decreasing_prob``.

    Args:
        prob: probability that a sample is transformed (reference ``nonlinear_rate`` 0.9).
        decreasing_prob: probability of the inverted (decreasing) map (reference 0.5).
        lut_size: entries of the per-sample lookup table.
        curve_points: curve samples the table is built from (reference: 100,000 for ``np.interp``).
    """

    kind = "restoration"
    loss_region = "all"
    spatial_dims = 3

    def __init__(
        self, prob: float = 0.9, decreasing_prob: float = 0.5, lut_size: int = 4096, curve_points: int = 8192
    ) -> None:
        self.prob = check_prob(prob, "prob", "nonlinear")
        self.decreasing_prob = check_prob(decreasing_prob, "decreasing_prob", "nonlinear")
        if lut_size < 2 or curve_points < 2:
            raise ValueError(f"nonlinear: lut_size and curve_points must be >= 2, got {lut_size}, {curve_points}")
        self.lut_size = int(lut_size)
        self.curve_points = int(curve_points)
        self._workspace = Workspace()

    def sample_curves(
        self, n: int, generator: torch.Generator | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` curves: control points (n, 2, 2) uniform in [0, 1) and (n,) bool decreasing flags."""
        points = torch.rand(n, 2, 2, generator=generator, device=device, dtype=torch.float64)
        decreasing = torch.rand(n, generator=generator, device=device, dtype=torch.float64) < self.decreasing_prob
        return points, decreasing

    def apply(self, batch: torch.Tensor, points: torch.Tensor, decreasing: torch.Tensor) -> torch.Tensor:
        """Map ``batch`` (B, C, ...) through the given curves (one per sample)."""
        work = torch.float64 if batch.dtype == torch.float64 else torch.float32
        lut = bezier_lut(points.to(work), decreasing, self.lut_size, self.curve_points)
        return apply_lut(batch, lut, self._workspace)

    def transform(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply a freshly drawn curve to every sample of ``batch``."""
        points, decreasing = self.sample_curves(batch.shape[0], generator, batch.device)
        return self.apply(batch, points, decreasing)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        return run_with_prob("nonlinear", batch, self.prob, generator, self.transform)
