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
with ``variants`` permutations; y and z: tables of per-column permutations). A shuffle is three
steps: :meth:`LocalShuffle.draw` draws everything random (:class:`ShuffleDraws`),
:meth:`LocalShuffle.plan` lays it out per line (sample, z, y) as rows of those tables
(:class:`ShufflePlan`), and the values move. On the GPU (or with ``use_kernels=False``) the last
two are torch ops: row copies, additions and one gather over the batch. On the CPU they are
compiled loops (``_cpu_kernels``) that read the same draws and give the same result: one pass per
sample that writes only the voxels of shuffled cells (2.3-2.9x faster per call at batch 6, see
``benchmarks/README.md``). z and y partitions are drawn per sample and per plane; the x
partitions come from a pool shared by the batch (``pool_size`` partitions, ``variants``
permutations each), so two cells share their x permutation with probability about
1 / (pool_size * variants), and y / z column tables are shared likewise (1 in
``variants / 4 * w``); the law of every voxel's source is unaffected. Permutations of a segment of length ``L <= 7`` come from a table of all ``m!``
permutations (indexed by a random integer), so no sort is needed; longer windows (cubes above 79
voxels a side) fall back to sorting random keys.

2D batches (Genesis 2D) are their depth-1 view: the cells are rectangles of the slice, with the
reference 2D windows' laws (an axis of size 1 is covered by every window).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
import torch

from proxy_tasks import _cpu_kernels
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


