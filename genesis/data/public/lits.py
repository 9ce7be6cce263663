"""LiTS 2017 (Liver Tumor Segmentation): ``volume-N.nii`` with ``segmentation-N.nii``.

Files may sit in any sub-folders (the challenge shipped "Training Batch 1/2"); labels are
0 background, 1 liver, 2 tumour. Test volumes have no segmentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from genesis.errors import DatasetLayoutError, VolumeReadError

LABELS = {"background": 0, "liver": 1, "tumour": 2}
_PATTERN = re.compile(r"(volume|segmentation)-(\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class LitsCase:
    """One LiTS case: number, CT volume path and segmentation path (None for test cases)."""

    case_id: int
    volume_path: Path
    segmentation_path: Path | None


def find_lits_cases(root: str | Path) -> list[LitsCase]:
    """All ``volume-N.nii[.gz]`` under ``root`` (recursive), matched with ``segmentation-N``.

    Raises:
        DatasetLayoutError: root missing or no ``volume-N.nii`` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError("LiTS root folder does not exist", root)
    volumes: dict[int, Path] = {}
    segs: dict[int, Path] = {}
    for path in sorted(root.rglob("*.nii*")):
        match = _PATTERN.match(path.name)
        if match:
            (volumes if match.group(1) == "volume" else segs)[int(match.group(2))] = path
    if not volumes:
        raise DatasetLayoutError("no volume-N.nii / volume-N.nii.gz files found (LiTS layout)", root)
    return [LitsCase(i, volumes[i], segs.get(i)) for i in sorted(volumes)]


def load_lits_case(case: LitsCase):
    """``(volume, labels)``: the CT as ``genesis.io.Volume`` (HU) and uint8 labels (None if absent).

    Raises:
        VolumeReadError: unreadable file, or a segmentation whose grid differs from the volume.
    """
    from genesis.io import load_volume

    volume = load_volume(case.volume_path)
    if case.segmentation_path is None:
        return volume, None
    labels = read_label_map(case.segmentation_path)
    if labels.shape != volume.shape:
        message = f"segmentation shape {labels.shape} differs from the volume's {volume.shape}"
        raise VolumeReadError(message, case.segmentation_path)
    return volume, labels


def read_label_map(path: str | Path) -> np.ndarray:
    """A label image (NIfTI, ...) as uint8 (z, y, x)."""
    from genesis.errors import GenesisError
    from genesis.io.readers import load_volume

    try:  # the images' reader and header rules (NIfTI sform/qform precedence), no HU checks
        array = load_volume(path, check=False).array
    except GenesisError as exc:
        raise VolumeReadError(f"cannot read label map ({exc.args[0] if exc.args else exc})", path) from exc
    if array.ndim != 3:
        raise VolumeReadError(f"label map is {array.ndim}D, expected 3D", path)
    if array.size and (array.min() < 0 or array.max() > 255 or not np.all(np.mod(array, 1) == 0)):
        raise VolumeReadError("label map holds values that are not small non-negative integers", path)
    return array.astype(np.uint8)
