"""Synthetic chest CT (the default dataset when no data is given) and synthetic target stand-ins.

Everything produced here is synthetic and says so (``volume.metadata["synthetic"] = True``,
a README in written datasets, "SYNTHETIC" in montage titles).

Chest CT (:func:`generate_chest_ct`): default grid (96, 160, 160) voxels at (2.5, 2.0, 2.0) mm,
i.e. a whole adult chest (240 mm from the upper abdomen to the lung apices, 320 mm field of
view); about 0.8 s of CPU per volume. All sizes are physical, so ``shape``/``spacing`` may change
freely (coarse grids for tests, fine grids for nodule work). HU values (methods.md section 9):

=========================  =====================================================
air / outside body         -1000 (+ noise)
subcutaneous fat / muscle  -100 / 45
lungs                      parenchyma about -900 with texture and a posterior
                           gravity gradient; mask mean about -840 incl. vessels
vessels, heart             35-45 plain; CTPA: pulmonary arteries and right heart
                           250-380, aorta/left heart 130-190, veins 110-160
airways                    air lumen, 30 HU wall (trachea, bronchi, tree)
bones                      ribs (cortex 850 / marrow 280, costal cartilage 120),
                           vertebrae (cortex 800 / cancellous 250, discs 80),
                           sternum
nodules                    solid 10-50; ground glass -650..-450; part-solid =
                           ground glass with a solid core; 3-30 mm log-uniform
candidates (label 0)       vessel crossings (blood HU), linear scars (-100..20)
emboli (CTPA only)         20-60 HU filling defects inside pulmonary arteries
scanner                    Gaussian blur 0.5 voxel, noise sd 20 HU correlated
                           over ~1 voxel
=========================  =====================================================

Masks (uint8): ``body, lungs, bones, heart, vessels, pulmonary_arteries, airways, nodules,
emboli, candidates``. Findings are :class:`Finding` records with voxel centres (z, y, x).
:func:`write_synthetic_dataset` / ``genesis-synth`` write NIfTI (or LUNA16-style ``.mhd`` in
``subsetN/``) volumes, masks, ``findings.csv`` and LUNA16 ``annotations.csv``/``candidates.csv``.

Targets (:func:`generate_target_case`): ``"liver"`` abdominal CT with liver lesions (LiTS labels)
and ``"brain"`` FLAIR-like MRI with a glioma (BraTS labels), see :mod:`.targets`.
"""

from genesis.data.synthetic.chest import MASK_NAMES, generate_chest_ct, resolve_config
from genesis.data.synthetic.config import SYNTHETIC_DESCRIPTION, Finding, SyntheticConfig, SyntheticCT
from genesis.data.synthetic.targets import TARGET_KINDS, TargetCase, generate_target_case
from genesis.data.synthetic.writer import (
    case_seed,
    case_uid,
    save_case_montage,
    save_mask,
    write_synthetic_dataset,
)

__all__ = [
    "MASK_NAMES",
    "SYNTHETIC_DESCRIPTION",
    "TARGET_KINDS",
    "Finding",
    "SyntheticCT",
    "SyntheticConfig",
    "TargetCase",
    "case_seed",
    "case_uid",
    "generate_chest_ct",
    "generate_target_case",
    "resolve_config",
    "save_case_montage",
    "save_mask",
    "write_synthetic_dataset",
]
