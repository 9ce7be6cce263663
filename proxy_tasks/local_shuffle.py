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
3. A shuffled cell's voxel (z, y, x) takes the value of (pi(z), sigma(y), tau(x)), three uniform
   random permutations of the cell's z, y and x segments: tau one per cell, sigma one per column
   x of the cell, pi one per pillar (y, x). This is a permutation of the cell (solve for x, then
   y, then z) in which each voxel's source is uniform over the cell -- the same law as the
   reference's source voxel -- so the fraction of moved voxels and the displacement distribution
   match the reference (the tests check both against a loop implementation).

Speed: each source coordinate depends only on the voxel's own coordinates, so the flat source
index is a sum of three terms, each along an x row a row of a small table (x: pooled partitions
with ``variants`` permutations; y and z: tables of per-column permutations), and the values move
in one gather (the cost of a shuffle is one gather, four row copies and five elementwise passes
of the batch). z and y partitions are drawn per sample and per plane; the x partitions come from
a pool shared by the batch (``pool_size`` partitions, ``variants`` permutations each), so two
cells share their x permutation with probability about 1 / (pool_size * variants), and y / z
column tables are shared likewise (1 in ``variants / 4 * w``); the law of every voxel's source is
unaffected. Permutations of a segment of length ``L <= 7`` come from a table of all ``m!``
permutations (indexed by a random integer), so no sort is needed; longer windows (cubes above 79
voxels a side) fall back to sorting random keys.

2D batches (Genesis 2D) are their depth-1 view: the cells are rectangles of the slice, with the
reference 2D windows' laws (an axis of size 1 is covered by every window).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Any

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


