"""Next slice prediction (Tariq et al. 2023, section III-B-1): from slice n predict slice n + gap.

The task takes a batch of 3D sub-volumes (B, 1, D, H, W) and picks, per sample, a random last input
slice ``n``. Shapes:

* ``spatial_dims_out=2`` (the paper): input = the slab of ``slab`` slices ending at n as channels,
  (B, slab, H, W) (slices n-slab+1 .. n, in order); target = slice n+gap, (B, 1, H, W).
* ``spatial_dims_out=3``: input = the slab (B, 1, slab, H, W); target = the next slab of the same
  thickness starting ``gap`` slices after n: slices n+gap .. n+gap+slab-1, (B, 1, slab, H, W).

``pair.label`` is None; ``pair.mask`` is None (the loss covers the whole target). The chosen
indices of the last run are kept in ``last_index`` (B,) for inspection.
"""

from __future__ import annotations

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task
from proxy_tasks.masked_region import randint


@register_task("next_slice")
class NextSlice(ProxyTask):
    """Predict slice n + gap (2D) or the next slab (3D) from a slab ending at slice n.

    Args:
        gap: distance in slices between the last input slice and the (first) target slice; the
            paper uses 1, 3 and 5.
        slab: number of input slices (channels in 2D mode, depth in 3D mode).
        spatial_dims_out: 2 (slices as channels) or 3 (slab sub-volumes).

    Raises:
        ValueError: if the sub-volume has too few slices for slab + gap.
    """

    kind = "restoration"
    paper = "Tariq et al. 2023"
    loss_region = "all"
    spatial_dims = 3  # the task consumes sub-volumes; see ``spatial_dims_out`` for what it produces

    def __init__(self, gap: int = 1, slab: int = 1, spatial_dims_out: int = 2) -> None:
        if gap < 1 or slab < 1:
            raise ValueError(f"next_slice: gap and slab must be >= 1, got gap={gap}, slab={slab}")
        if spatial_dims_out not in (2, 3):
            raise ValueError(f"next_slice: spatial_dims_out must be 2 or 3, got {spatial_dims_out}")
        self.gap = int(gap)
        self.slab = int(slab)
        self.spatial_dims_out = int(spatial_dims_out)
        self.last_index: torch.Tensor | None = None

    @property
    def in_channels(self) -> int:
        """Channels of ``pair.input`` (what the network's first layer must accept)."""
        return self.slab if self.spatial_dims_out == 2 else 1

    @property
    def target_depth(self) -> int:
        return 1 if self.spatial_dims_out == 2 else self.slab

    def extra_repr(self) -> str:
        return f"gap={self.gap}, slab={self.slab}, spatial_dims_out={self.spatial_dims_out}"

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "next_slice", spatial_dims=3)
        b, _, depth, height, width = batch.shape
        lowest, highest = self.slab - 1, depth - 1 - self.gap - (self.target_depth - 1)
        if highest < lowest:
            raise ValueError(
                f"next_slice: a sub-volume of {depth} slices is too thin for slab={self.slab}, gap={self.gap}"
            )
        last = randint(lowest, highest, (b,), generator, batch.device)
        self.last_index = last
        volume = batch[:, 0]  # (B, D, H, W)

        def take(first: torch.Tensor, count: int) -> torch.Tensor:
            index = first.view(b, 1) + torch.arange(count, device=batch.device).view(1, count)
            return torch.gather(volume, 1, index.view(b, count, 1, 1).expand(b, count, height, width))

        inputs = take(last - self.slab + 1, self.slab)
        target = take(last + self.gap, self.target_depth)
        if self.spatial_dims_out == 3:
            return ProxyPair(input=inputs.unsqueeze(1), target=target.unsqueeze(1))
        return ProxyPair(input=inputs, target=target)
