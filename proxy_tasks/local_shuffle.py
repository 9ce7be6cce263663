"""Local pixel shuffling of Models Genesis (texture): voxels are permuted inside small windows.

Zhou et al. 2021 (Models Genesis, MedIA), section 2.3. Reference ``local_pixel_shuffling``: 10,000
times, pick a window with sides ``randint(1, dim//10)`` per axis at a uniform position, and write a
random permutation of the *original* window into the output. A voxel therefore ends up holding the
value of a uniformly random voxel of the last window that covered it, or its own value if no window
covered it (about 12% of a 64x64x32 cube).

What we do instead (vectorised, and an exact permutation of the voxels, so the intensity histogram
of every sample is preserved exactly -- the reference only preserves it approximately, since
overlapping windows can duplicate or drop values):

1. Tile the cube with non-overlapping boxes ("cells"): z is cut into slabs, each slab's y range
   into bars, each bar's x range into cells (a guillotine partition, so cell borders do not line
   up across the cube). Segment lengths along an axis of size N are drawn from ``1..m``,
   ``m = max(1, N // 10)``, with probability proportional to ``1 / (N - L + 1)``; a voxel then lies in a
   segment of length L with probability proportional to ``L / (N - L + 1)`` -- exactly the law of
   the side of the last reference window covering it (a window of side L covers a given voxel with
   probability ``L / (N - L + 1)``), so cell sides follow the reference's window sides.
2. Each cell is shuffled with the probability that the reference covers its first voxel with at
   least one window, ``1 - exp(-num_windows * c_z * c_y * c_x)`` (``c`` = per-axis chance that one
   window covers that position, border effects included; the Poisson form differs from the exact
   ``1 - (1 - c_z c_y c_x) ** num_windows`` by a relative 1e-4), and otherwise left alone.
3. A cell is shuffled by three permutations, of the x rows, then the y columns, then the z
   pillars of the cell, each drawn independently per line. The composition is a permutation of
   the cell in which each voxel's source is uniform over the cell -- the same law as the
   reference's source voxel -- so the fraction of moved voxels and the displacement distribution
   match the reference (the tests check both against a loop implementation).

Speed: partitions and segment permutations are drawn for small pools (per batch for x and y, per
sample for z); each line then only picks a pool row, and whole rows are copied. Permutations of a
segment of length ``L <= 7`` come from a table of all ``m!`` permutations (indexed by a random
integer), so no sort is needed; longer windows (cubes above 79 voxels a side) fall back to
sorting random keys. Pooling correlates lines that pick the same row (1 in ``variants``), and
samples of a batch share the x/y pools; the law of every voxel's source is unaffected.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
import torch

from proxy_tasks._genesis_common import Workspace, check_prob, dimension_agnostic, run_with_prob
from proxy_tasks.base import ProxyPair, ProxyTask, register_task

_TABLE_MAX = 7  # largest segment length served by the permutation table (7! = 5040 rows)


def axis_cover_probability(n: int, m: int) -> np.ndarray:
    """(n,) probability that one reference window covers each position of an axis of size ``n``.

    The window side is uniform in ``1..m`` and its start uniform in ``0..n-L``.
    """
    p = np.arange(n)
    total = np.zeros(n)
    for length in range(1, m + 1):
        starts = np.minimum(p, n - length) - np.maximum(0, p - length + 1) + 1
        total += np.clip(starts, 0, None) / (n - length + 1)
    return total / m


def segment_length_cdf(n: int, m: int) -> np.ndarray:
    """(m,) cumulative law of segment lengths ``1..m``, weights ``1 / (n - L + 1)`` (see module doc)."""
    weights = 1.0 / (n - np.arange(1, m + 1) + 1)
    return np.cumsum(weights) / weights.sum()


@lru_cache(maxsize=16)
def _perm_table_cpu(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All permutations of ``range(L)`` for ``L = 1..m``, concatenated: ``(table, base, start)``.

    The ``q``-th permutation of length ``L`` is ``table[base[L] + q * L : base[L] + (q + 1) * L]``.
    ``m!`` is a multiple of every ``L!``, so ``q = k mod L!`` of a uniform ``k`` in ``[0, m!)`` is
    a uniform permutation for every length ``L <= m``; ``start[k * (m + 1) + L] = base[L] +
    (k mod L!) * L`` is tabulated (integer division is slow on the CPU). Both tables are small
    (5,039 and 35,280 entries for m = 6).
    """
    parts, base, count = [], [0, 0], [1]
    for length in range(1, m + 1):
        parts.append(np.array(list(itertools.permutations(range(length))), dtype=np.int64).reshape(-1))
        base.append(base[-1] + parts[-1].size)
        count.append(math.factorial(length))
    lengths = np.arange(m + 1)
    ks = np.arange(math.factorial(m))[:, None]
    start = np.array(base[: m + 1])[None, :] + (ks % np.array(count)[None, :]) * lengths[None, :]
    return torch.from_numpy(np.concatenate(parts)), torch.tensor(base[: m + 1]), torch.from_numpy(start.reshape(-1))