def _column_permutations(
    count: int, width: int, m: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """(count, m (m + 1) / 2, width) tables of random segment permutations, one per column.

    Row ``L (L - 1) / 2 + o`` of table ``u`` holds, in column ``x``, the offset ``pi(o)`` that a
    uniform random permutation ``pi`` of ``range(L)`` (drawn for ``(u, x)``) sends offset ``o`` to.
    Each column draws one id ``k`` in ``[0, m!)`` and reads the ``k mod L!``-th permutation of
    every length ``L`` (one draw serves all lengths; a segment only ever uses one of them).
    """
    lengths, offsets = _length_offset_rows(m, str(device))
    if m <= _TABLE_MAX:
        table, _, perm_start = _perm_table(m, device)
        k = torch.randint(math.factorial(m), (count, 1, width), generator=generator, device=device)
        entry = perm_start.index_select(0, (k * (m + 1) + lengths).view(-1)).view(count, -1, width)
        return table.index_select(0, entry.add_(offsets).view(-1)).view(count, -1, width)
    parts = []  # long segments: sort random keys, one permutation per (table, column, length)
    for length in range(1, m + 1):
        keys = torch.rand(count, width, length, generator=generator, device=device)
        parts.append(torch.argsort(keys, dim=2).transpose(1, 2))
    return torch.cat(parts, dim=1)


@lru_cache(maxsize=32)
def _length_offset_rows(m: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, 1) segment length and offset of each row ``L (L - 1) / 2 + o`` of a column table (constants)."""
    lengths = torch.cat([torch.full((length,), length) for length in range(1, m + 1)])
    offsets = torch.cat([torch.arange(length) for length in range(1, m + 1)])
    return lengths[:, None].to(device), offsets[:, None].to(device)


def _column_rows(table: torch.Tensor, w: int):
    """Rows of ``w`` columns of column tables ``table`` (count, T, 2 w) and the function that maps
    (pick in ``[0, count * w)``, segment length, offset) to the row to read: table ``pick // w``,
    from column ``pick % w`` (a random shift that multiplies the variants by ``w``)."""
    t = table.shape[1]
    flat = table.reshape(-1)
    # overlapping rows: row r is flat[r : r + w], so a row can start at any column
    rows = flat.as_strided((flat.numel() - w + 1, w), (1, 1))

    def first(pick: torch.Tensor, length: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        u, shift = pick // w, pick % w
        return (u * t + length * (length - 1) // 2 + offset) * (2 * w) + shift

    return rows, first


@register_task("local_shuffle")
class LocalShuffle(ProxyTask):
    """Shuffle voxels inside small random boxes; exact permutation per sample.

    Args:
        prob: probability that a sample is transformed (reference ``local_rate`` 0.5).
        num_windows: number of reference windows whose coverage is reproduced (reference 10,000).
        max_side_divisor: window sides are ``1..max(1, dim // max_side_divisor)`` (reference 10).
        pool_size: x partitions drawn per batch; each (slab, bar) picks one at random.
        variants: independent permutations drawn per pooled x partition, and per-column
            permutation tables for y and z. Pooling only correlates cells (two share a
            permutation with probability 1/variants or less); every voxel's source stays
            uniform over its cell.
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
        self._cover_cache: dict[tuple, Any] = {}  # per-shape constants (instance-level: no global state)
        self._workspace = Workspace()

    def max_sides(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(max(1, d // self.max_side_divisor) for d in spatial)

    @dimension_agnostic
    def transform(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Shuffle every sample of ``batch`` (B, C, D, H, W) or (B, C, H, W); all channels get the same permutation."""
        n, c = batch.shape[:2]
        shuffled, weight = self._shuffle(batch.contiguous(), generator)
        out = torch.empty_like(batch, memory_format=torch.contiguous_format)
        return torch.lerp(batch, shuffled.transpose(0, 1).view(batch.shape), weight, out=out)

    @dimension_agnostic
    def transform_(
        self, batch: torch.Tensor, generator: torch.Generator | None = None, rows: list[int] | None = None
    ) -> torch.Tensor:
        """Shuffle the samples ``rows`` of ``batch`` in place (default: all); returns ``batch``.

        Same random draws as :meth:`transform` on ``batch[rows]``; the result is written straight
        into the rows, without a sub-batch round trip.
        """
        rows = list(range(batch.shape[0])) if rows is None else rows
        if not batch.is_contiguous():
            batch.copy_(self.transform_(batch.contiguous(), generator, rows))
            return batch
        shuffled, weight = self._shuffle(batch, generator, rows)
        for j, row in enumerate(rows):
            # lerp reads and writes each voxel at the same place, so writing into ``batch`` is safe
            torch.lerp(batch[row], shuffled[:, j].view(batch.shape[1:]), weight[j], out=batch[row])
        return batch

    def _shuffle(
        self, batch: torch.Tensor, generator: torch.Generator | None, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shuffled samples ``rows`` of the contiguous ``batch`` (default: all), (C, len(rows), D*H*W),
        and the 0/1 weight of the shuffled cells, (len(rows), 1, D, H, W) (workspace tensors: use them at once)."""
        _, c, d, h, w = batch.shape
        rows = list(range(batch.shape[0])) if rows is None else rows
        n, dev, dhw = len(rows), batch.device, d * h * w
        mz, my, mx = self.max_sides((d, h, w))
        pool, variants = self.pool_size, self.variants
        ws = self._workspace

        def randint(high: int, shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randint(high, shape, generator=generator, device=dev)

        # Partitions: per sample for z; pools shared by the batch for y (partitions) and x
        # (partitions with ``variants`` segment permutations each), which the slabs and bars pick.
        zstart, zsize = _partition(_draw_lengths(n, d, mz, generator, dev), d)  # (n, d) each
        ystart, ysize = _partition(_draw_lengths(n * d, h, my, generator, dev), h)  # (n d, h) each
        xstart, xsrc = _pool_permutations(pool, w, mx, variants, generator, dev)  # (P, w), (P, V, w)

        # guillotine partition: each z slab has its y partition (drawn per plane, read at the
        # slab's first plane), each (slab, y bar) picks an x partition from the pool; a value
        # drawn per position and read at the start of its slab / bar is one per slab / bar
        slab_first = zstart[:, :, None].expand(n, d, h)
        ystart_zy = ystart.view(n, d, h).gather(1, slab_first)  # bar start per (z, y)
        ysize_zy = ysize.view(n, d, h).gather(1, slab_first)
        bar = (zstart[:, :, None] * h + ystart_zy).view(n, d * h)  # flat (slab start, bar start)
        pick_x = randint(pool, (n, d * h)).gather(1, bar).view(n, d, h)

        # The source of voxel (z, y, x) of a cell is (pi(z), sigma(y), tau(x)), with tau one
        # permutation of the cell's x segment, sigma one permutation of its y segment per column x,
        # pi one permutation of its z segment per pillar (y, x): a bijection of the cell (solve for
        # x, then y, then z), and each source coordinate is uniform over the cell's side. Each term
        # is, along a row (z, y, .), a row of a small table: the index is three row copies and two
        # additions, and the values move in one gather.
        itype = torch.int32 if batch.numel() < 2**31 else torch.int64
        index = ws.get("index", (n * d * h, w), itype, dev)
        line_x = pick_x * variants + randint(variants, (n, d * h)).gather(1, bar).view(n, d, h)
        torch.index_select(xsrc.reshape(-1, w).to(itype), 0, line_x.view(-1), out=index)
        term = ws.get("term", (n * d * h, w), itype, dev)
        # y and z tables are twice as wide as a row; a line reads ``w`` columns from a random
        # shift (one per slab and bar / slab and y), which multiplies the variants by ``w``
        # one table of column permutations serves y and z (lines pick independent tables/shifts)
        tables = max(1, variants // 4)  # the random shift already multiplies the variants by ``w``
        table = _column_permutations(tables, 2 * w, max(my, mz if d > 1 else 1), generator, dev).to(itype)
        y_rows, first = _column_rows(table * w, w)
        line_y = randint(tables * w, (n, d * h)).gather(1, bar).view(n, d, h)
        line_y = first(line_y, ysize_zy, self._arange(h, dev) - ystart_zy)
        index.add_(torch.index_select(y_rows, 0, line_y.view(-1), out=term))
        if d > 1:  # slices (2D) have nothing to shuffle along depth
            z_rows, first = _column_rows(table * (h * w), w)
            line_z = randint(tables * w, (n, d, h)).gather(1, zstart[:, :, None].expand(n, d, h))
            line_z = first(line_z, zsize[:, :, None], (self._arange(d, dev) - zstart)[:, :, None])
            index.add_(torch.index_select(z_rows, 0, line_z.view(-1), out=term))
        # flat start of each line's slab and bar (and of its sample in ``batch``)
        rows_t = torch.tensor(rows, device=dev, dtype=torch.int64) * (c * dhw)
        line_base = rows_t[:, None, None] + zstart[:, :, None] * (h * w) + ystart_zy * w
        index.add_(line_base.view(-1, 1).to(itype))

        flat = batch.view(-1)
        shuffled = ws.get("shuffled", (c, n, dhw), batch.dtype, dev)
        for ch in range(c):  # channel ``ch`` of every sample: the same index, shifted by ``ch * dhw``
            torch.index_select(flat[ch * dhw :], 0, index.view(-1), out=shuffled[ch].view(-1))

        # Which cells are shuffled: the reference covers a voxel Poisson(lam) times,
        # lam = num_windows * c_z * c_y * c_x (c: per-axis chance that one window covers it; the
        # Poisson law differs from the exact binomial by < pi/2 ~ 1e-4 relative). A cell is shuffled
        # iff E < lam at its first voxel, E ~ Exp(1) per cell. E / (num_windows * c_x) is tabulated
        # per pooled x partition (``variants`` tables each), and each bar picks a table.
        cover = self._axis_cover((d, h, w), dev)
        e = -torch.log1p(-torch.rand(pool, variants, w, generator=generator, device=dev, dtype=torch.float64))
        xs_v = xstart[:, None, :].expand(-1, variants, -1)
        scaled = (e.gather(2, xs_v) / (self.num_windows * cover[2][xs_v])).to(torch.float32)
        pick_e = randint(variants, (n, d * h)).gather(1, bar).view(n, d, h)
        scaled = torch.index_select(
            scaled.view(-1, w), 0, (pick_x * variants + pick_e).view(-1), out=ws.get("scaled", (n * d * h, w), torch.float32, dev)
        ).view(n, 1, d, h, w)
        zy = (cover[0][zstart][:, :, None] * cover[1][ystart_zy]).to(torch.float32).view(n, 1, d, h, 1)
        # 0/1 weight (1 = shuffled cell), written by the comparison itself; lerp with it is exact
        # and several times faster than torch.where with a boolean mask on the CPU
        weight = torch.lt(scaled, zy, out=ws.get("weight", (n, 1, d, h, w), batch.dtype, dev))
        return shuffled, weight

    def _arange(self, k: int, device: torch.device) -> torch.Tensor:
        """``torch.arange(k)`` on ``device`` (cached: a constant)."""
        key = ("arange", k, str(device))
        if key not in self._cover_cache:
            self._cover_cache[key] = torch.arange(k, device=device)
        return self._cover_cache[key]

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
