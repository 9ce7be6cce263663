"""Compiled CPU loops (numba) for the per-voxel work of the Models Genesis transforms.

Why our own loops: on the CPU the batched torch forms of these transforms spend most of their
time in whole-batch passes that only exist to feed the next op (index tables, 0/1 weights, the
positions of a table read): the local shuffle makes about ten passes over an index as large as
the batch, the non-linear map four, the out-painting a box-count volume and a blend. A compiled
loop does each in one pass, touching only the voxels it writes. Measured side by side in one
process on one CPU thread (``python benchmarks/bench_proxy_transforms.py``, batch 6 of
64x64x32): the combined scheme is 2.1-2.6x faster than with the torch ops, 54-61x faster than
the reference loops (``benchmarks/results/proxy_transforms.md``, ``benchmarks/README.md``).

The random draws stay in torch, drawn from the caller's generator exactly as on the torch path:
the loops only replace arithmetic. The local shuffle and the out-painting give results
bit-identical to their torch path; the non-linear map interpolates its table per voxel instead
of reading the nearest entry of a refined table (closer to the exact curve; the tests bound
both). The loops run on contiguous float32/float64 CPU tensors when numba is installed; anything
else (CUDA, half precision, no numba) takes the torch path. The loops release the GIL.
"""

from __future__ import annotations

import numpy as np
import torch

try:  # numba is a dependency; a platform without its wheels still works, on the torch path
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def available() -> bool:
    """True when the compiled loops can run (numba importable)."""
    return numba is not None


def usable(batch: torch.Tensor) -> bool:
    """True when ``batch`` can be handed to the compiled loops (CPU, float32/64, contiguous, no grad)."""
    return (
        numba is not None
        and batch.device.type == "cpu"
        and batch.dtype in (torch.float32, torch.float64)
        and batch.is_contiguous()
        and not batch.requires_grad
    )


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The CPU tensor's memory as a numpy array (no copy)."""
    return tensor.detach().numpy() if tensor.requires_grad else tensor.numpy()  # detach: two more ops per call


def _jit(fn):
    if numba is None:  # pragma: no cover
        return fn
    try:  # cache: compiled once per machine and reused by later processes (tests, loader workers)
        return numba.njit(nogil=True, cache=True, boundscheck=False)(fn)
    except RuntimeError:  # pragma: no cover - no writable cache location: compile in each process
        return numba.njit(nogil=True, cache=False, boundscheck=False)(fn)


# Every array index in the loops below is unsigned (``_u``): numba wraps negative signed indices
# around (Python semantics), a test and a branch per access that also stops the compiler from
# vectorising; a plain copy loop ran 5.8x faster with unsigned indices (0.135 against 0.78 ms
# for 6 cubes). Mixing signed and unsigned integers makes floats in numba: convert explicitly.
_u = np.uint64


@_jit
def _local_shuffle_rows(
    batch, rows, scratch, width, x_table, x_line, y_flat, y_line, z_flat, z_line, base, e_table, e_line, zy
):  # pragma: no cover - compiled
    # batch (B, C, V), V = lines * width; the lines of the j-th row are j * lines ... (j + 1) * lines - 1.
    # Per line: first the source of each voxel (its own position outside shuffled cells), in a
    # loop the compiler vectorises, then the gather from a copy of the sample.
    w = _u(width)
    lines = _u(batch.shape[2]) // w
    has_z = z_line.shape[0] > 0
    source = np.empty(width, np.uint64)
    for j in range(_u(rows.shape[0])):
        sample = batch[_u(rows[j])]
        scratch[:, :] = sample
        for li in range(lines):
            line = j * lines + li
            xt = x_table[_u(x_line[line])]
            et = e_table[_u(e_line[line])]
            yo = _u(y_line[line])
            zo = _u(z_line[line]) if has_z else _u(0)
            b = _u(base[line])
            limit = zy[line]
            out = li * w
            if has_z:
                for x in range(w):
                    moved = _u(xt[x]) + _u(y_flat[yo + x]) + _u(z_flat[zo + x]) + b
                    source[x] = moved if et[x] < limit else out + x
            else:
                for x in range(w):
                    moved = _u(xt[x]) + _u(y_flat[yo + x]) + b
                    source[x] = moved if et[x] < limit else out + x
            for c in range(_u(sample.shape[0])):
                src, dst = scratch[c], sample[c]
                for x in range(w):
                    dst[out + x] = src[source[x]]


