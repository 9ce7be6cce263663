"""BraTS 2018: ``HGG/`` and ``LGG/`` folders of cases ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``.

Segmentation labels: 0 background, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing
tumour. Evaluation regions: whole tumour (> 0), tumour core (1 or 4), enhancing tumour (4).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from genesis.data.public.lits import read_label_map
from genesis.errors import DatasetLayoutError, VolumeReadError

MODALITIES = ("flair", "t1", "t1ce", "t2")
GRADES = ("HGG", "LGG")


@dataclass(frozen=True)
class BratsCase:
    """One BraTS case: id, grade, folder, image paths by modality, segmentation (None if absent)."""

    case_id: str
    grade: str
    directory: Path
    images: dict[str, Path]
    segmentation: Path | None


def _find(folder: Path, case: str, suffix: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        path = folder / f"{case}_{suffix}{ext}"
        if path.is_file():
            return path
    return None


def find_brats_cases(root: str | Path, grades: Sequence[str] = GRADES) -> list[BratsCase]:
    """Cases under ``root/HGG`` and ``root/LGG``.

    Raises:
        DatasetLayoutError: root missing, neither grade folder present, or a case lacks a modality.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError("BraTS root folder does not exist", root)
    present = [g for g in grades if (root / g).is_dir()]
    if not present:
        raise DatasetLayoutError(f"no {' or '.join(grades)} folder found (BraTS 2018 layout)", root)
    cases = []
    for grade in present:
        for folder in sorted(p for p in (root / grade).iterdir() if p.is_dir() and not p.name.startswith(".")):
            images = {m: _find(folder, folder.name, m) for m in MODALITIES}
            missing = [m for m, p in images.items() if p is None]
            if missing:
                raise DatasetLayoutError(
                    f"case lacks {', '.join(f'{folder.name}_{m}.nii.gz' for m in missing)}", folder
                )
            seg = _find(folder, folder.name, "seg")
            cases.append(BratsCase(folder.name, grade, folder, images, seg))  # type: ignore[arg-type]
    if not cases:
        raise DatasetLayoutError("no case folders in HGG/ or LGG/", root)
    return cases


def load_brats_case(
    case: BratsCase, modalities: Sequence[str] = MODALITIES
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float, float]]:
    """``(images, labels, spacing)``: float32 (C, z, y, x) in ``modalities`` order, uint8 labels or None,
    and the voxel spacing (z, y, x) mm.

    Raises:
        VolumeReadError: unreadable image or grids that differ between modalities.
    """
    from genesis.errors import GenesisError
    from genesis.io.readers import load_volume

    arrays, spacing = [], None
    for m in modalities:
        if m not in case.images:
            raise DatasetLayoutError(f"unknown BraTS modality {m!r}; use {MODALITIES}", case.directory)
        path = case.images[m]
        try:  # MRI: genesis' reader (header checks, NIfTI sform precedence) without the CT checks
            volume = load_volume(path, check=False)
        except GenesisError as exc:
            raise VolumeReadError(f"cannot read image ({exc.args[0] if exc.args else exc})", path) from exc
        array = volume.array.astype(np.float32)
        if arrays and array.shape != arrays[0].shape:
            raise VolumeReadError(f"shape {array.shape} differs from the other modalities' {arrays[0].shape}", path)
        arrays.append(array)
        spacing = spacing or tuple(float(s) for s in volume.spacing)
    labels = None
    if case.segmentation is not None:
        labels = read_label_map(case.segmentation)
        if labels.shape != arrays[0].shape:
            message = f"segmentation shape {labels.shape} differs from the images' {arrays[0].shape}"
            raise VolumeReadError(message, case.segmentation)
        bad = sorted(set(np.unique(labels).tolist()) - {0, 1, 2, 4})
        if bad:
            raise VolumeReadError(f"segmentation has labels {bad}; BraTS uses 0, 1, 2, 4", case.segmentation)
    return np.stack(arrays), labels, spacing  # type: ignore[return-value]


def whole_tumour(labels: np.ndarray) -> np.ndarray:
    """Whole tumour region: any label > 0."""
    return labels > 0


def tumour_core(labels: np.ndarray) -> np.ndarray:
    """Tumour core: necrotic/non-enhancing (1) or enhancing (4)."""
    return np.isin(labels, (1, 4))


def enhancing_tumour(labels: np.ndarray) -> np.ndarray:
    return labels == 4