def _lengths(u: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """(rows, n) segment lengths in ``1..m`` with the law of :func:`segment_length_cdf`, in the
    stationary regime, from (rows, n + 1) uniforms (segment ``i`` reads ``u[:, i]``).

    The first segment is the remainder of a segment that started before position 0 (length
    size-biased, cut at a uniform offset ``u[:, n]``), so that position 0 is no different from
    any other: without it the first few segments of a short axis (32 voxels = ~14 segments)
    follow a different law than the reference windows.
    """
    rows, device = u.shape[0], u.device
    cdf, biased = _length_laws_cpu(n, m)
    if cdf.device != device:
        cdf, biased = cdf.to(device), biased.to(device)
    lengths = 1 + torch.searchsorted(cdf, u[:, :n].contiguous().view(-1), right=True).view(rows, n)
    first = 1 + torch.searchsorted(biased, u[:, 0].contiguous(), right=True)
    lengths[:, 0] = first - torch.floor(u[:, n] * first).long()  # 1..first, uniform
    return lengths


def _uniforms(rows: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """(rows, n + 1) float64 uniforms: what :func:`_lengths` needs for ``rows`` axes of size ``n``."""
    return torch.rand(rows, n + 1, generator=generator, device=device, dtype=torch.float64)


def _segment_ids(shape: tuple[int, ...], m: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Random permutation ids: int64 in ``[0, m!)`` (table permutations), or float64 sort keys when
    ``m`` is above :data:`_TABLE_MAX`."""
    if m <= _TABLE_MAX:
        return torch.randint(math.factorial(m), shape, generator=generator, device=device)
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64)


def _pool_permutations(u: torch.Tensor, ids: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random partitions of ``rows`` lines of length ``n`` and ``variants`` segment permutations of each.

    Args:
        u: (rows, n + 1) uniforms of the partitions (:func:`_uniforms`).
        ids: (rows, variants, n) permutation ids (:func:`_segment_ids`), read at segment starts.

    Returns:
        ``(start, src)``: (rows, n) segment start of each position and (rows, variants, n) source
        position, a uniform random permutation of every segment, independent between variants.
    """
    rows, variants, n = ids.shape
    device = ids.device
    start, size = _partition(_lengths(u, n, m), n)
    start_v = start[:, None, :].expand(rows, variants, n)
    if m <= _TABLE_MAX:
        table, _, perm_start = _perm_table(m, device)
        k = ids.gather(2, start_v)  # one permutation per segment: read the id at the segment start
        offset = torch.arange(n, device=device) - start
        entry = perm_start.index_select(0, k.mul_(m + 1).add_(size[:, None, :]).view(-1))
        entry = entry.view(k.shape).add_(offset[:, None, :])
        src = table.index_select(0, entry.view(-1)).view(k.shape).add_(start_v)
    else:
        # long segments: sort random keys; a segment's keys lie in [start, start + 0.5)
        src = torch.argsort(start_v + 0.5 * ids, dim=2)
    return start, src


def _column_ids(
    count: int, width: int, m: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, ...]:
    """The draws of :func:`_column_permutations`: (count, 1, width) permutation ids, or for long
    segments one (count, width, L) tensor of sort keys per length ``L``."""
    if m <= _TABLE_MAX:
        return (torch.randint(math.factorial(m), (count, 1, width), generator=generator, device=device),)
    return tuple(torch.rand(count, width, length, generator=generator, device=device) for length in range(1, m + 1))


def _column_permutations(ids: tuple[torch.Tensor, ...], m: int) -> torch.Tensor:
    """(count, m (m + 1) / 2, width) tables of random segment permutations, one per column.

    Row ``L (L - 1) / 2 + o`` of table ``u`` holds, in column ``x``, the offset ``pi(o)`` that a
    uniform random permutation ``pi`` of ``range(L)`` (drawn for ``(u, x)``) sends offset ``o`` to.
    Each column draws one id ``k`` in ``[0, m!)`` (``ids``, :func:`_column_ids`) and reads the
    ``k mod L!``-th permutation of every length ``L`` (one draw serves all lengths; a segment
    only ever uses one of them).
    """
    device = ids[0].device
    if m <= _TABLE_MAX:
        (k,) = ids
        count, _, width = k.shape
        lengths, offsets = _length_offset_rows(m, str(device))
        table, _, perm_start = _perm_table(m, device)
        entry = perm_start.index_select(0, (k * (m + 1) + lengths).view(-1)).view(count, -1, width)
        return table.index_select(0, entry.add_(offsets).view(-1)).view(count, -1, width)
    # long segments: sort random keys, one permutation per (table, column, length)
    return torch.cat([torch.argsort(keys, dim=2).transpose(1, 2) for keys in ids], dim=1)


@lru_cache(maxsize=32)
def _length_offset_rows(m: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, 1) segment length and offset of each row ``L (L - 1) / 2 + o`` of a column table (constants)."""
    lengths = torch.cat([torch.full((length,), length) for length in range(1, m + 1)])
    offsets = torch.cat([torch.arange(length) for length in range(1, m + 1)])
    return lengths[:, None].to(device), offsets[:, None].to(device)


def _column_row_start(t: int, w: int):
    """For column tables (count, ``t``, 2 w) read as overlapping rows of ``w`` columns (row ``r`` is
    ``flat[r : r + w]``): the function mapping (pick in ``[0, count * w)``, segment length, offset)
    to the row start, table ``pick // w`` from column ``pick % w`` (a random shift that
    multiplies the variants by ``w``)."""

    def first(pick: torch.Tensor, length: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        u, shift = pick // w, pick % w
        return (u * t + length * (length - 1) // 2 + offset) * (2 * w) + shift

    return first


class ShuffleDraws(NamedTuple):
    """Everything random in a local shuffle of ``n`` samples, in the order it is drawn from the
    generator (P = ``pool_size``, V = ``variants``, T = V // 4 column tables)."""

    z_uniforms: torch.Tensor  # (n, d + 1) float64: z partition of each sample (:func:`_lengths`)
    y_uniforms: torch.Tensor  # (n d, h + 1): y partition of each plane
    x_uniforms: torch.Tensor  # (P, w + 1): pooled x partitions
    x_ids: torch.Tensor  # (P, V, w): x permutation ids (:func:`_segment_ids`), read at segment starts
    pick_x: torch.Tensor  # (n, d h): pooled x partition of each bar, read at (slab start, bar start)
    variant_x: torch.Tensor  # (n, d h): its permutation variant
    column_ids: tuple[torch.Tensor, ...]  # the column permutation tables (:func:`_column_ids`)
    pick_y: torch.Tensor  # (n, d h): y table and shift of each bar, in [0, T w)
    pick_z: torch.Tensor  # (n, d, h): z table and shift of each (slab, y), read at the slab start; empty in 2D
    exp_x: torch.Tensor  # (P, V, w) float32 Exp(1), read at the x segment starts
    pick_e: torch.Tensor  # (n, d h): Exp table variant of each bar


class ShufflePlan(NamedTuple):
    """The drawn local shuffle of a batch, per line (sample, z, y) of ``w`` voxels, lines in
    sample-major order. Voxel x of line ``l`` of a shuffled cell takes its value from flat
    position ``x_table[x_line[l], x] + y_flat[y_line[l] + x] + z_flat[z_line[l] + x] + base[l]``
    of its sample (no z term in 2D: ``z_line`` empty); it is in a shuffled cell iff
    ``e_table[e_line[l], x] < zy[l]``."""

    x_table: torch.Tensor
    x_line: torch.Tensor
    y_flat: torch.Tensor
    y_line: torch.Tensor
    z_flat: torch.Tensor
    z_line: torch.Tensor
    base: torch.Tensor
    e_table: torch.Tensor
    e_line: torch.Tensor
    zy: torch.Tensor


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
        use_kernels: on the CPU, lay out the plan and move the values in compiled loops
            (``_cpu_kernels``, numba; contiguous float32/64 batches) instead of torch ops: the
            same draws and the same result, 2.3-2.9x faster. False forces the torch ops.
    """

    kind = "restoration"
    paper = "Zhou et al. 2021 (Models Genesis)"
    loss_region = "all"
    spatial_dims = None  # 2D batches are transformed as a depth-1 view (Genesis 2D)

    def __init__(
        self,
        prob: float = 0.5,
        num_windows: int = 10000,
        max_side_divisor: int = 10,
        pool_size: int = 16,
        variants: int = 16,
        use_kernels: bool = True,
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
        self.use_kernels = bool(use_kernels)
        self._cover_cache: dict[tuple, Any] = {}  # per-shape constants (instance-level: no global state)
        self._workspace = Workspace()

    def max_sides(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(max(1, d // self.max_side_divisor) for d in spatial)

    @dimension_agnostic
    def transform(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Shuffle every sample of ``batch`` (B, C, D, H, W) or (B, C, H, W); all channels get the same permutation."""
        if self.use_kernels and _cpu_kernels.usable(batch):
            return self.transform_(batch.clone(memory_format=torch.contiguous_format), generator)
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
        if self.use_kernels and _cpu_kernels.usable(batch):
            plan = self.plan(batch.shape, len(rows), generator, batch.device)
            scratch = self._workspace.get("sample", tuple(batch.shape[1:]), batch.dtype, batch.device)
            _cpu_kernels.local_shuffle_rows_(batch, rows, plan, scratch)
            return batch
        shuffled, weight = self._shuffle(batch, generator, rows)
        for j, row in enumerate(rows):
            # lerp reads and writes each voxel at the same place, so writing into ``batch`` is safe
            torch.lerp(batch[row], shuffled[:, j].view(batch.shape[1:]), weight[j], out=batch[row])
        return batch

    def draw(
        self, shape: torch.Size | tuple[int, ...], n: int, generator: torch.Generator | None, device: torch.device
    ) -> ShuffleDraws:
        """Everything random in the shuffle of ``n`` samples of a (B, C, D, H, W) ``shape``."""
        d, h, w = shape[2:]
        mz, my, mx = self.max_sides((d, h, w))
        pool, variants, tables = self.pool_size, self.variants, self._column_tables()

        def randint(high: int, size: tuple[int, ...]) -> torch.Tensor:
            return torch.randint(high, size, generator=generator, device=device)

        z_uniforms = _uniforms(n, d, generator, device)
        y_uniforms = _uniforms(n * d, h, generator, device)
        x_uniforms = _uniforms(pool, w, generator, device)
        x_ids = _segment_ids((pool, variants, w), mx, generator, device)
        pick_x = randint(pool, (n, d * h))
        variant_x = randint(variants, (n, d * h))
        column_ids = _column_ids(tables, 2 * w, self._column_side(d, h, w), generator, device)
        pick_y = randint(tables * w, (n, d * h))
        pick_z = randint(tables * w, (n, d, h)) if d > 1 else torch.zeros((0, 0, 0), dtype=torch.int64, device=device)
        # float32 (half the cost of float64): E <= 16.6, a tail of 6e-8 that no cell's rate reaches
        u = torch.rand(pool, variants, w, generator=generator, device=device)
        pick_e = randint(variants, (n, d * h))
        return ShuffleDraws(
            z_uniforms, y_uniforms, x_uniforms, x_ids, pick_x, variant_x, column_ids, pick_y, pick_z,
            -torch.log1p(-u), pick_e,
        )

    def _column_tables(self) -> int:
        # y and z column tables: the random shift of a line already multiplies them by ``w``
        return max(1, self.variants // 4)

    def _column_side(self, d: int, h: int, w: int) -> int:
        mz, my, _ = self.max_sides((d, h, w))
        return max(my, mz if d > 1 else 1)

    def plan(
        self, shape: torch.Size | tuple[int, ...], n: int, generator: torch.Generator | None, device: torch.device
    ) -> ShufflePlan:
        """Draw the shuffle of ``n`` samples of a (B, C, D, H, W) ``shape`` and lay it out as the
        per-line tables of :class:`ShufflePlan` (what is left is arithmetic per voxel).

        On the CPU with compiled loops (``use_kernels``) and segments of at most
        :data:`_TABLE_MAX` voxels the layout is one compiled loop over the lines; otherwise torch
        ops. Both read the same draws and give the same plan.
        """
        draws = self.draw(shape, n, generator, device)
        c, d, h, w = shape[1:]
        itype = torch.int32 if c * d * h * w < 2**31 else torch.int64  # positions within a sample
        cover = self._axis_cover((d, h, w), device)
        sides = (*self.max_sides((d, h, w)), self._column_side(d, h, w))
        if self.use_kernels and _cpu_kernels.available() and device.type == "cpu" and max(sides) <= _TABLE_MAX:
            tables = tuple(_perm_table(m, device) for m in sides)
            laws = tuple(_length_laws_cpu(size, m) for size, m in zip((d, h, w), sides))
            fields = _cpu_kernels.shuffle_plan(draws, (d, h, w), sides, tables, laws, cover, self.num_windows, itype)
            return ShufflePlan(*fields)
        return self._plan_torch(draws, (c, d, h, w), itype, cover)

    def _plan_torch(
        self, draws: ShuffleDraws, shape: tuple[int, int, int, int], itype: torch.dtype, cover: list[torch.Tensor]
    ) -> ShufflePlan:
        """:meth:`plan`'s layout in torch ops (any device, any segment length)."""
        c, d, h, w = shape
        n = draws.z_uniforms.shape[0]
        dev = draws.z_uniforms.device
        mz, my, mx = self.max_sides((d, h, w))
        variants = self.variants

        # Partitions: per sample for z; pools shared by the batch for y (partitions) and x
        # (partitions with ``variants`` segment permutations each), which the slabs and bars pick.
        zstart, zsize = _partition(_lengths(draws.z_uniforms, d, mz), d)  # (n, d) each
        ystart, ysize = _partition(_lengths(draws.y_uniforms, h, my), h)  # (n d, h) each
        xstart, xsrc = _pool_permutations(draws.x_uniforms, draws.x_ids, mx)  # (P, w), (P, V, w)

        # guillotine partition: each z slab has its y partition (drawn per plane, read at the
        # slab's first plane), each (slab, y bar) picks an x partition from the pool; a value
        # drawn per position and read at the start of its slab / bar is one per slab / bar
        slab_first = zstart[:, :, None].expand(n, d, h)
        ystart_zy = ystart.view(n, d, h).gather(1, slab_first)  # bar start per (z, y)
        ysize_zy = ysize.view(n, d, h).gather(1, slab_first)
        bar = (zstart[:, :, None] * h + ystart_zy).view(n, d * h)  # flat (slab start, bar start)
        pick_x = draws.pick_x.gather(1, bar).view(n, d, h)

        # The source of voxel (z, y, x) of a cell is (pi(z), sigma(y), tau(x)), with tau one
        # permutation of the cell's x segment, sigma one permutation of its y segment per column x,
        # pi one permutation of its z segment per pillar (y, x): a bijection of the cell (solve for
        # x, then y, then z), and each source coordinate is uniform over the cell's side. Each term
        # is, along a row (z, y, .), a row of a small table.
        line_x = pick_x * variants + draws.variant_x.gather(1, bar).view(n, d, h)
        # y and z tables are twice as wide as a row; a line reads ``w`` columns from a random
        # shift (one per slab and bar / slab and y), which multiplies the variants by ``w``;
        # one table of column permutations serves y and z (lines pick independent tables/shifts)
        table = _column_permutations(draws.column_ids, self._column_side(d, h, w)).to(itype)
        first = _column_row_start(table.shape[1], w)
        line_y = first(draws.pick_y.gather(1, bar).view(n, d, h), ysize_zy, self._arange(h, dev) - ystart_zy)
        line_z, z_flat = torch.zeros(0, dtype=torch.int64, device=dev), table.new_zeros(0)
        if d > 1:  # slices (2D) have nothing to shuffle along depth
            line_z = draws.pick_z.gather(1, zstart[:, :, None].expand(n, d, h))
            line_z = first(line_z, zsize[:, :, None], (self._arange(d, dev) - zstart)[:, :, None])
            z_flat = (table * (h * w)).view(-1)
        # flat start of each line's slab and bar within its sample
        base = zstart[:, :, None] * (h * w) + ystart_zy * w

        # Which cells are shuffled: the reference covers a voxel Poisson(lam) times,
        # lam = num_windows * c_z * c_y * c_x (c: per-axis chance that one window covers it; the
        # Poisson law differs from the exact binomial by < pi/2 ~ 1e-4 relative). A cell is shuffled
        # iff E < lam at its first voxel, E ~ Exp(1) per cell. E / (num_windows * c_x) is tabulated
        # per pooled x partition (``variants`` tables each), and each bar picks a table.
        xs_v = xstart[:, None, :].expand(-1, variants, -1)
        scaled = (draws.exp_x.gather(2, xs_v) / (self.num_windows * cover[2][xs_v])).to(torch.float32)
        pick_e = draws.pick_e.gather(1, bar).view(n, d, h)
        zy = (cover[0][zstart][:, :, None] * cover[1][ystart_zy]).to(torch.float32)
        return ShufflePlan(
            x_table=xsrc.reshape(-1, w).to(itype),
            x_line=line_x.reshape(-1),
            y_flat=(table * w).view(-1),
            y_line=line_y.reshape(-1),
            z_flat=z_flat,
            z_line=line_z.reshape(-1),
            base=base.reshape(-1),
            e_table=scaled.view(-1, w),
            e_line=(pick_x * variants + pick_e).reshape(-1),
            zy=zy.reshape(-1),
        )

    def _shuffle(
        self, batch: torch.Tensor, generator: torch.Generator | None, rows: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shuffled samples ``rows`` of the contiguous ``batch`` (default: all), (C, len(rows), D*H*W),
        and the 0/1 weight of the shuffled cells, (len(rows), 1, D, H, W) (workspace tensors: use them at once).

        The torch form of the plan: the flat source index is built along each row from row
        copies of the small tables (three row copies and three additions), and the values move in
        one gather.
        """
        _, c, d, h, w = batch.shape
        rows = list(range(batch.shape[0])) if rows is None else rows
        n, dev, dhw = len(rows), batch.device, d * h * w
        plan = self.plan(batch.shape, n, generator, dev)
        ws = self._workspace
        itype = torch.int32 if batch.numel() < 2**31 else torch.int64  # positions within the batch
        index = ws.get("index", (n * d * h, w), itype, dev)
        term = ws.get("term", (n * d * h, w), itype, dev)
        torch.index_select(plan.x_table.to(itype), 0, plan.x_line, out=index)
        for flat, line in ((plan.y_flat, plan.y_line), (plan.z_flat, plan.z_line)):
            if line.numel():
                # overlapping rows: row r is flat[r : r + w], so a row can start at any column
                flat = flat.to(itype)
                table_rows = flat.as_strided((flat.numel() - w + 1, w), (1, 1))
                index.add_(torch.index_select(table_rows, 0, line, out=term))
        rows_t = torch.tensor(rows, device=dev, dtype=torch.int64) * (c * dhw)
        index.add_((rows_t[:, None] + plan.base.view(n, -1)).view(-1, 1).to(itype))

        flat = batch.view(-1)
        shuffled = ws.get("shuffled", (c, n, dhw), batch.dtype, dev)
        for ch in range(c):  # channel ``ch`` of every sample: the same index, shifted by ``ch * dhw``
            torch.index_select(flat[ch * dhw :], 0, index.view(-1), out=shuffled[ch].view(-1))
        scaled = torch.index_select(
            plan.e_table, 0, plan.e_line, out=ws.get("scaled", (n * d * h, w), torch.float32, dev)
        ).view(n, 1, d, h, w)
        # 0/1 weight (1 = shuffled cell), written by the comparison itself; lerp with it is exact
        # and several times faster than torch.where with a boolean mask on the CPU
        weight = torch.lt(scaled, plan.zy.view(n, 1, d, h, 1), out=ws.get("weight", (n, 1, d, h, w), batch.dtype, dev))
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
