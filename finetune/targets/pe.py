"""PE: study-level pulmonary embolism detection (RSNA PE; Ke et al. 2023).

Each CT pulmonary angiogram is windowed to [-100, 900] HU (centre 400, width 1000, as PENet),
resized in-plane to 8/7 of the crop's H x W (Ke et al.: 256 for a 224 crop; random crops in training
rotated up to 20 degrees, centre crops in evaluation) and cut into windows of D consecutive slices
(stride D/2; D = 32, or 24 for PENet).
A window is positive when at least ``min(4, D // 4)`` of its slices show PE (Ke et al.: 4 of 32).
Training uses windows with positives and negatives drawn equally often (their "positives
upsampled to balance"); the *study* prediction is the maximum over its windows and the metric is
the study-level AUC (bootstrap resamples studies).

Real layout (``--data``): the RSNA STR Pulmonary Embolism Detection release, read with
:mod:`genesis.data.public.rsna_pe`: ``train.csv`` (``StudyInstanceUID, SeriesInstanceUID,
SOPInstanceUID, pe_present_on_image, negative_exam_for_pe, ...``) and
``train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. Studies are split by a hash
of the StudyInstanceUID (70/15/15).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from finetune.data import ClsSample, TargetData, assign_splits
from finetune.study import stored_side
from finetune.targets.base import CLASSIFICATION_METRICS, Target, register_target
from finetune.targets._common import SYNTHETIC_NOTE, cached_array, split_sizes, to_unit

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig


def study_windows(
    image01: np.ndarray, slice_labels: np.ndarray, crop: tuple[int, int, int], study: str
) -> list[ClsSample]:
    """Windows of ``crop[0]`` slices (stride half a window), in-plane resized to ``stored_side(crop[1:])``.

    Ke et al. resize slices to 256 and crop 224: windows are stored at 8/7 of the crop in-plane, and
    the training loop cuts random crops (evaluation: centre crops) of ``crop[1:]`` from them.
    """
    depth = crop[0]
    size = (image01.shape[0], stored_side(crop[1]), stored_side(crop[2]))
    vol = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None, None]
    vol = F.interpolate(vol, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
    if vol.shape[0] < depth:  # short studies: pad with air (0 after windowing)
        pad = depth - vol.shape[0]
        vol = np.pad(vol, ((0, pad), (0, 0), (0, 0)))
        slice_labels = np.pad(slice_labels, (0, pad))
    need = max(1, min(4, depth // 4))
    starts = list(range(0, vol.shape[0] - depth + 1, max(1, depth // 2)))
    if starts[-1] != vol.shape[0] - depth:
        starts.append(vol.shape[0] - depth)
    return [ClsSample(np.ascontiguousarray(vol[s:s + depth]), int(slice_labels[s:s + depth].sum() >= need), study,
                      f"{study}/slices-{s}-{s + depth - 1}") for s in starts]


@register_target("pe")
class PEDetection(Target):
    name = "pe"
    title = "study-level pulmonary embolism detection (RSNA PE)"
    task = "classification"
    metrics = CLASSIFICATION_METRICS
    primary_metric = "auc"
    val_metric = "auc"
    aggregate = "max"
    fraction_by_group = True
    default_crop = (32, 128, 128)
    quick_crop = (16, 32, 32)
    penet_window = 24  # PENet reads 24-slice windows (Huang et al. 2020; Ke et al. 2023)
    rotate_degrees = 20.0  # random in-plane rotation in training (Ke et al.)
    window = (-100.0, 900.0)
    synthetic_shape = (96, 128, 128)
    synthetic_spacing = (2.5, 2.5, 2.5)
    real_layout = "RSNA PE: train.csv + train/<study>/<series>/<SOP>.dcm"

    def crop(self, cfg: "FinetuneConfig") -> tuple[int, int, int]:
        """``--crop``, else 32-slice windows (24 for PENet, as its authors and Ke et al.)."""
        if cfg.crop is not None:
            return tuple(cfg.crop)  # type: ignore[return-value]
        uses_penet = cfg.model == "penet" or (cfg.model is None and str(cfg.weights or "").startswith("penet."))
        return (self.penet_window, *self.default_crop[1:]) if uses_penet else self.default_crop

    def load_synthetic(self, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.synthetic import generate_chest_ct

        crop, window = self.crop(cfg), self.hu_window(cfg)
        shape = tuple(cfg.synthetic.shape) if cfg.synthetic.shape is not None else self.synthetic_shape
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        offsets = {"train": 0, "val": 100_000, "test": 200_000}
        for split, n in split_sizes(cfg).items():
            for i in range(n):
                positive = i % 2 == 0  # half the studies have emboli, half none
                ct = generate_chest_ct(cfg.synthetic.seed + offsets[split] + i, shape=shape,
                                       spacing=self.synthetic_spacing, contrast=True,
                                       n_emboli=(2, 4) if positive else 0)
                labels = ct.masks["emboli"].reshape(ct.masks["emboli"].shape[0], -1).any(axis=1).astype(np.int64)
                splits[split] += study_windows(to_unit(ct.volume, window), labels, crop, f"synthetic-study-{split}-{i}")
        return TargetData(**splits, synthetic=True, source=f"{SYNTHETIC_NOTE}: CTPA studies with and without emboli")

    def load_real(self, root: Path, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.public.lidc import slice_index_by_sop
        from genesis.data.public.rsna_pe import load_rsna_pe
        from genesis.io import load_volume

        crop, window = self.crop(cfg), self.hu_window(cfg)
        splits: dict[str, list] = {"train": [], "val": [], "test": []}
        studies = [s for s in load_rsna_pe(root) if s.pe_present is not None]  # unlabelled (test.csv) skipped
        assignment = assign_splits([s.study_uid for s in studies])
        for study in studies:
            def windows(study=study) -> tuple[np.ndarray, dict]:
                volume = load_volume(study.directory)
                by_sop, _ = slice_index_by_sop(study.directory, volume)  # slice file -> z index of the volume
                labels = np.zeros(volume.shape[0], dtype=np.int64)
                for s in study.slices:
                    k = by_sop.get(s.sop_uid)
                    if k is not None and s.pe_present:
                        labels[k] = 1
                ws = study_windows(to_unit(volume, window), labels, crop, study.study_uid)
                return (np.stack([w.image for w in ws]).astype(np.float16),
                        {"labels": [w.label for w in ws], "names": [w.name for w in ws]})

            images, meta = cached_array(cfg, "pe", study.slices[0].path,
                                        (study.study_uid, len(study.slices), crop, window, "stored-8/7"), windows)
            for image, label, name in zip(images, meta["labels"], meta["names"]):
                splits[assignment[study.study_uid]].append(ClsSample(image, int(label), study.study_uid, name))
        return TargetData(**splits, synthetic=False, source=f"RSNA PE at {root}")
