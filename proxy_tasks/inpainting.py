"""Classic in-painting baseline (Models Genesis appendix; Pathak et al. 2016), loss on the holes only.

Holes are drawn like Models Genesis inner cutout: 1 to ``max_holes`` boxes per sample, each side
between dim/6 and dim/3, at least ``margin`` voxels from the border, filled with uniform noise.
Unlike inner cutout (loss on the whole volume), ``loss_region = "mask"``: the loss is computed on
``pair.mask`` (the union of the holes) only, which the paper shows is worse for classification.
"""

from __future__ import annotations

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task
from proxy_tasks.masked_region import box_mask, fill_values, randint


def sample_holes(batch: torch.Tensor, max_holes: int, side_range: tuple[float, float], margin: int,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Union of 1..max_holes random boxes per sample: (B, 1, *spatial) bool."""
    b, spatial = batch.shape[0], tuple(batch.shape[2:])
    dims = torch.tensor(spatial, device=batch.device)
    lo = torch.clamp((dims * side_range[0]).long(), min=1)
    hi = torch.maximum(torch.clamp((dims * side_range[1]).long(), max=dims - 2 * margin), lo)
    if bool((dims - 2 * margin < lo).any()):
        raise ValueError(f"inpainting: image {spatial} is too small for holes {margin} voxels from the border")
    shape = (b, max_holes, len(spatial))
    sizes = randint(lo, hi, shape, generator, batch.device)
    starts = randint(margin, dims - margin - sizes, shape, generator, batch.device)
    count = randint(1, max_holes, (b, 1), generator, batch.device)
    active = torch.arange(max_holes, device=batch.device).view(1, max_holes) < count
    holes = box_mask(starts, sizes, spatial) & active.view(b, max_holes, *([1] * len(spatial)))
    return holes.any(dim=1, keepdim=True)


@register_task("inpainting")
class Inpainting(ProxyTask):
    """Fill random holes with noise; restore them (loss on the holes only).

    Args:
        max_holes: at most this many boxes per sample (at least one).
        side_range: hole side as a fraction of each image side (reference: 1/6 to 1/3).
        margin: minimum distance of a hole from the border, in voxels (reference: 3).
        fill: ``"noise"`` (uniform in [0, 1], the reference) or a constant.
    """

    kind = "restoration"
    paper = "Pathak et al. 2016, as in Zhou et al. 2021's appendix"
    mask_hides_content = True
    loss_region = "mask"
    spatial_dims = None

    def __init__(self, max_holes: int = 5, side_range: tuple[float, float] = (1 / 6, 1 / 3), margin: int = 3,
                 fill: float | str = "noise") -> None:
        if max_holes < 1:
            raise ValueError(f"inpainting: max_holes must be >= 1, got {max_holes}")
        self.max_holes = int(max_holes)
        self.side_range = (float(side_range[0]), float(side_range[1]))
        self.margin = int(margin)
        self.fill = fill

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "inpainting")
        mask = sample_holes(batch, self.max_holes, self.side_range, self.margin, generator)
        return ProxyPair(input=torch.where(mask, fill_values(self.fill, batch, generator), batch),
                         target=batch, mask=mask)
