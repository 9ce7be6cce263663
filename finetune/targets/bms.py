"""BMS: brain tumour segmentation on MRI FLAIR (BraTS 2018; Zhou et al. 2021 sec. 3.2.5).

The whole tumour (every BraTS label > 0: necrotic core 1, oedema 2, enhancing 4) is the positive
class, from the FLAIR sequence only. MRI has no Hounsfield scale, so each volume is scaled by the
0.5 / 99.5 percentiles of its non-zero (brain) voxels to [0, 1] instead of a HU window. Training
crops (default 64 x 64 x 32) are drawn on and around the tumour; evaluation is on *whole test
volumes* by sliding-window inference; metrics Dice and IoU.

Real layout (``--data``): BraTS 2018 training data, read with :mod:`genesis.data.public.brats`:
``HGG/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` and ``LGG/...``. The paper uses 3-fold cross
validation; here cases are split by a hash of the case id (70/15/15).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune.data import TargetData, assign_splits
from finetune.targets.base import SEGMENTATION_METRICS, Target, register_target
from finetune.targets._common import SPLIT_OFFSETS, normalise_mri, split_sizes
from finetune.targets._volumes import volume_case

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig


@register_target("bms")
class BrainTumourSegmentation(Target):
    name = "bms"
    title = "brain tumour segmentation, MRI FLAIR (BraTS 2018)"
    task = "segmentation"
    metrics = SEGMENTATION_METRICS
    primary_metric = "iou"
    val_metric = "dice"
    default_crop = (32, 64, 64)
    quick_crop = (16, 32, 32)
    window = (0.0, 1.0)  # unused: MRI is normalised per volume
    real_layout = "BraTS 2018: HGG|LGG/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz"

    def load_synthetic(self, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.synthetic.targets import generate_target_case

        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        for split, n in split_sizes(cfg).items():
            for i in range(n):
                seed = cfg.synthetic.seed + SPLIT_OFFSETS[split] + i
                case = generate_target_case(seed, kind="brain", shape=cfg.synthetic.shape)
                splits[split].append(volume_case(normalise_mri(case.volume.array), case.masks["tumour"],
                                                 f"synthetic-brain-{split}-{i}", seed))
        return TargetData(**splits, synthetic=True,
                          source="SYNTHETIC FLAIR-like brain MRI stand-in (genesis.data.synthetic.generate_target_case; not patient data)")

    def load_real(self, root: Path, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.public.brats import find_brats_cases, load_brats_case, whole_tumour

        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        cases = find_brats_cases(root)
        assignment = assign_splits([c.case_id for c in cases if c.segmentation is not None])
        for k, case in enumerate(cases):
            if case.segmentation is None:
                continue
            images, labels, _ = load_brats_case(case, modalities=("flair",))
            mask = whole_tumour(labels).astype(np.uint8)
            splits[assignment[case.case_id]].append(volume_case(normalise_mri(images[0]), mask, case.case_id, k))
        return TargetData(**splits, synthetic=False, source=f"BraTS 2018 (FLAIR) at {root}")
