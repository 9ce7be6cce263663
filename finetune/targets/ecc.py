"""ECC: pulmonary embolism false-positive reduction (Zhou et al. 2021 sec. 3.2.3).

PE candidates (from a candidate generator such as the toboggan algorithm of Liang & Bi 2007) are
classified as true emboli (1) or false positives (0) from 64 x 64 x 64 cubes (``crop=(64, 64,
64)``) of CT pulmonary angiograms on a 1 mm grid, windowed to [-1000, 1000] HU; the metric is the
candidate-level AUC, as in the paper.

Real layout (``--data ROOT``; the PE-CAD data of the paper are not public, so this is our
documented layout for any CTPA collection):

    ROOT/candidates.csv     seriesuid,coordX,coordY,coordZ,class   (world mm, ITK/LPS; class 1/0)
    ROOT/volumes/<seriesuid>.nii.gz | .nii | .mhd | .mha | .nrrd, or a DICOM folder <seriesuid>/
    ROOT/split.csv          optional: seriesuid,split (train|val|test); otherwise a hash of the
                            seriesuid splits patients 70/15/15

The column names are those of LUNA16's ``candidates.csv``, so the same reader is used.

Synthetic default: contrast-enhanced synthetic chest CT; positives at the emboli, negatives at
random points inside the pulmonary arteries away from every embolus (vessel look-alikes, as a
candidate generator's false positives are).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune.data import ClsSample, TargetData, assign_splits, extract_patch
from finetune.targets.base import CLASSIFICATION_METRICS, Target, register_target
from finetune.targets._common import (
    SPLIT_OFFSETS,
    SYNTHETIC_NOTE,
    candidate_samples,
    limit_negatives,
    require_dir,
    synthetic_cases,
    to_unit,
)
from genesis.errors import DatasetLayoutError
from genesis.rng import numpy_generator

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha", ".nrrd")


def vessel_negatives(pa_mask: np.ndarray, emboli_mask: np.ndarray, n: int, min_dist: float,
                     rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Random pulmonary-artery voxels at least ``min_dist`` voxels from every embolus voxel."""
    from scipy import ndimage

    far = ndimage.distance_transform_edt(emboli_mask == 0) >= min_dist if emboli_mask.any() else np.ones_like(pa_mask, bool)
    idx = np.argwhere((pa_mask > 0) & far)
    if idx.size == 0:
        return []
    pick = rng.choice(len(idx), size=min(n, len(idx)), replace=False)
    return [tuple(int(v) for v in idx[p]) for p in pick]


def find_volume(root: Path, seriesuid: str) -> Path:
    """``ROOT/volumes/<seriesuid>`` with any supported suffix, or a DICOM folder of that name."""
    base = root / "volumes"
    for suffix in VOLUME_SUFFIXES:
        if (base / f"{seriesuid}{suffix}").is_file():
            return base / f"{seriesuid}{suffix}"
    if (base / seriesuid).is_dir():
        return base / seriesuid
    raise DatasetLayoutError(f"no volume for seriesuid {seriesuid!r} (looked for volumes/{seriesuid}.nii.gz, .mhd, ... or a DICOM folder)", base)


def read_split(root: Path) -> dict[str, str]:
    path = root / "split.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"seriesuid", "split"} <= set(rows[0]):
        raise DatasetLayoutError("split.csv needs the columns seriesuid,split", path)
    out = {r["seriesuid"]: r["split"].strip() for r in rows}
    bad = sorted({s for s in out.values() if s not in ("train", "val", "test")})
    if bad:
        raise DatasetLayoutError(f"unknown split name(s) {bad}; use train, val or test", path)
    return out


@register_target("ecc")
class EmbolusClassification(Target):
    name = "ecc"
    title = "pulmonary embolism false-positive reduction (CTPA candidates)"
    task = "classification"
    metrics = CLASSIFICATION_METRICS
    primary_metric = "auc"
    val_metric = "auc"
    default_crop = (64, 64, 64)
    quick_crop = (32, 32, 32)
    window = (-1000.0, 1000.0)
    spacing = (1.0, 1.0, 1.0)
    synthetic_shape = (96, 128, 128)
    negatives_per_case = 6
    real_layout = "ROOT/candidates.csv (seriesuid,coordX,coordY,coordZ,class; world mm) + ROOT/volumes/<seriesuid>.*"

    def load_synthetic(self, cfg: "FinetuneConfig") -> TargetData:
        crop, window = self.crop(cfg), self.hu_window(cfg)
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        for split, i, ct in synthetic_cases(cfg, self.synthetic_shape, self.spacing, contrast=True, n_emboli=(2, 4)):
            image = to_unit(ct.volume, window)
            group = f"synthetic-ctpa-{split}-{i}"
            emboli = [f for f in ct.findings if f.kind == "embolus"]
            for k, f in enumerate(emboli):
                splits[split].append(ClsSample(extract_patch(image, f.center_zyx, crop), 1, group, f"{group}/embolus-{k}"))
            rng = numpy_generator(cfg.synthetic.seed, SPLIT_OFFSETS[split] + i)
            for k, c in enumerate(vessel_negatives(ct.masks["pulmonary_arteries"], ct.masks["emboli"],
                                                   self.negatives_per_case, 8.0, rng)):
                splits[split].append(ClsSample(extract_patch(image, c, crop), 0, group, f"{group}/vessel-{k}"))
        return TargetData(**splits, synthetic=True,
                          source=f"{SYNTHETIC_NOTE}: CTPA emboli (label 1) vs artery look-alike candidates (label 0)")

    def load_real(self, root: Path, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.public.luna16 import read_candidates
        from genesis.io import load_volume

        require_dir(root, "candidates.csv and volumes/")
        crop, window = self.crop(cfg), self.hu_window(cfg)
        candidates = read_candidates(root / "candidates.csv")
        split_table = read_split(root)
        by_series: dict[str, list] = {}
        for c in candidates:
            by_series.setdefault(c.seriesuid, []).append(c)
        assignment = assign_splits(list(by_series))
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        for seriesuid in sorted(by_series):
            split = split_table.get(seriesuid) or assignment[seriesuid]
            path = find_volume(root, seriesuid)
            kept = limit_negatives(by_series[seriesuid], cfg.max_negatives_per_scan, seriesuid)
            splits[split] += candidate_samples(cfg, "ecc", path, lambda p=path: load_volume(p), kept, crop, window,
                                               self.spacing, seriesuid)
        return TargetData(**splits, synthetic=False, source=f"CTPA candidates at {root}")