def local_shuffle_rows_(batch: torch.Tensor, rows: list[int], plan, scratch: torch.Tensor | None = None) -> None:
    """Shuffle the samples ``rows`` of the contiguous CPU ``batch`` (B, C, D, H, W) in place, as
    planned by ``local_shuffle.ShufflePlan`` (the voxels of the shuffled cells get their sources).
    ``scratch``: a reusable tensor of one sample's size and dtype (fresh memory per call costs
    page faults)."""
    b, c = batch.shape[:2]
    flat = as_numpy(batch).reshape(b, c, -1)
    scratch = torch.empty(batch.shape[1:], dtype=batch.dtype) if scratch is None else scratch
    _local_shuffle_rows(
        flat,
        np.asarray(rows, dtype=np.int64),
        as_numpy(scratch).reshape(c, -1),
        batch.shape[-1],
        *(as_numpy(t) for t in (plan.x_table, plan.x_line, plan.y_flat, plan.y_line, plan.z_flat, plan.z_line)),
        *(as_numpy(t) for t in (plan.base, plan.e_table, plan.e_line, plan.zy)),
    )


@_jit
def _lut_rows(batch, rows, lut, step, top):  # pragma: no cover - compiled
    # batch (B, V); row j of ``rows`` goes through table j with linear interpolation: the value at
    # p = x (K - 1) is lut[i] + (p - i) step[i], i = floor(p), p clamped to [0, K - 1] (step[K - 1]
    # = 0, so x = 1 reads lut[K - 1]; NaN stays NaN). In chunks: the positions in a loop the
    # compiler vectorises, then the table reads.
    last = _u(lut.shape[1] - 1)
    chunk = _u(512)
    index = np.empty(chunk, np.int32)
    frac = np.empty(chunk, batch.dtype)
    for j in range(_u(rows.shape[0])):
        sample = batch[_u(rows[j])]
        table, slope = lut[j], step[j]
        size = _u(sample.shape[0])
        for first in range(_u(0), size, chunk):
            count = min(chunk, size - first)
            for v in range(count):
                p = min(max(sample[first + v] * top, 0), top)
                i = np.int32(p)  # float -> int32 vectorises (-> uint64 does not)
                index[v] = i
                frac[v] = p - i
            for v in range(count):
                i = min(_u(index[v]), last)  # NaN converts to anything: kept in the table, the value stays NaN
                sample[first + v] = table[i] + frac[v] * slope[i]


def lut_rows_(batch: torch.Tensor, rows: list[int], lut: torch.Tensor) -> None:
    """Map the samples ``rows`` of the contiguous CPU ``batch`` in place through the tables ``lut``
    (len(rows), K) (one per row, same dtype as ``batch``) with linear interpolation."""
    step = torch.zeros_like(lut)
    torch.sub(lut[:, 1:], lut[:, :-1], out=step[:, :-1])
    flat = as_numpy(batch).reshape(batch.shape[0], -1)
    top = flat.dtype.type(lut.shape[1] - 1)
    _lut_rows(flat, np.asarray(rows, dtype=np.int64), as_numpy(lut.contiguous()), as_numpy(step), top)


@_jit
def _fill_outside_boxes(batch, rows, start, size, active, bits, offsets, dims, half, scale):  # pragma: no cover
    # batch (B, C * D * H * W), dims = (C, D, H, W); row j keeps the union of its active boxes and
    # takes the noise of bits[offsets[j] + flat position] everywhere else (the value of int16 k is
    # (k + 32768.5) / 65536, exact in float32, as ``_genesis_common.noise_from_bits``, without a
    # pass that converts the whole bank). Per line (c, z, y): the x intervals
    # of the boxes that cross it, then the runs between them are copied from the noise (2x
    # faster than one pass that picks the original or the noise per voxel).
    channels, depth, height, width = _u(dims[0]), _u(dims[1]), _u(dims[2]), _u(dims[3])
    boxes = start.shape[1]
    lo = np.empty(boxes, np.uint64)
    hi = np.empty(boxes, np.uint64)
    for j in range(_u(rows.shape[0])):
        sample = batch[_u(rows[j])]
        noise = bits[_u(offsets[j]) :]
        for z in range(depth):
            for y in range(height):
                count = 0
                for k in range(boxes):
                    if (
                        active[j, k]
                        and _u(start[j, k, 0]) <= z < _u(start[j, k, 0] + size[j, k, 0])
                        and _u(start[j, k, 1]) <= y < _u(start[j, k, 1] + size[j, k, 1])
                    ):
                        lo[count] = _u(start[j, k, 2])
                        hi[count] = _u(start[j, k, 2] + size[j, k, 2])
                        count += 1
                for c in range(channels):
                    at = ((c * depth + z) * height + y) * width
                    x = _u(0)
                    while x < width:
                        covered_to = x  # end of a kept interval holding x, if any
                        for q in range(count):
                            if lo[q] <= x < hi[q]:
                                covered_to = max(covered_to, hi[q])
                        if covered_to > x:
                            x = covered_to
                            continue
                        run_end = width  # the noise run stops at the next kept interval
                        for q in range(count):
                            if x < lo[q] < run_end:
                                run_end = lo[q]
                        for v in range(at + x, at + run_end):
                            sample[v] = (noise[v] + half) * scale
                        x = run_end


