"""Patch shuffling baseline (Models Genesis appendix; Chen et al. 2019): swap pairs of patches.

``n_swaps`` times (reference: 10), two equal-sized, non-overlapping boxes with sides between 25% and
50% of each image side are swapped; the network restores the original. Every swap is a permutation
of voxels, so the intensity histogram is preserved exactly. Non-overlap is guaranteed by
separating the two boxes along one random axis (possible because a side is at most half the image).
``pair.mask`` marks every voxel that took part in a swap.
"""

from __future__ import annotations

import math

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task
from proxy_tasks.masked_region import box_mask, randint


def swap_boxes(batch: torch.Tensor, in_a: torch.Tensor, in_b: torch.Tensor) -> torch.Tensor:
    """Swap the contents of two equal-sized disjoint boxes per sample (masks (B, *spatial)).

    Boolean indexing enumerates each box in row-major order, sample by sample, so the k-th voxel
    of box a and the k-th voxel of box b sit at the same offset inside their boxes; copying only the
    two patches is far cheaper than gathering the whole volume through an index map.
    """
    mask_a = in_a.unsqueeze(1).expand_as(batch)
    mask_b = in_b.unsqueeze(1).expand_as(batch)
    patch_a, patch_b = batch[mask_a], batch[mask_b]
    return batch.masked_scatter(mask_a, patch_b).masked_scatter_(mask_b, patch_a)


@register_task("patch_shuffle")
class PatchShuffle(ProxyTask):
    """Swap ``n_swaps`` pairs of random patches; restore the original.

    Args:
        n_swaps: number of swaps per sample (reference: 10).
        side_range: patch side as a fraction of each image side (reference: 0.25 to 0.5; at most 0.5).
    """

    kind = "restoration"
    paper = "Chen et al. 2019, as in Zhou et al. 2021's appendix"
    loss_region = "all"
    spatial_dims = None

    def __init__(self, n_swaps: int = 10, side_range: tuple[float, float] = (0.25, 0.5)) -> None:
        lo, hi = float(side_range[0]), float(side_range[1])
        if not 0.0 < lo <= hi <= 0.5:
            raise ValueError(f"patch_shuffle: side_range must satisfy 0 < min <= max <= 0.5, got {side_range}")
        self.n_swaps = int(n_swaps)
        self.side_range = (lo, hi)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "patch_shuffle")
        b, spatial = batch.shape[0], tuple(batch.shape[2:])
        ndim, device = len(spatial), batch.device
        dims = torch.tensor(spatial, device=device)
        lo = torch.tensor([max(1, math.ceil(d * self.side_range[0])) for d in spatial], device=device)
        hi = torch.maximum(torch.tensor([int(d * self.side_range[1]) for d in spatial], device=device), lo)
        if bool((2 * lo > dims).any()):
            raise ValueError(f"patch_shuffle: image {spatial} is too small for two disjoint patches")
        out = batch
        changed = torch.zeros((b, *spatial), dtype=torch.bool, device=device)
        for _ in range(self.n_swaps):
            sizes = randint(lo, hi, (b, ndim), generator, device)
            axis = randint(0, ndim - 1, (b,), generator, device)
            # along the separating axis: first box in [0, dim - 2s], second after it; elsewhere free
            first_sep = randint(0, dims - 2 * sizes, (b, ndim), generator, device)
            second_sep = randint(first_sep + sizes, dims - sizes, (b, ndim), generator, device)
            first_free = randint(0, dims - sizes, (b, ndim), generator, device)
            second_free = randint(0, dims - sizes, (b, ndim), generator, device)
            separating = torch.nn.functional.one_hot(axis, ndim).bool()
            starts_a = torch.where(separating, first_sep, first_free)
            starts_b = torch.where(separating, second_sep, second_free)
            in_a, in_b = box_mask(starts_a, sizes, spatial), box_mask(starts_b, sizes, spatial)
            out = swap_boxes(out, in_a, in_b)
            changed |= in_a | in_b
        return ProxyPair(input=out, target=batch, mask=changed.unsqueeze(1))
