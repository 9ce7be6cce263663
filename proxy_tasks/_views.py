"""Random views of 2D images for the radiograph pretext tasks (Barlow Twins, metadata).

One batched affine resampling per call (``affine_grid`` + ``grid_sample``) draws each sample's
random resized crop (area fraction ``scale``), horizontal flip and small rotation together, then a
brightness/contrast jitter (grey images: torchvision's ColorJitter without saturation and hue).
Every random number comes from the given ``torch.Generator``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class ViewConfig:
    """Augmentation ranges (Awatramani et al.: crop, horizontal flip, colour jitter, rotation).

    Attributes:
        scale: range of the crop's area as a fraction of the image.
        flip_prob: probability of a horizontal flip.
        rotation_deg: rotations drawn uniformly in [-rotation_deg, rotation_deg].
        brightness / contrast: factors drawn in [1 - b, 1 + b] / [1 - c, 1 + c].
    """

    scale: tuple[float, float] = (0.5, 1.0)
    flip_prob: float = 0.5
    rotation_deg: float = 10.0
    brightness: float = 0.4
    contrast: float = 0.4


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def random_views(batch: torch.Tensor, generator: torch.Generator | None, cfg: ViewConfig = ViewConfig()) -> torch.Tensor:
    """One random view of every image of ``batch`` (B, C, H, W) in [0, 1]; same shape, in [0, 1]."""
    if batch.dim() != 4:
        raise ValueError(f"random views need 2D images (B, C, H, W), got shape {tuple(batch.shape)}")
    b, device = batch.shape[0], batch.device
    side = torch.sqrt(_uniform(b, cfg.scale[0], cfg.scale[1], generator, device))  # crop side / image side
    tx = _uniform(b, -1.0, 1.0, generator, device) * (1.0 - side)
    ty = _uniform(b, -1.0, 1.0, generator, device) * (1.0 - side)
    flip = torch.where(torch.rand(b, generator=generator, device=device) < cfg.flip_prob, -1.0, 1.0)
    angle = _uniform(b, -cfg.rotation_deg, cfg.rotation_deg, generator, device) * (math.pi / 180.0)
    cos, sin = torch.cos(angle) * side, torch.sin(angle) * side
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(batch.dtype), list(batch.shape), align_corners=False)
    out = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    bright = _uniform(b, 1 - cfg.brightness, 1 + cfg.brightness, generator, device).view(b, 1, 1, 1)
    contrast = _uniform(b, 1 - cfg.contrast, 1 + cfg.contrast, generator, device).view(b, 1, 1, 1)
    out = out * bright
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean).clamp(0.0, 1.0)
