"""Random views of 2D and 3D images for the contrastive and teacher-student methods.

Vectorised over the batch, every random number from the ``torch.Generator`` given:

* :func:`random_resized_views` -- SimCLR's random crop resized back to the input size, with a flip
  of every spatial axis, in one batched affine resampling (what ``affine_grid`` + ``grid_sample``
  give, as :func:`proxy_tasks._views.random_views` does for the radiographs, computed separably:
  :func:`axis_aligned_resample`), then an intensity scale and shift and Gaussian noise of random
  strength per sample (:func:`intensity_jitter`);
* :func:`crops_at` -- integer-offset crops of a batch of regions (one advanced-indexing gather:
  VoCo's random crops); :func:`grid_cells` -- the non-overlapping cells of a regular grid (VoCo's
  base crops, a reshape);
* :func:`random_slices` -- one random axial slice of every cube (the 2D form of a method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class ViewConfig:
    """Augmentation ranges of a SimCLR-style view.

    SimCLR (Chen et al. 2020) crops 8%-100% of the image area and resizes it back, flips
    horizontally, and distorts colour; CT is grey, so colour distortion becomes an intensity scale
    and shift, and Gaussian noise stands in for blur (ranges of nnU-Net's intensity augmentations:
    a multiplicative brightness in [0.75, 1.25]).

    Attributes:
        scale: range of the crop's area (2D) or volume (3D) as a fraction of the input (the paper's
            (0.08, 1.0)); the crop has the input's aspect ratio.
        flip_prob: probability of a flip of each spatial axis.
        intensity_scale: intensities multiplied by a factor in [1 - s, 1 + s].
        intensity_shift: then shifted by an offset in [-s, s].
        noise_std: Gaussian noise of a standard deviation drawn in [0, noise_std] per sample.
    """

    scale: tuple[float, float] = (0.08, 1.0)
    flip_prob: float = 0.5
    intensity_scale: float = 0.25
    intensity_shift: float = 0.1
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"view scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        if not 0.0 <= self.intensity_scale < 1.0 or self.intensity_shift < 0 or self.noise_std < 0:
            raise ValueError("need 0 <= intensity_scale < 1, intensity_shift >= 0 and noise_std >= 0, got "
                             f"{self.intensity_scale}, {self.intensity_shift}, {self.noise_std}")


def _uniform(shape: Sequence[int], lo: float, hi: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(tuple(shape), generator=gen, device=device)


def linear_resampling_matrix(scale: torch.Tensor, offset: torch.Tensor, n_in: int, n_out: int) -> torch.Tensor:
    """Per-sample matrices (N, n_out, n_in) of 1D linear interpolation along one axis.

    Output sample j (normalised centre ``u_j = (2j + 1) / n_out - 1``) reads the input at
    ``scale * u_j + offset`` in normalised coordinates, as ``affine_grid``/``grid_sample`` with
    ``align_corners=False`` do, with zeros outside the input (an index outside [0, n_in) matches no
    column).
    """
    u = (2 * torch.arange(n_out, device=scale.device, dtype=scale.dtype) + 1) / n_out - 1
    position = ((scale[:, None] * u + offset[:, None] + 1) * n_in - 1) / 2  # in input voxel indices
    below = position.floor()
    upper = position - below
    column = torch.arange(n_in, device=scale.device, dtype=scale.dtype)
    return (1 - upper)[..., None] * (column == below[..., None]) + upper[..., None] * (column == below[..., None] + 1)


def axis_aligned_resample(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` (bilinear / trilinear, zero padding, ``align_corners=False``) of ``x`` (N, C, *sides)
    through the axis-aligned affine maps ``input = scale * output + offset`` per axis.

    ``scale`` and ``offset`` (N, dims) are in ``affine_grid``'s axis order (W, H[, D]); a negative scale
    flips. An axis-aligned map is separable: the resampling is one batched matrix product per axis
    (equal to ``grid_sample`` within 1e-5), 4.5x cheaper on a CPU thread than ``affine_grid`` +
    ``grid_sample`` on (32, 64, 64) cubes (0.84 against 3.8 ms a view, measured; the same in 2D).
    """
    n = x.shape[0]
    out = x
    with torch.autocast(x.device.type, enabled=False):  # interpolation weights in the input's precision
        for k in range(scale.shape[1]):
            axis = x.dim() - 1 - k
            size = x.shape[axis]
            m = linear_resampling_matrix(scale[:, k], offset[:, k], size, size).to(x.dtype)
            if axis == x.dim() - 1:
                out = torch.bmm(out.reshape(n, -1, size), m.transpose(1, 2)).view(x.shape)
            else:
                outer = math.prod(x.shape[1:axis])
                out = torch.matmul(m[:, None], out.reshape(n, outer, size, -1)).view(x.shape)
    return out


