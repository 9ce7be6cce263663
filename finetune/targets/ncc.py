"""NCC: lung nodule false-positive reduction (LUNA16 candidates; Zhou et al. 2021 sec. 3.2.1).

Each candidate becomes a cube of the crop size (default 64 x 64 x 32, ``crop=(32, 64, 64)``) around
its centre on a 1 mm grid, windowed to [-1000, 1000] HU; label 1 for a true nodule, 0 for a false
positive. The metric is the candidate-level AUC.

Real layout (``--data``): the LUNA16 release, read with :mod:`genesis.data.public.luna16`:
``subset0..subset9/<seriesuid>.mhd`` (+ ``.raw``) and ``candidates.csv`` (or ``candidates_V2.csv``)
with ``seriesuid,coordX,coordY,coordZ,class`` in world millimetres. Split as in the Models Genesis
reference: subsets 0-4 train, 5-6 validation, 7-9 test (patient-level by construction).
LUNA16 has ~550k-750k candidates, overwhelmingly negative: all positives and at most
``max_negatives_per_scan`` (default 30) randomly chosen negatives per scan are kept in every split
(the same ones in every run), stored as float16; training draws positives and negatives equally
often (``balance``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune.data import ClsSample, TargetData, extract_patch
from finetune.targets.base import CLASSIFICATION_METRICS, Target, register_target
from genesis.errors import DatasetLayoutError
from finetune.targets._common import SYNTHETIC_NOTE, candidate_samples, limit_negatives, synthetic_cases, to_unit

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig

@register_target("ncc")
class NoduleClassification(Target):
    name = "ncc"
    title = "lung nodule false-positive reduction (LUNA16)"
    task = "classification"
    metrics = CLASSIFICATION_METRICS
    primary_metric = "auc"
    val_metric = "auc"
    default_crop = (32, 64, 64)
    quick_crop = (16, 32, 32)
    window = (-1000.0, 1000.0)
    spacing = (1.0, 1.0, 1.0)
    synthetic_shape = (96, 128, 128)
    real_layout = "LUNA16: subset*/<seriesuid>.mhd/.raw + candidates.csv (world mm)"
    max_negatives_per_scan = 30

    def load_synthetic(self, cfg: "FinetuneConfig") -> TargetData:
        crop, window = self.crop(cfg), self.hu_window(cfg)
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        for split, i, ct in synthetic_cases(cfg, self.synthetic_shape, self.spacing):
            image = to_unit(ct.volume, window)
            group = f"synthetic-{split}-{i}"
            for k, f in enumerate(ct.findings):
                if f.kind in ("nodule", "candidate"):
                    splits[split].append(ClsSample(extract_patch(image, f.center_zyx, crop), int(f.label), group,
                                                   f"{group}/{f.kind}-{k}-{f.subtype}"))
        return TargetData(**splits, synthetic=True,
                          source=f"{SYNTHETIC_NOTE}: nodules (label 1) vs nodule-like candidates (label 0)")

    def load_real(self, root: Path, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.public.luna16 import REFERENCE_SPLIT, Luna16

        crop, window = self.crop(cfg), self.hu_window(cfg)
        luna = Luna16(root)
        if not luna.candidates:
            raise DatasetLayoutError("no candidates.csv / candidates_V2.csv (LUNA16 layout)", root)
        by_series: dict[str, list] = {}
        for c in luna.candidates:
            by_series.setdefault(c.seriesuid, []).append(c)
        subset_split = {s: name for name, subsets in REFERENCE_SPLIT.items() for s in subsets}
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        limit = self.max_negatives_per_scan if cfg.max_negatives_per_scan is None else cfg.max_negatives_per_scan
        for scan in luna.scans:
            if scan.seriesuid not in by_series:
                continue
            kept = limit_negatives(by_series[scan.seriesuid], limit, scan.seriesuid)
            splits[subset_split.get(scan.subset, "train")] += candidate_samples(
                cfg, "ncc", scan.path, lambda uid=scan.seriesuid: luna.load(uid), kept, crop, window, self.spacing,
                scan.seriesuid)
        return TargetData(**splits, synthetic=False, source=f"LUNA16 at {root}")