_TABLES: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _perm_table(m: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    key = (m, str(device))
    if key not in _TABLES:
        _TABLES[key] = tuple(t.to(device) for t in _perm_table_cpu(m))
    return _TABLES[key]


def _partition(lengths: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut rows of length ``n`` into consecutive segments with the given lengths.

    Args:
        lengths: (R, n) positive segment lengths (more than enough to reach ``n``).

    Returns:
        ``(start, size)``, each (R, n): start and (truncated at ``n``) length of the segment of each position.
    """
    ends = lengths.cumsum(1)
    pos = torch.arange(n, device=lengths.device).expand(lengths.shape[0], -1).contiguous()
    segment = torch.searchsorted(ends, pos, right=True)  # index of the segment holding each position
    end = ends.gather(1, segment)
    start = end - lengths.gather(1, segment)
    return start, end.clamp_(max=n) - start


@lru_cache(maxsize=64)
def _length_laws_cpu(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner cut points of the segment-length law and of its size-biased version (for searchsorted)."""
    cdf = segment_length_cdf(n, m)
    weights = np.diff(cdf, prepend=0.0) * np.arange(1, m + 1)
    biased = np.cumsum(weights) / weights.sum()
    return torch.from_numpy(cdf[:-1].copy()), torch.from_numpy(biased[:-1].copy())


def _draw_lengths(rows: int, n: int, m: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(rows, n) segment lengths in ``1..m`` with the law of :func:`segment_length_cdf`, in the stationary regime.

    The first segment is the remainder of a segment that started before position 0 (length
    size-biased, cut at a uniform offset), so that position 0 is no different from any other:
    without it the first few segments of a short axis (32 voxels = ~14 segments) follow a
    different law than the reference windows.
    """
    cdf, biased = _length_laws_cpu(n, m)
    if cdf.device != torch.device(device):
        cdf, biased = cdf.to(device), biased.to(device)
    u = torch.rand(rows, n + 1, generator=generator, device=device, dtype=torch.float64)
    lengths = 1 + torch.searchsorted(cdf, u[:, :n].contiguous().view(-1), right=True).view(rows, n)
    first = 1 + torch.searchsorted(biased, u[:, 0].contiguous(), right=True)
    lengths[:, 0] = first - torch.floor(u[:, n] * first).long()  # 1..first, uniform
    return lengths


def _pool_permutations(
    rows: int, n: int, m: int, variants: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random partitions of ``rows`` lines of length ``n`` and ``variants`` segment permutations of each.

    Returns:
        ``(start, src)``: (rows, n) segment start of each position and (rows, variants, n) source
        position, a uniform random permutation of every segment, independent between variants.
    """
    start, size = _partition(_draw_lengths(rows, n, m, generator, device), n)
    start_v = start[:, None, :].expand(rows, variants, n)
    if m <= _TABLE_MAX:
        table, _, perm_start = _perm_table(m, device)
        k = torch.randint(math.factorial(m), (rows, variants, n), generator=generator, device=device)
        k = k.gather(2, start_v)  # one permutation per segment: read the id at the segment start
        offset = torch.arange(n, device=device) - start
        entry = perm_start.index_select(0, k.mul_(m + 1).add_(size[:, None, :]).view(-1))
        entry = entry.view(k.shape).add_(offset[:, None, :])
        src = table.index_select(0, entry.view(-1)).view(k.shape).add_(start_v)
    else:
        # long segments: sort random keys; a segment's keys lie in [start, start + 0.5)
        u = torch.rand(rows, variants, n, generator=generator, device=device, dtype=torch.float64)
        src = torch.argsort(start_v + 0.5 * u, dim=2)
    return start, src


@register_task("local_shuffle")
class LocalShuffle(ProxyTask):
    """Shuffle voxels inside small random boxes; exact permutation per sample.

    Args:
        prob: probability that a sample is transformed (reference ``local_rate`` 0.5).
        num_windows: number of reference windows whose coverage is reproduced (reference 10,000).
        max_side_divisor: window sides are ``1..max(1, dim // max_side_divisor)`` (reference 10).
        pool_size: y and x partitions drawn per batch; each slab and bar picks one at random.
        variants: independent permutations drawn per pooled partition; each line picks one.
            Pooling only correlates lines (two lines share a permutation with probability
            1/variants); every voxel's source stays uniform over its cell.
    """

    kind = "restoration"
    loss_region = "all"
    spatial_dims = None  # 2D batches are transformed as a depth-1 view (Genesis 2D)

    def __init__(
        self,
        prob: float = 0.5,
        num_windows: int = 10000,
        max_side_divisor: int = 10,
        pool_size: int = 16,
        variants: int = 16,
    ) -> None:
        self.prob = check_prob(prob, "prob", "local_shuffle")
        if num_windows < 0 or max_side_divisor < 1 or pool_size < 1 or variants < 1:
            raise ValueError(
                f"local_shuffle: need num_windows >= 0 and max_side_divisor, pool_size, variants >= 1, "
                f"got {num_windows}, {max_side_divisor}, {pool_size}, {variants}"
            )
        self.num_windows = int(num_windows)
        self.max_side_divisor = int(max_side_divisor)
        self.pool_size = int(pool_size)
        self.variants = int(variants)
        self._cover_cache: dict[tuple, list[torch.Tensor]] = {}
        self._bases: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._workspace = Workspace()

    def max_sides(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(max(1, d // self.max_side_divisor) for d in spatial)

    @dimension_agnostic
    def transform(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Shuffle every sample of ``batch`` (B, C, D, H, W) or (B, C, H, W); all channels get the same permutation."""
        out = torch.empty_like(batch, memory_format=torch.contiguous_format)
        shuffled, weight = self._shuffle(batch, generator)
        return torch.lerp(batch, shuffled, weight, out=out)

    @dimension_agnostic
    def transform_(
        self, batch: torch.Tensor, generator: torch.Generator | None = None, rows: list[int] | None = None
    ) -> torch.Tensor:
        """Shuffle the samples ``rows`` of ``batch`` in place (default: all); returns ``batch``.

        Same random draws as :meth:`transform` on ``batch[rows]``; the result is written straight
        into the rows, without a sub-batch round trip.
        """
        rows = list(range(batch.shape[0])) if rows is None else rows
        shuffled, weight = self._shuffle(batch, generator, rows)
        # lerp reads and writes each voxel at the same place, so writing into ``batch`` is safe
        for j, row in enumerate(rows):
            torch.lerp(batch[row], shuffled[j], weight[j], out=batch[row])
        return batch

    def _shuffle(
        self, batch: torch.Tensor, generator: torch.Generator | None, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shuffled samples ``rows`` of ``batch`` (default: all) and the 0/1 weight of the
        shuffled cells, (len(rows), C, D, H, W) each (workspace tensors: use them at once)."""
        _, c, d, h, w = batch.shape
        n = batch.shape[0] if rows is None else len(rows)
        dev = batch.device
        mz, my, mx = self.max_sides((d, h, w))
        pool, variants = self.pool_size, self.variants

        # Pools of partitions, each with ``variants`` independent segment permutations: per line
        # only a row index is computed, then whole rows are copied (cheap) instead of drawing
        # and gathering a random permutation id per voxel (expensive).
        zstart, zsrc = _pool_permutations(n, d, mz, variants, generator, dev)  # (n, d), (n, V, d)
        # the y and x pools are shared by the batch (drawing them costs as much as a sample)
        if (h, my) == (w, mx):  # one draw for both pools (the usual square cross-section)
            start, src = _pool_permutations(2 * pool, h, my, variants, generator, dev)
            (ystart, xstart), (ysrc, xsrc) = start.chunk(2), src.chunk(2)
        else:
            ystart, ysrc = _pool_permutations(pool, h, my, variants, generator, dev)  # (P, h), (P, V, h)
            xstart, xsrc = _pool_permutations(pool, w, mx, variants, generator, dev)  # (P, w), (P, V, w)

        # guillotine partition: each z slab picks a y partition, each (slab, y bar) an x partition
        zstart = zstart.view(n, d)
        pick_y = torch.randint(pool, (n, d), generator=generator, device=dev).gather(1, zstart)
        ystart_zy = ystart.index_select(0, pick_y.view(-1)).view(n, d, h)  # bar start per (z, y)
        bar = (zstart[:, :, None] * h + ystart_zy).view(n, d * h)  # flat (slab start, bar start)
        pick_x = torch.randint(pool, (n, d * h), generator=generator, device=dev).gather(1, bar).view(n, d, h)

        # The three line permutations are applied as flat int32 index_select's (about twice as
        # fast as torch.gather on the CPU, and half the index memory). Indices are absolute
        # positions in the previous step's layout: rows come out in (d, h, w) order, columns in
        # (d, w, h) order, and the pillars are indexed in (d, h, w) order so that the result is
        # contiguous again.
        ws = self._workspace
        size = n * d * h * w
        itype = torch.int32 if batch.numel() < 2**31 else torch.int64
        base_x, base_y, base_z = self._line_bases(n, d, h, w, itype, dev)
        if rows is not None and rows != list(range(n)):
            # the x step reads the chosen samples straight from ``batch``: lines of sample ``rows[j]``
            first_line = torch.tensor(rows, device=dev, dtype=itype) * (d * h * w)
            base_x = (first_line[:, None] + base_x.view(n, d * h)[:1]).view(-1, 1)
        # x rows: every (z, y) line of a bar uses the bar's partition and its own variant
        line_x = pick_x * variants + torch.randint(variants, (n, d, h), generator=generator, device=dev)
        index_x = ws.get("index_x", (n * d * h, w), itype, dev)
        torch.index_select(xsrc.view(-1, w).to(itype), 0, line_x.view(-1), out=index_x).add_(base_x)
        # y columns: every (z, x) line of a slab uses the slab's partition and its own variant
        line_y = (pick_y * variants)[:, :, None] + torch.randint(variants, (n, d, w), generator=generator, device=dev)
        index_y = ws.get("index_y", (n * d * w, h), itype, dev)
        torch.index_select((ysrc * w).view(-1, h).to(itype), 0, line_y.view(-1), out=index_y).add_(base_y)
        # z pillars: every (y, x) line uses the sample's z partition and its own variant
        variant_z = torch.randint(variants, (n, 1, h * w), generator=generator, device=dev)
        index_z = ws.get("index_z", (n, d, h * w), itype, dev)
        z_table = (zsrc * (h * w)).to(itype).transpose(1, 2).contiguous()  # (n, d, V)
        torch.gather(z_table, 2, variant_z.expand(n, d, h * w), out=index_z).add_(base_z)

        values = batch.reshape(batch.shape[0], c, -1).transpose(0, 1).reshape(c, -1)  # a view when c == 1
        dt = batch.dtype
        rows = ws.get("rows", (c, size), dt, dev)
        columns = ws.get("columns", (c, size), dt, dev)
        out = ws.get("pillars", (n, c, size // n), dt, dev)
        for ch in range(c):
            torch.index_select(values[ch], 0, index_x.view(-1), out=rows[ch])
            torch.index_select(rows[ch], 0, index_y.view(-1), out=columns[ch])
            if c == 1:
                torch.index_select(columns[ch], 0, index_z.view(-1), out=out.view(-1))
            else:
                out[:, ch] = columns[ch].index_select(0, index_z.view(-1)).view(n, -1)
        out = out.view(n, c, d, h, w)

        # Which cells are shuffled: the reference covers a voxel Poisson(lam) times,
        # lam = num_windows * c_z * c_y * c_x (c: per-axis chance that one window covers it; the
        # Poisson law differs from the exact binomial by < pi/2 ~ 1e-4 relative). A cell is shuffled
        # iff E < lam at its first voxel, E ~ Exp(1) per cell. E / (num_windows * c_x) is tabulated
        # per pooled x partition (``variants`` tables each), and each bar picks a table.
        cover = self._axis_cover((d, h, w), dev)
        e = -torch.log1p(-torch.rand(pool, variants, w, generator=generator, device=dev, dtype=torch.float64))
        xs_v = xstart[:, None, :].expand(-1, variants, -1)
        scaled = (e.gather(2, xs_v) / (self.num_windows * cover[2][xs_v])).to(torch.float32)
        pick_e = torch.randint(variants, (n, d * h), generator=generator, device=dev).gather(1, bar).view(n, d, h)
        scaled = torch.index_select(
            scaled.view(-1, w), 0, (pick_x * variants + pick_e).view(-1), out=ws.get("scaled", (n * d * h, w), torch.float32, dev)
        ).view(n, 1, d, h, w)
        zy = (cover[0][zstart][:, :, None] * cover[1][ystart_zy]).to(torch.float32).view(n, 1, d, h, 1)
        # 0/1 weight (1 = shuffled cell), written by the comparison itself; lerp with it is exact
        # and several times faster than torch.where with a boolean mask on the CPU
        weight = torch.lt(scaled, zy, out=ws.get("weight", (n, 1, d, h, w), dt, dev))
        return out, weight

    def _line_bases(
        self, n: int, d: int, h: int, w: int, itype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat offsets of the x rows, y columns and z pillars (see :meth:`_shuffle`; cached per shape)."""
        key = (n, d, h, w, itype, str(device))
        if key not in self._bases:
            def ar(k: int) -> torch.Tensor:
                return torch.arange(k, device=device, dtype=torch.int64)

            size = d * h * w
            base_x = (ar(n * d * h) * w)[:, None]  # start of line (sample, z, y) in (d, h, w) order
            base_y = ((ar(n * d) * (h * w))[:, None] + ar(w)).view(-1, 1)  # (sample, z, ., x)
            base_z = (ar(n) * size)[:, None, None] + (ar(w) * h)[None, None, :] + ar(h)[None, :, None]
            self._bases = {key: (base_x.to(itype), base_y.to(itype), base_z.view(n, 1, h * w).to(itype))}
        return self._bases[key]

    def _axis_cover(self, spatial: tuple[int, int, int], device: torch.device) -> list[torch.Tensor]:
        """Per-axis probability that one reference window covers each position (cached per shape)."""
        key = (spatial, str(device))
        if key not in self._cover_cache:
            sides = self.max_sides(spatial)
            self._cover_cache[key] = [
                torch.as_tensor(axis_cover_probability(s, m), device=device) for s, m in zip(spatial, sides)
            ]
        return self._cover_cache[key]

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        return run_with_prob("local_shuffle", batch, self.prob, generator, self.transform)
