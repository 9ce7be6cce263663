"""NCS: lung nodule segmentation (LIDC-IDRI; Zhou et al. 2021 sec. 3.2.2).

Volumes are resampled to 1 x 1 x 1 mm and windowed to [-1000, 1000] HU. Training crops are
64 x 64 x 32 (``crop=(32, 64, 64)``) drawn around each nodule with random shifts of up to half the
crop (the nodule may sit anywhere in the crop, see :func:`finetune.data.random_crop`), and 30% at
random positions in the region. Evaluation is *not* on the training crops: every test nodule contributes a region
``evaluation.region_scale`` (default 2) times the crop, clipped to the volume, segmented by
sliding-window inference; Dice and IoU at probability 0.5 and the IoU averaged over the
thresholds 0.5..0.95 (the paper's NCS metric, thresholding the probability map) are computed per
region and averaged over regions.

Real layout (``--data``): LIDC-IDRI as distributed by TCIA, i.e. DICOM series folders each with
its reader XML (``LIDC-IDRI-0001/<study>/<series>/*.dcm`` + ``*.xml``), read with
:mod:`genesis.data.public.lidc`. A nodule mask is the union of the readers' contours of nodules
>= 3 mm (readers' ``roi`` polygons filled per slice); nodules marked by several readers are
merged by centre distance. Patients are split train/val/test by a hash of the patient id.

2D and 2.5D (``--view axial`` or ``--dims 2``; ``--view orthogonal``): a 2D U-Net on planes of the
same cases, predicting the test regions plane by plane and scored by the 3D Dice/IoU of the
stacked prediction (Zhou et al. 2021 sec. 4.5); see :mod:`finetune.slicewise`. The 2D crop is the
in-plane (H, W) of the 3D crop; ``--crop H W`` implies a depth of H / 2 (the 64x64x32 aspect).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune.data import SegCase, TargetData, clipped_box
from finetune.targets.base import SEGMENTATION_METRICS, Target, register_target
from finetune.targets._common import SYNTHETIC_NOTE, resample_pair, scale_to_mm, synthetic_cases, to_unit
from genesis.errors import ConfigError

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig


def nodule_cases(
    image01: np.ndarray,
    mask: np.ndarray,
    centers: list[tuple[float, float, float]],
    name: str,
    split: str,
    crop: tuple[int, int, int],
    region_scale: float,
) -> list[SegCase]:
    """One case per nodule: a 2x-crop training region, or an evaluation region of ``region_scale`` x crop."""
    scale = 2.0 if split == "train" else region_scale
    size = tuple(int(round(c * scale)) for c in crop)
    cases = []
    for k, c in enumerate(centers):
        box = clipped_box(image01.shape, c, size)
        local = [int(round(ci)) - b.start for ci, b in zip(c, box)]
        cases.append(SegCase(image=np.ascontiguousarray(image01[box]), mask=np.ascontiguousarray(mask[box]),
                             name=f"{name}/nodule-{k}", centers=[tuple(local)]))
    return cases


@register_target("ncs")
class NoduleSegmentation(Target):
    name = "ncs"
    title = "lung nodule segmentation (LIDC-IDRI)"
    task = "segmentation"
    metrics = SEGMENTATION_METRICS
    primary_metric = "iou_mean_thresholds"
    val_metric = "dice"
    default_crop = (32, 64, 64)
    quick_crop = (16, 32, 32)
    window = (-1000.0, 1000.0)
    spacing = (1.0, 1.0, 1.0)
    synthetic_shape = (96, 128, 128)
    real_layout = "LIDC-IDRI: <patient>/<study>/<series>/*.dcm with the reader XML (TCIA layout)"
    #: ``--view`` values that train a 2D U-Net on planes of the cases (see :mod:`finetune.slicewise`)
    slice_views = ("axial", "orthogonal")
    #: set by :meth:`load` for a 2D/2.5D view: the engine samples and predicts plane by plane
    slices = None

    def slice_view(self, cfg: "FinetuneConfig") -> str | None:
        """``axial`` / ``orthogonal`` for 2D / 2.5D inputs (``--dims 2`` alone means axial), else None."""
        view = cfg.view if cfg.view in self.slice_views else ("axial" if cfg.dims == 2 else None)
        if view is not None and cfg.dims == 3:
            raise ConfigError(f"--view {view} trains a 2D network on planes of the cubes; leave out --dims 3")
        if view is not None and cfg.channels not in ("repeat", "neighbors"):
            raise ConfigError(f"--channels {cfg.channels}: 2D/2.5D ncs takes 'repeat' (one slice) or 'neighbors' "
                              "(slices n-1, n, n+1 as channels)")
        return view

    def network_input(self, cfg: "FinetuneConfig") -> dict[str, int]:
        """``spatial_dims`` / ``in_channels`` of the network, known before the data (the load report)."""
        if self.slice_view(cfg) is None:
            return {}
        from finetune.slicewise import CONTEXT

        return {"spatial_dims": 2, "in_channels": CONTEXT[cfg.channels]}

    def volume_crop(self, cfg: "FinetuneConfig") -> tuple[int, int, int]:
        """The 3D training crop (D, H, W); a 2D ``--crop H W`` gets depth H / 2 (the 64x64x32 aspect)."""
        if cfg.crop is not None and len(cfg.crop) == 2:
            h, w = (int(c) for c in cfg.crop)
            return (max(h // 2, 1), h, w)
        return tuple(cfg.crop) if cfg.crop is not None else self.default_crop  # type: ignore[return-value]

    def crop(self, cfg: "FinetuneConfig") -> tuple[int, ...]:
        """The network's crop: (D, H, W), or its in-plane (H, W) for a 2D/2.5D view."""
        full = self.volume_crop(cfg)
        return full[1:] if self.slice_view(cfg) else full

    def load(self, cfg: "FinetuneConfig") -> TargetData:
        view = self.slice_view(cfg)
        if view is not None:
            from finetune.slicewise import slice_input

            self.slices = slice_input(view, cfg.channels, self.volume_crop(cfg), self.crop(cfg))
            net = self.network_input(cfg)
            self.spatial_dims, self.in_channels = net["spatial_dims"], net["in_channels"]
        return super().load(cfg)

    def load_synthetic(self, cfg: "FinetuneConfig") -> TargetData:
        crop, window = self.volume_crop(cfg), self.hu_window(cfg)
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        for split, i, ct in synthetic_cases(cfg, self.synthetic_shape, self.spacing):
            centers = [f.center_zyx for f in ct.findings if f.kind == "nodule" and f.label == 1]
            splits[split] += nodule_cases(to_unit(ct.volume, window), ct.masks["nodules"], centers,
                                          f"synthetic-{split}-{i}", split, crop, cfg.evaluation.region_scale)
        return TargetData(**splits, synthetic=True, source=f"{SYNTHETIC_NOTE}: nodules at 1 mm")

    def load_real(self, root: Path, cfg: "FinetuneConfig") -> TargetData:
        from finetune.targets._lidc import lidc_nodule_volumes

        crop, window = self.volume_crop(cfg), self.hu_window(cfg)
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        for patient, split, volume, mask, centers in lidc_nodule_volumes(root):
            vol, masks = resample_pair(volume, {"nodules": mask}, self.spacing)
            centers = [scale_to_mm(c, volume.spacing, vol.spacing) for c in centers]
            splits[split] += nodule_cases(to_unit(vol, window), masks["nodules"], centers, patient, split,
                                          crop, cfg.evaluation.region_scale)
        return TargetData(**splits, synthetic=False, source=f"LIDC-IDRI at {root}")
