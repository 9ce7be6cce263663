"""Random axis-aligned boxes for whole batches: counts, sizes, positions and masks.

Reusable by any cut-out style task. Everything is drawn from the caller's ``torch.Generator``
and computed on the batch's device; loops run over boxes (a handful), never over voxels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from proxy_tasks._genesis_common import randint_per_row


def chained_counts(
    n: int,
    max_boxes: int,
    continue_prob: float,
    generator: torch.Generator | None,
    device: torch.device,
    first_always: bool = False,
) -> torch.Tensor:
    """(n, max_boxes) bool: box k is drawn while every coin so far came up (``random() < p``).

    This is the reference ``cnt = 5; while cnt > 0 and random.random() < 0.95`` loop: the number of
    boxes is a geometric count capped at ``max_boxes``. ``first_always`` makes box 0 unconditional
    (the reference out-painting keeps one box before entering its loop).
    """
    coins = torch.rand(n, max_boxes, generator=generator, device=device, dtype=torch.float64) < continue_prob
    if first_always and max_boxes:
        coins[:, 0] = True
    return coins.cumprod(dim=1).bool()


def sample_boxes(
    n: int,
    spatial: Sequence[int],
    size_low: Sequence[int],
    size_high: Sequence[int],
    border: int,
    generator: torch.Generator | None,
    device: torch.device,
    count: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` boxes per sample: sides uniform in ``[size_low, size_high]`` per axis, starts uniform
    in ``[border, dim - size - border]`` (both inclusive, as ``random.randint`` in the reference).

    When a volume is too small for the border the start range is clamped to what fits.

    Returns:
        ``(start, size)``, each (n, count, ndim) long.
    """
    dims = torch.tensor(list(spatial), device=device)
    lo = torch.tensor(list(size_low), device=device).clamp(1).minimum(dims)
    hi = torch.tensor(list(size_high), device=device).maximum(lo).minimum(dims)
    shape = (n, count, len(spatial))
    size = randint_per_row(lo.expand(shape), hi.expand(shape), generator)
    s_lo = torch.full_like(size, border).minimum(dims - size)
    start = randint_per_row(s_lo, (dims - size - border).maximum(s_lo), generator)
    return start, size


def box_mask(start: torch.Tensor, size: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """(n, *spatial) bool mask of one box per sample (``start``, ``size``: (n, ndim))."""
    active = torch.ones(start.shape[0], 1, dtype=torch.bool, device=start.device)
    return union_of_boxes(start[:, None], size[:, None], active, spatial) > 0


def union_of_boxes(
    start: torch.Tensor,
    size: torch.Tensor,
    active: torch.Tensor,
    spatial: Sequence[int],
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """(n, *spatial) union of the active boxes as a 0/1 float mask.

    Args:
        start, size: (n, k, ndim) boxes; ``active``: (n, k) bool, which boxes count.
        out: optional contiguous (n, *spatial) tensor of ``dtype`` to write the mask into.

    A box is the outer product of per-axis interval indicators, so the number of boxes covering
    each voxel is one batched matrix product over the box axis; the union is that count clipped
    to 1. Float 0/1 masks are used because blending with ``torch.lerp`` is much faster than
    boolean ``torch.where`` on the CPU, and exact for weights 0 and 1.
    """
    n, k = active.shape
    if k == 0:
        return torch.zeros((n, *spatial), dtype=dtype, device=active.device) if out is None else out.zero_()
    ind = []
    for axis, dim in enumerate(spatial):
        coords = torch.arange(dim, device=active.device)
        first, stop = start[..., axis, None], (start[..., axis] + size[..., axis])[..., None]
        ind.append(((coords >= first) & (coords < stop)).to(dtype))  # (n, k, dim)
    ind[0] = ind[0] * active.to(dtype)[..., None]
    if len(spatial) == 2:
        left, right = ind[0], ind[1]
    else:
        left = (ind[0][:, :, :, None] * ind[1][:, :, None, :]).reshape(n, k, -1)  # (n, k, D*H)
        right = ind[2]
    count = torch.bmm(left.transpose(1, 2), right, out=None if out is None else out.view(n, -1, spatial[-1]))
    return count.clamp_(max=1.0).view(n, *spatial)


def box_slices(start: torch.Tensor, size: torch.Tensor, active: torch.Tensor) -> list[list[tuple[slice, ...]]]:
    """Per sample, its active boxes as tuples of slices (``start``, ``size``: (n, k, ndim); ``active``: (n, k)).

    One host transfer for the whole batch (a device sync on CUDA). Writing a box through a slice
    touches only its voxels, far cheaper than a whole-volume mask when boxes are small.
    """
    starts, sizes, flags = start.tolist(), size.tolist(), active.tolist()
    return [
        [tuple(slice(a, a + z) for a, z in zip(s, sz)) for s, sz, on in zip(starts[i], sizes[i], flags[i]) if on]
        for i in range(len(flags))
    ]


def box_voxels(boxes: list[list[tuple[slice, ...]]]) -> int:
    """Number of voxels (per channel) of all the boxes of :func:`box_slices`, overlaps counted twice."""
    total = 0
    for sample in boxes:
        for box in sample:
            count = 1
            for side in box:
                count *= side.stop - side.start
            total += count
    return total


def fill_boxes_(
    batch: torch.Tensor, rows: list[int], boxes: list[list[tuple[slice, ...]]], values: torch.Tensor
) -> torch.Tensor:
    """Write consecutive chunks of the flat ``values`` into the boxes of ``batch[rows[j]]`` (all channels), in place.

    Box after box, so where boxes overlap the last one wins (as in the reference loops). ``values``
    needs at least ``channels * box_voxels(boxes)`` entries; each voxel reads its own entry.
    """
    offset = 0
    for row, sample_boxes in zip(rows, boxes):
        sample = batch[row]
        for box in sample_boxes:
            region = sample[(slice(None), *box)]
            count = region.numel()
            region.copy_(values[offset : offset + count].view(region.shape))
            offset += count
    return batch

