"""Outer cut-out (out-painting) of Models Genesis: only a few boxes of the cube survive.

Zhou et al. 2021 (Models Genesis, MedIA), section 2.4: the cube is replaced by noise except for
boxes of the original, and the network extrapolates the rest. Reference ``image_out_painting``:
one box is always kept, then while fewer than 4 more and ``random() < 0.95`` another one; each
side is ``dim - randint(3*dim//7, 4*dim//7)`` and the box starts at least 3 voxels from the border.

Speed: the kept boxes of all samples become one 0/1 mask (a batched matrix product, see
``_boxes.union_of_boxes``) and each sample is one blend of the noise and the original; the noise
is drawn once per call and read by each sample at its own random offset (``batch_noise``). On
contiguous float32/64 CPU batches (``use_kernels``) a compiled loop (``_cpu_kernels``) copies the
noise into the runs of each row outside the boxes instead, straight from the raw 16-bit draws:
the same draws and the same result, without the mask, the blend or the conversion pass.
"""

from __future__ import annotations

import torch

from proxy_tasks import _cpu_kernels
from proxy_tasks._boxes import chained_counts, sample_boxes, union_of_boxes
from proxy_tasks._genesis_common import (
    Workspace,
    batch_noise,
    batch_noise_bits,
    blend_rows_,
    check_prob,
    dimension_agnostic,
    run_with_prob,
)
from proxy_tasks.base import ProxyPair, ProxyTask, register_task


@register_task("outer_cutout")
class OuterCutout(ProxyTask):
    """Replace the cube by uniform noise in [0, 1) except up to ``max_boxes`` kept boxes.

    Args:
        prob: probability that a sample is transformed (reference ``paint_rate`` 0.9).
        max_boxes: most kept boxes (reference 1 + 4).
        box_prob: probability of each box after the first (reference 0.95).
        cut_fraction: (low, high) fractions: a side is ``dim - randint(low*dim//1, high*dim//1)`` with
            the reference's integer arithmetic ``3*dim//7`` and ``4*dim//7`` for (3/7, 4/7).
        border: voxels kept free at each face (reference 3).
        use_kernels: on contiguous float32/64 CPU batches, write the noise outside the boxes in
            one compiled loop (``_cpu_kernels``, numba) instead of a box-count volume and a blend:
            the same draws and the same result. False forces the torch path.
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
        cut_fraction: tuple[tuple[int, int], tuple[int, int]] = ((3, 7), (4, 7)),
        border: int = 3,
        use_kernels: bool = True,
    ) -> None:
        self.prob = check_prob(prob, "prob", "outer_cutout")
        self.box_prob = check_prob(box_prob, "box_prob", "outer_cutout")
        if max_boxes < 1 or border < 0:
            raise ValueError(f"outer_cutout: need max_boxes >= 1 and border >= 0, got {max_boxes}, {border}")
        (a, b), (c, d) = cut_fraction
        if b <= 0 or d <= 0 or not 0 <= a / b <= c / d <= 1:
            raise ValueError(f"outer_cutout: cut_fraction must be fractions 0 <= low <= high <= 1, got {cut_fraction}")
        self.max_boxes = int(max_boxes)
        self.cut_fraction = ((int(a), int(b)), (int(c), int(d)))
        self.border = int(border)
        self.use_kernels = bool(use_kernels)
        self._workspace = Workspace()

    def draw_boxes(
        self, n: int, spatial: tuple[int, ...], generator: torch.Generator | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(start, size, active)`` of the kept boxes of ``n`` samples ((n, k, 3), (n, k, 3), (n, k))."""
        (a, b), (c, d) = self.cut_fraction
        active = chained_counts(n, self.max_boxes, self.box_prob, generator, device, first_always=True)
        # side = dim - randint(a*dim//b, c*dim//d): the larger cut gives the smaller box
        low = [dim - c * dim // d for dim in spatial]
        high = [dim - a * dim // b for dim in spatial]
        start, size = sample_boxes(n, spatial, low, high, self.border, generator, device, count=self.max_boxes)
        return start, size, active

    def kept(
        self,
        n: int,
        spatial: tuple[int, ...],
        generator: torch.Generator | None,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(n, *spatial) 0/1 mask: union of the boxes of the original that are kept (same draws as :meth:`transform`)."""
        return union_of_boxes(*self.draw_boxes(n, spatial, generator, device), spatial, dtype, out)

    @dimension_agnostic
    def transform_(
        self, batch: torch.Tensor, generator: torch.Generator | None = None, rows: list[int] | None = None
    ) -> torch.Tensor:
        """Apply the out-painting in place to the samples ``rows`` of ``batch`` (default: all); returns ``batch``."""
        rows = list(range(batch.shape[0])) if rows is None else rows
        if self.use_kernels and _cpu_kernels.usable(batch):
            boxes = self.draw_boxes(len(rows), tuple(batch.shape[2:]), generator, batch.device)
            bits, offsets = batch_noise_bits(len(rows), batch[0].numel(), generator, batch.device, self._workspace)
            _cpu_kernels.fill_outside_boxes_(batch, rows, boxes, bits, offsets)
            return batch
        kept, noise = self._draw(len(rows), batch, generator)
        return blend_rows_(batch, rows, noise, kept, keep_where_one=True)

    @dimension_agnostic
    def transform(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply the out-painting to every sample of ``batch`` (B, C, D, H, W) or (B, C, H, W); ``batch`` is not modified."""
        if self.use_kernels and _cpu_kernels.usable(batch):
            return self.transform_(batch.clone(memory_format=torch.contiguous_format), generator)
        kept, noise = self._draw(batch.shape[0], batch, generator)
        return torch.lerp(noise.view(batch.shape), batch, kept)

    def _draw(
        self, n: int, batch: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept-box mask (n, 1, *spatial) (0/1 in the batch's float type) and the noise (n, C * voxels)."""
        dtype = batch.dtype if batch.dtype in (torch.float32, torch.float64) else torch.float32
        spatial = tuple(batch.shape[2:])
        mask = self._workspace.get("mask", (n, *spatial), dtype, batch.device)
        kept = self.kept(n, spatial, generator, batch.device, dtype, out=mask).to(batch.dtype).unsqueeze(1)
        noise = batch_noise(n, batch[0].numel(), generator, batch.device, batch.dtype, self._workspace)
        return kept, noise

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        return run_with_prob("outer_cutout", batch, self.prob, generator, self.transform)
