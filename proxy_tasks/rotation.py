"""Rotation prediction (Tariq et al. 2023, section III-B-4): 0/90/180/270 degrees, 4-way label.

Each sample is rotated in the axial plane (the last two axes, H and W) by ``label * 90`` degrees
with :func:`torch.rot90` (from the H axis towards the W axis); ``torch.rot90(x, -label,
dims=(-2, -1))`` undoes it. Works on 2D slices (B, 1, H, W) and 3D sub-volumes (B, 1, D, H, W);
the axial plane must be square so every rotation keeps the shape.
"""

from __future__ import annotations

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task


def rotate_axial(batch: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each sample by its own number of quarter turns in the (H, W) plane."""
    out = batch.clone()
    for k in range(1, 4):  # one vectorised rot90 per angle, not per sample
        chosen = quarter_turns % 4 == k
        if bool(chosen.any()):
            out[chosen] = torch.rot90(batch[chosen], k, dims=(-2, -1))
    return out


@register_task("rotation")
class RotationPrediction(ProxyTask):
    """Rotate by a random multiple of 90 degrees; predict which (label 0..3 = 0/90/180/270)."""

    kind = "classification"
    paper = "Tariq et al. 2023 (Gidaris et al. 2018)"
    num_classes = 4
    loss_region = "all"
    spatial_dims = None

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "rotation")
        if batch.shape[-1] != batch.shape[-2]:
            raise ValueError(f"rotation: the axial plane must be square, got {tuple(batch.shape[-2:])}")
        label = torch.randint(0, 4, (batch.shape[0],), generator=generator, device=batch.device)
        return ProxyPair(input=rotate_axial(batch, label), label=label)
