"""Flip prediction (Tariq et al. 2023, section III-B-5): none / horizontal / vertical, 3-way label.

Label 0 leaves the sample unchanged, 1 flips it horizontally (left-right: the W axis, the last one),
2 flips it vertically (anterior-posterior: the H axis). Each flip is its own inverse. Works on 2D
slices (B, 1, H, W) and 3D sub-volumes (B, 1, D, H, W). The paper notes that the left-right
symmetry of the chest makes label 1 hard to tell from 0 (AUROC 0.85).
"""

from __future__ import annotations

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task

FLIP_AXES = {1: -1, 2: -2}  # label -> flipped axis


def flip_axial(batch: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Apply (or undo) the flip named by each sample's label."""
    out = batch.clone()
    for value, axis in FLIP_AXES.items():
        chosen = label == value
        if bool(chosen.any()):
            out[chosen] = torch.flip(batch[chosen], dims=(axis,))
    return out


@register_task("flip")
class FlipPrediction(ProxyTask):
    """Flip at random; predict none (0), horizontal (1) or vertical (2)."""

    kind = "classification"
    paper = "Tariq et al. 2023"
    num_classes = 3
    loss_region = "all"
    spatial_dims = None

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "flip")
        label = torch.randint(0, 3, (batch.shape[0],), generator=generator, device=batch.device)
        return ProxyPair(input=flip_axial(batch, label), label=label)
