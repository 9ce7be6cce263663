"""LCS: liver segmentation (LiTS 2017; Zhou et al. 2021 sec. 3.2.4).

The liver (LiTS labels 1 liver and 2 lesion, i.e. the whole organ with its tumours) is the
positive class. Volumes are resampled to 2 mm isotropic and windowed to [-1000, 1000] HU (the
pretraining window, so the pretrained features see familiar intensities; set ``window`` for
e.g. [-160, 240]). Training crops (default 64 x 64 x 32) are drawn on and around the liver;
evaluation is on *whole test volumes* by sliding-window inference; metrics Dice and IoU.

Real layout (``--data``): the LiTS release, read with :mod:`genesis.data.public.lits`:
``volume-N.nii`` and ``segmentation-N.nii`` (``.nii.gz`` too) in any sub-folders ("Training Batch
1/2"). The split is 100/15/15 in the paper; here cases are split by a hash of their number
(70/15/15). Volumes without a segmentation (the challenge test set) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune.data import TargetData, assign_splits
from finetune.targets.base import SEGMENTATION_METRICS, Target, register_target
from finetune.targets._common import SPLIT_OFFSETS, split_sizes, resample_pair, to_unit
from finetune.targets._volumes import volume_case

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig


@register_target("lcs")
class LiverSegmentation(Target):
    name = "lcs"
    title = "liver segmentation (LiTS 2017)"
    task = "segmentation"
    metrics = SEGMENTATION_METRICS
    primary_metric = "iou"
    val_metric = "dice"
    default_crop = (32, 64, 64)
    quick_crop = (16, 32, 32)
    window = (-1000.0, 1000.0)
    spacing = (2.0, 2.0, 2.0)
    real_layout = "LiTS: volume-N.nii[.gz] + segmentation-N.nii[.gz] (any sub-folders)"

    def load_synthetic(self, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.synthetic.targets import generate_target_case

        window = self.hu_window(cfg)
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        for split, n in split_sizes(cfg).items():
            for i in range(n):
                seed = cfg.synthetic.seed + SPLIT_OFFSETS[split] + i
                case = generate_target_case(seed, kind="liver", shape=cfg.synthetic.shape)
                splits[split].append(volume_case(to_unit(case.volume, window), case.masks["liver"],
                                                 f"synthetic-liver-{split}-{i}", seed))
        return TargetData(**splits, synthetic=True,
                          source="SYNTHETIC abdominal CT liver stand-in (genesis.data.synthetic.generate_target_case; not patient data)")

    def load_real(self, root: Path, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.public.lits import find_lits_cases, load_lits_case

        window = self.hu_window(cfg)
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        cases = [c for c in find_lits_cases(root) if c.segmentation_path is not None]
        assignment = assign_splits([f"volume-{c.case_id}" for c in cases])
        for case in cases:
            if case.segmentation_path is None:
                continue
            volume, labels = load_lits_case(case)
            volume, masks = resample_pair(volume, {"liver": (labels >= 1).astype(np.uint8)}, self.spacing)
            name = f"volume-{case.case_id}"
            splits[assignment[name]].append(volume_case(to_unit(volume, window), masks["liver"], name, case.case_id))
        return TargetData(**splits, synthetic=False, source=f"LiTS at {root}")
