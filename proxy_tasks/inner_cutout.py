"""Inner cut-out (in-painting) of Models Genesis: boxes inside the cube are replaced by noise.

Zhou et al. 2021 (Models Genesis, MedIA), section 2.4: the network restores the whole cube, so it
must infer the content of the holes from their surroundings (context, interpolation). Reference
``image_in_painting``: while fewer than 5 boxes and ``random() < 0.95``, a box of sides
``randint(dim//6, dim//3)`` per axis, at least 3 voxels from the border, is filled with uniform noise
(16-bit resolution, see ``uniform_noise``).

Speed: the boxes are written through slices, box after box (where boxes overlap the last one
wins, as in the reference), with noise drawn once per call for all boxes of all samples (each
voxel its own value). The boxes cover about 8% of a cube, so this touches only that much memory:
2.3x faster than a whole-cube 0/1 mask and blend (1.0 against 2.3 ms per call of 6 cubes of
64x64x32 on one CPU thread, the two versions timed side by side in one process).
"""

from __future__ import annotations

import torch

from proxy_tasks._boxes import box_slices, box_voxels, chained_counts, fill_boxes_, sample_boxes, union_of_boxes
from proxy_tasks._genesis_common import Workspace, check_prob, dimension_agnostic, run_with_prob, uniform_noise
from proxy_tasks.base import ProxyPair, ProxyTask, register_task


@register_task("inner_cutout")
class InnerCutout(ProxyTask):
    """Fill up to ``max_boxes`` random boxes with uniform noise in [0, 1).

    Args:
        prob: probability that a sample is transformed (reference ``paint_rate`` 0.9).
        max_boxes: most boxes per sample (reference 5).
        box_prob: probability of drawing each further box (reference 0.95, so 0 boxes happens 5%).
        size_fraction: (low, high) divisors of each side: sides ``randint(dim//low, dim//high)``
            (reference (6, 3): between a sixth and a third of the side).
        border: voxels kept free at each face (reference 3).
    """

    kind = "restoration"
    paper = "Zhou et al. 2021 (Models Genesis)"
    mask_hides_content = True
    loss_region = "all"
    spatial_dims = None  # 2D batches are transformed as a depth-1 view (Genesis 2D)

    def __init__(
        self,
        prob: float = 0.9,
        max_boxes: int = 5,
        box_prob: float = 0.95,
        size_fraction: tuple[int, int] = (6, 3),
        border: int = 3,
    ) -> None:
        self.prob = check_prob(prob, "prob", "inner_cutout")
        self.box_prob = check_prob(box_prob, "box_prob", "inner_cutout")
        if max_boxes < 0 or border < 0 or min(size_fraction) < 1:
            raise ValueError(
                f"inner_cutout: invalid max_boxes={max_boxes}, border={border} or size_fraction={size_fraction}"
            )
        self.max_boxes = int(max_boxes)
        self.size_fraction = (int(size_fraction[0]), int(size_fraction[1]))
        self.border = int(border)
        self._workspace = Workspace()

    def draw_boxes(
        self, n: int, spatial: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(start, size, active)`` of the boxes of ``n`` samples ((n, k, 3), (n, k, 3), (n, k))."""
        active = chained_counts(n, self.max_boxes, self.box_prob, generator, device)
        low = [d // self.size_fraction[0] for d in spatial]
        high = [d // self.size_fraction[1] for d in spatial]
        start, size = sample_boxes(n, spatial, low, high, self.border, generator, device, count=self.max_boxes)
        return start, size, active

    def holes(
        self,
        n: int,
        spatial: tuple[int, ...],
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(n, *spatial) 0/1 mask: union of the boxes drawn for ``n`` samples (same draws as :meth:`transform`)."""
        return union_of_boxes(*self.draw_boxes(n, spatial, generator, device), spatial, dtype, out)

    @dimension_agnostic
    def transform_(
        self, batch: torch.Tensor, generator: torch.Generator | None = None, rows: list[int] | None = None
    ) -> torch.Tensor:
        """Apply the cut-out in place to the samples ``rows`` of ``batch`` (default: all); returns ``batch``."""
        rows = list(range(batch.shape[0])) if rows is None else rows
        boxes = box_slices(*self.draw_boxes(len(rows), tuple(batch.shape[2:]), generator, batch.device))
        count = batch.shape[1] * box_voxels(boxes)
        if count == 0:
            return batch
        out = self._workspace.flat("noise", count, batch.dtype, batch.device)
        noise = uniform_noise((count,), generator, batch.device, batch.dtype, self._workspace, out=out)
        return fill_boxes_(batch, rows, boxes, noise)

    @dimension_agnostic
    def transform(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the cut-out to every sample of ``batch`` (B, C, D, H, W) or (B, C, H, W); ``batch`` is not modified."""
        return self.transform_(batch.clone(memory_format=torch.contiguous_format), generator)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        return run_with_prob("inner_cutout", batch, self.prob, generator, self.transform)