def fill_outside_boxes_(
    batch: torch.Tensor,
    rows: list[int],
    boxes: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    bits: torch.Tensor,
    offsets: list[int],
) -> None:
    """Out-painting of the samples ``rows`` of the contiguous CPU ``batch`` (B, C, D, H, W), in place:
    outside the active boxes ``(start, size, active)`` ((len(rows), k, 3), (len(rows), k, 3),
    (len(rows), k)) row ``j`` takes the noise of the int16 ``bits`` from ``offsets[j]`` on
    (``_genesis_common.batch_noise_bits``)."""
    start, size, active = (as_numpy(t.contiguous()) for t in boxes)
    flat = as_numpy(batch).reshape(batch.shape[0], -1)
    dims = np.asarray(batch.shape[1:], dtype=np.int64)
    half, scale = flat.dtype.type(32768.5), flat.dtype.type(1.0 / 65536)
    _fill_outside_boxes(
        flat, np.asarray(rows, dtype=np.int64), start, size, active, as_numpy(bits),
        np.asarray(offsets, dtype=np.int64), dims, half, scale,
    )


@_jit
def _count_at_most(cut, value):  # pragma: no cover - compiled
    # searchsorted(cut, value, right=True) for a short sorted ``cut``
    k = 0
    while k < cut.shape[0] and cut[k] <= value:
        k += 1
    return k


@_jit
def _partition_rows(u, cdf, biased, start, size):  # pragma: no cover - compiled
    # local_shuffle._partition(_lengths(u, n, m), n): segment i has length 1 + #(cdf <= u[r, i]),
    # the first one the size-biased remainder first - floor(u[r, n] * first)
    rows, n = start.shape
    for r in range(rows):
        pos = 0
        segment = 0
        while pos < n:
            if segment == 0:
                first = 1 + _count_at_most(biased, u[r, 0])
                length = first - np.int64(np.floor(u[r, n] * first))
            else:
                length = 1 + _count_at_most(cdf, u[r, segment])
            end = min(pos + length, n)
            for q in range(pos, end):
                start[r, q] = pos
                size[r, q] = end - pos
            pos += length
            segment += 1


@_jit
def _pool_sources(start, size, ids, table, perm_start, m, out):  # pragma: no cover - compiled
    # local_shuffle._pool_permutations: the id read at each segment start picks the segment's permutation
    pool, variants, width = ids.shape
    for p in range(pool):
        for v in range(variants):
            for x in range(width):
                s = start[p, x]
                k = ids[p, v, s]
                out[p, v, x] = table[perm_start[k * (m + 1) + size[p, x]] + (x - s)] + s


@_jit
def _column_tables(ids, table, perm_start, m, out):  # pragma: no cover - compiled
    # local_shuffle._column_permutations: row L (L - 1) / 2 + o of column x holds pi(o), pi the
    # (k mod L!)-th permutation of range(L), one id k per column
    count, _, width = ids.shape
    for u in range(count):
        for x in range(width):
            k = ids[u, 0, x]
            row = 0
            for length in range(1, m + 1):
                first = perm_start[k * (m + 1) + length]
                for o in range(length):
                    out[u, row, x] = table[first + o]
                    row += 1