def random_resized_views(x: torch.Tensor, generator: torch.Generator, cfg: ViewConfig = ViewConfig()) -> torch.Tensor:
    """One random view of every image of ``x`` (N, C, H, W) or (N, C, D, H, W); the same shape.

    Each sample's crop (side fraction ``fraction ** (1 / dims)`` on every axis, a random position
    inside the image), its flips and the resize back to the input size are one axis-aligned affine
    map, applied to the whole batch at once (:func:`axis_aligned_resample`: what ``affine_grid`` +
    ``grid_sample`` would give, trilinear in 3D, zero outside the image); then
    :func:`intensity_jitter`. Intensities are not clipped (the views need not stay in [0, 1]).
    """
    dims = x.dim() - 2
    if dims not in (2, 3):
        raise ValueError(f"views need a batch of 2D or 3D images (N, C, *sides), got shape {tuple(x.shape)}")
    n, device = x.shape[0], x.device
    side = _uniform((n,), *cfg.scale, generator, device).pow(1.0 / dims)  # crop side / image side
    offset = _uniform((n, dims), -1.0, 1.0, generator, device) * (1.0 - side)[:, None]  # (W, H[, D]) order
    flip = torch.where(torch.rand((n, dims), generator=generator, device=device) < cfg.flip_prob, -1.0, 1.0)
    out = axis_aligned_resample(x, side[:, None] * flip, offset)
    return intensity_jitter(out, generator, cfg, inplace=True)


def intensity_jitter(x: torch.Tensor, generator: torch.Generator, cfg: ViewConfig = ViewConfig(),
                     inplace: bool = False) -> torch.Tensor:
    """``x * a + b + sigma * noise`` with a, b and sigma drawn per sample from ``cfg``'s ranges
    (``inplace``: into ``x``, which saves the temporaries of a large batch)."""
    n, device = x.shape[0], x.device
    per_sample = (n,) + (1,) * (x.dim() - 1)
    factor = _uniform((n,), 1.0 - cfg.intensity_scale, 1.0 + cfg.intensity_scale, generator, device)
    shift = _uniform((n,), -cfg.intensity_shift, cfg.intensity_shift, generator, device)
    sigma = _uniform((n,), 0.0, cfg.noise_std, generator, device)
    out = x if inplace else x.clone()
    out.mul_(factor.view(per_sample).to(x.dtype)).add_(shift.view(per_sample).to(x.dtype))
    if cfg.noise_std > 0:  # no draw of a noise volume that would be multiplied by 0
        noise = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
        out.addcmul_(noise, sigma.view(per_sample).to(x.dtype))
    return out


def random_slices(cubes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One random axial slice of every cube: (B, C, D, H, W) -> (B, C, H, W)."""
    b, _, d = cubes.shape[:3]
    index = torch.randint(0, d, (b,), generator=generator, device=cubes.device)
    return cubes[torch.arange(b, device=cubes.device), :, index]


def crops_at(region: torch.Tensor, offsets: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Crops of ``size`` of every region at integer ``offsets``, in one gather.

    Args:
        region: (B, C, *R) with 2 or 3 spatial axes.
        offsets: (B, K, dims) integer start corners, each crop inside its region.
        size: the crops' sides (dims values).

    Returns:
        (B, K, C, *size).
    """
    b, k, dims = offsets.shape
    if dims != region.dim() - 2 or len(size) != dims:
        raise ValueError(f"offsets {tuple(offsets.shape)} and size {tuple(size)} do not fit regions {tuple(region.shape)}")
    channels_last = region.movedim(1, -1)  # (B, *R, C): the gather takes whole channel vectors
    index: list[torch.Tensor] = [torch.arange(b, device=region.device).view(b, 1, *([1] * dims))]
    for axis in range(dims):
        shape = [b, k] + [1] * dims
        shape[2 + axis] = int(size[axis])
        steps = torch.arange(int(size[axis]), device=region.device)
        index.append(offsets[:, :, axis].view(b, k, *([1] * dims)) + steps.view(shape[2:]))
    return channels_last[tuple(index)].movedim(-1, 2)


def grid_cells(region: torch.Tensor, grid: Sequence[int], out: torch.Tensor | None = None) -> torch.Tensor:
    """The non-overlapping cells of a ``grid`` over every region, in raster order (last axis fastest).

    Args:
        region: (B, C, *R), each side ``R[a]`` a multiple of ``grid[a]``.
        grid: cells per spatial axis.
        out: where to write them (a contiguous (B, prod(grid), C, *cell) tensor), saving a copy.

    Returns:
        (B, prod(grid), C, *(R // grid)).
    """
    b, c, *sides = region.shape
    dims = len(sides)
    if len(grid) != dims or any(s % g for s, g in zip(sides, grid)):
        raise ValueError(f"a {tuple(grid)} grid does not divide regions of sides {tuple(sides)}")
    cell = [s // g for s, g in zip(sides, grid)]
    split = region.reshape(b, c, *[v for g, s in zip(grid, cell) for v in (g, s)])
    order = [0] + [2 + 2 * a for a in range(dims)] + [1] + [3 + 2 * a for a in range(dims)]
    cells = split.permute(order)  # (B, *grid, C, *cell), a view
    n = math.prod(int(g) for g in grid)
    if out is None:
        return cells.reshape(b, n, c, *cell)
    out.view(b, *grid, c, *cell).copy_(cells)
    return out
