"""Masked region prediction (Tariq et al. 2023, section III-B-2): reconstruct a masked box.

A square (2D slices, as in the paper) or a box (3D sub-volumes, the paper's stated future work)
covering a fixed fraction of the image is filled with a constant; the network reproduces the whole
image. ``pair.mask`` marks the masked box so the composite loss can add the masked-region MSE.

By default the box has the image's aspect ratio (side_i = round(dim_i * fraction ** (1/ndim))), so
on the square 512x512 slices of the paper it is a square, and on a 32x64x64 sub-volume a 33% box
still fits; ``aspect="square"`` forces equal sides. The box lies fully inside the image at a uniformly random position.

This module also holds the small vectorised sampling helpers (:func:`randint`,
:func:`box_mask`) that the other box-based tasks of this family reuse.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task


def randint(low: torch.Tensor | int, high: torch.Tensor | int, shape: Sequence[int],
            generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Uniform integers in ``[low, high]`` (both inclusive; bounds may be per-element tensors).

    ``torch.randint`` takes only scalar bounds; drawing a uniform float and flooring lets every
    sample of a batch have its own range in one call.
    """
    u = torch.rand(tuple(shape), generator=generator, device=device)
    low_t = torch.as_tensor(low, device=device)
    high_t = torch.as_tensor(high, device=device)
    span = (high_t - low_t + 1).to(torch.float32)
    value = low_t + torch.floor(u * span).long()
    return torch.minimum(value, high_t.expand_as(value))  # guards u * span rounding up to span


def box_mask(starts: torch.Tensor, sizes: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Boolean masks of axis-aligned boxes.

    Args:
        starts, sizes: long tensors (..., ndim): first voxel and side of each box per axis.
        spatial: the image shape (ndim entries).

    Returns:
        bool tensor (..., *spatial), True inside each box.
    """
    ndim = len(spatial)
    lead = starts.shape[:-1]
    mask = torch.ones((*lead, *([1] * ndim)), dtype=torch.bool, device=starts.device)
    for axis, size in enumerate(spatial):
        coords = torch.arange(size, device=starts.device)
        start = starts[..., axis].reshape(*lead, 1)
        inside = (coords >= start) & (coords < start + sizes[..., axis].reshape(*lead, 1))
        view = [1] * ndim
        view[axis] = size
        mask = mask & inside.reshape(*lead, *view)
    return mask


def box_sides(spatial: Sequence[int], fraction: float, aspect: str = "image") -> list[int]:
    """Sides of the box covering ``fraction`` of an image of shape ``spatial``.

    ``aspect="image"``: the image's aspect ratio (a square on square slices); ``"square"``: equal
    sides (a square / cube; clipped to the shortest image side, so the fraction may fall short).
    """
    if aspect == "square":
        side = round((fraction * math.prod(spatial)) ** (1.0 / len(spatial)))
        return [min(dim, max(1, side)) for dim in spatial]
    scale = fraction ** (1.0 / len(spatial))
    return [min(dim, max(1, round(dim * scale))) for dim in spatial]


def fill_values(fill: float | str, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A constant fill value, or per-voxel uniform noise for ``fill="noise"``."""
    if fill == "noise":
        return torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return torch.full_like(like, float(fill))


@register_task("masked_region")
class MaskedRegion(ProxyTask):
    """Mask a random box covering ``fraction`` of the image; the target is the full image.

    Args:
        fraction: area (2D) or volume (3D) fraction of the box; the paper uses 0.05, 0.1, 0.2, 0.33
            (0.2 was best).
        fill: value written into the box (default 0, the paper's black patch) or ``"noise"``.
        aspect: ``"image"`` (box with the image's aspect ratio, default) or ``"square"`` (equal sides,
            the paper's square on non-square slices too).

    Returns (``__call__``): ``ProxyPair(input, target=batch, mask=(B, 1, *spatial) bool box)``.
    """

    kind = "restoration"
    paper = "Tariq et al. 2023"
    mask_hides_content = True
    loss_region = "all"  # the masked-region MSE is an extra term of the composite loss, via pair.mask
    spatial_dims = None

    def __init__(self, fraction: float = 0.2, fill: float | str = 0.0, aspect: str = "image") -> None:
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"masked_region: fraction must be in (0, 1), got {fraction}")
        if fill != "noise" and not isinstance(fill, (int, float)):
            raise ValueError(f"masked_region: fill must be a number or 'noise', got {fill!r}")
        if aspect not in ("image", "square"):
            raise ValueError(f"masked_region: aspect must be 'image' or 'square', got {aspect!r}")
        self.fraction = float(fraction)
        self.fill = fill
        self.aspect = aspect

    def sample_mask(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one box per sample: (B, 1, *spatial) bool."""
        spatial = tuple(batch.shape[2:])
        sides = torch.tensor(box_sides(spatial, self.fraction, self.aspect), device=batch.device)
        limits = torch.tensor(spatial, device=batch.device) - sides
        starts = randint(0, limits, (batch.shape[0], len(spatial)), generator, batch.device)
        return box_mask(starts, sides.expand_as(starts), spatial).unsqueeze(1)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "masked_region")
        mask = self.sample_mask(batch, generator)
        masked = torch.where(mask, fill_values(self.fill, batch, generator), batch)
        return ProxyPair(input=masked, target=batch, mask=mask)


def exact_fraction(spatial: Sequence[int], fraction: float, aspect: str = "image") -> float:
    """The fraction the box really covers after rounding its sides to whole voxels."""
    return math.prod(box_sides(spatial, fraction, aspect)) / math.prod(spatial)