@_jit
def _exp_table(start, exp_x, cover_x, num_windows, out):  # pragma: no cover - compiled
    # E / (num_windows * c_x) read at each x segment start, in float32
    pool, variants, width = exp_x.shape
    for p in range(pool):
        for v in range(variants):
            for x in range(width):
                s = start[p, x]
                out[p, v, x] = np.float32(exp_x[p, v, s] / (num_windows * cover_x[s]))


@_jit
def _column_row(pick, length, offset, width, rows_per_table):  # pragma: no cover - compiled
    # local_shuffle._column_row_start: table pick // width, from column pick % width
    return ((pick // width) * rows_per_table + length * (length - 1) // 2 + offset) * (2 * width) + pick % width


@_jit
def _shuffle_lines(
    zstart, zsize, ystart, ysize, pick_x, variant_x, pick_y, pick_z, pick_e, cover_z, cover_y,
    variants, rows_per_table, height, width, x_line, y_line, z_line, base, e_line, zy,
):  # pragma: no cover - compiled
    # local_shuffle.LocalShuffle._plan_torch, line by line (sample, z, y)
    n, depth = zstart.shape
    has_z = pick_z.shape[0] > 0
    for j in range(n):
        for z in range(depth):
            zs = zstart[j, z]
            zl = zsize[j, z]
            for y in range(height):
                row = j * depth + zs  # the slab's y partition is the one drawn for its first plane
                ys = ystart[row, y]
                yl = ysize[row, y]
                bar = zs * height + ys
                px = pick_x[j, bar]
                line = (j * depth + z) * height + y
                x_line[line] = px * variants + variant_x[j, bar]
                y_line[line] = _column_row(pick_y[j, bar], yl, y - ys, width, rows_per_table)
                if has_z:
                    z_line[line] = _column_row(pick_z[j, zs, y], zl, z - zs, width, rows_per_table)
                base[line] = zs * height * width + ys * width
                e_line[line] = px * variants + pick_e[j, bar]
                zy[line] = np.float32(cover_z[zs] * cover_y[ys])


def shuffle_plan(draws, dims, sides, tables, laws, cover, num_windows: int, itype: torch.dtype) -> tuple:
    """``local_shuffle.LocalShuffle.plan``'s layout of ``draws`` in compiled loops (segments of at
    most 7 voxels, the permutation tables' range): the fields of a ``ShufflePlan``, in order.

    Args:
        draws: a ``ShuffleDraws`` on the CPU; ``dims``: (d, h, w); ``sides``: the longest segment
            along z, y, x and in the column tables; ``tables``: the permutation tables of each
            side; ``laws``: the segment-length cut points (cdf, size-biased) of z, y, x; ``cover``:
            the per-axis cover probabilities; ``itype``: the dtype of within-sample positions.
    """
    d, h, w = dims
    mz, my, mx, mc = sides
    n = draws.z_uniforms.shape[0]
    pool, variants = draws.x_ids.shape[:2]
    idt = np.int32 if itype == torch.int32 else np.int64
    parts = []
    for u, (cdf, biased), size in zip((draws.z_uniforms, draws.y_uniforms, draws.x_uniforms), laws, (d, h, w)):
        start, length = np.empty((u.shape[0], size), np.int64), np.empty((u.shape[0], size), np.int64)
        _partition_rows(as_numpy(u), as_numpy(cdf), as_numpy(biased), start, length)
        parts.append((start, length))
    (zstart, zsize), (ystart, ysize), (xstart, xsize) = parts
    table, _, perm_start = (as_numpy(t) for t in tables[2])
    sources = np.empty((pool, variants, w), idt)
    _pool_sources(xstart, xsize, as_numpy(draws.x_ids), table, perm_start, mx, sources)
    (ids,) = draws.column_ids
    table, _, perm_start = (as_numpy(t) for t in tables[3])
    columns = np.empty((ids.shape[0], mc * (mc + 1) // 2, ids.shape[2]), idt)
    _column_tables(as_numpy(ids), table, perm_start, mc, columns)
    exp_table = np.empty((pool, variants, w), np.float32)
    _exp_table(xstart, as_numpy(draws.exp_x), as_numpy(cover[2]), float(num_windows), exp_table)
    lines = n * d * h
    x_line, y_line, base, e_line = (np.empty(lines, np.int64) for _ in range(4))
    z_line = np.empty(lines if d > 1 else 0, np.int64)
    zy = np.empty(lines, np.float32)
    pick_z = as_numpy(draws.pick_z)
    _shuffle_lines(
        zstart, zsize, ystart, ysize, as_numpy(draws.pick_x), as_numpy(draws.variant_x), as_numpy(draws.pick_y),
        pick_z, as_numpy(draws.pick_e), as_numpy(cover[0]), as_numpy(cover[1]),
        variants, columns.shape[1], h, w, x_line, y_line, z_line, base, e_line, zy,
    )
    z_flat = (columns * (h * w)).reshape(-1) if d > 1 else np.zeros(0, idt)
    fields = (
        sources.reshape(-1, w), x_line, (columns * w).reshape(-1), y_line, z_flat, z_line, base,
        exp_table.reshape(-1, w), e_line, zy,
    )
    return tuple(torch.from_numpy(np.ascontiguousarray(f)) for f in fields)


@_jit
def _bezier_tables(points, decreasing, curve_points, out):  # pragma: no cover - compiled
    # nonlinear.bezier_lut in float64: sample each curve at ``curve_points`` parameters (running
    # maxima keep it monotonic against rounding), then read it on the uniform grid of ``out``'s
    # rows like np.interp (right neighbour: the first sample with x > grid value), in one walk
    n, size = out.shape
    xs = np.empty(curve_points)
    ys = np.empty(curve_points)
    top = size - 1
    last = curve_points - 1
    for j in range(n):
        x1, y1, x2, y2 = points[j, 0, 0], points[j, 0, 1], points[j, 1, 0], points[j, 1, 1]
        for i in range(curve_points):
            s = i / last
            r = 1.0 - s
            a, b, c = 3.0 * s * r * r, 3.0 * s * s * r, s * s * s
            xs[i] = a * x1 + b * x2 + c
            ys[i] = a * y1 + b * y2 + c
            if i > 0:
                xs[i] = max(xs[i], xs[i - 1])
                ys[i] = max(ys[i], ys[i - 1])
        if decreasing[j]:
            ys[:] = ys[::-1].copy()
        i = 0
        for g in range(size):
            while i < curve_points and xs[i] * top <= g:
                i += 1
            hi = min(max(i, 1), last)
            lo = hi - 1
            x0, span = xs[lo], max(xs[hi] - xs[lo], 2.2250738585072014e-308)
            w = min(max((g / top - x0) / span, 0.0), 1.0)
            out[j, g] = ys[lo] + w * (ys[hi] - ys[lo])


def bezier_tables(points: torch.Tensor, decreasing: torch.Tensor, lut_size: int, curve_points: int) -> torch.Tensor:
    """``nonlinear.bezier_lut`` in one compiled loop, in float64: (n, ``lut_size``) tables of the
    curves with control points ``points`` (n, 2, 2) (CPU), inverted where ``decreasing``."""
    out = np.empty((points.shape[0], lut_size))
    _bezier_tables(
        as_numpy(points.to(torch.float64).contiguous()), as_numpy(decreasing.contiguous()), curve_points, out
    )
    return torch.from_numpy(out)


@_jit
def _flip_copies(batch, flips, target, out):  # pragma: no cover - compiled
    # target[j] = batch[j] flipped along the axes flips[j] (D, H, W) and out[j] = the same, in
    # one read of the batch (batch, target, out: (B, C, D, H, W))
    n, channels, depth, height, width = batch.shape
    w = _u(width)
    for j in range(n):
        fz, fy, fx = flips[j, 0], flips[j, 1], flips[j, 2]
        for c in range(channels):
            for z in range(depth):
                sz = depth - 1 - z if fz else z
                for y in range(height):
                    sy = height - 1 - y if fy else y
                    src, dst, dup = batch[j, c, sz, sy], target[j, c, z, y], out[j, c, z, y]
                    if fx:
                        for x in range(w):
                            value = src[w - _u(1) - x]
                            dst[x] = value
                            dup[x] = value
                    else:
                        for x in range(w):
                            value = src[x]
                            dst[x] = value
                            dup[x] = value


def flip_copies(batch: torch.Tensor, flips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two new copies of the contiguous CPU ``batch`` (B, C, D, H, W), each sample flipped along the
    spatial axes ``flips`` (B, 3) bool (D, H, W) marks, written in one pass over the batch."""
    target, out = torch.empty_like(batch), torch.empty_like(batch)
    _flip_copies(as_numpy(batch), as_numpy(flips.contiguous()), as_numpy(target), as_numpy(out))
    return target, out
