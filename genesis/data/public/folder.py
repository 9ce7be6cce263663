"""A folder of CT volumes: every NIfTI/MetaImage/NRRD file and every DICOM series, recursively."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genesis.errors import DatasetLayoutError
from genesis.io.dicom import dicom_files_in, list_dicom_series
from genesis.io.readers import volume_suffix


@dataclass(frozen=True)
class VolumeRecord:
    """One volume of a dataset.

    Attributes:
        path: a volume file or a DICOM series directory.
        series_uid: which DICOM series of ``path`` (None: the only one / not DICOM).
        split: e.g. "train"/"val"/"test" when a manifest gives it.
        label: free-form label from a manifest.
        extra: any other manifest columns.
    """

    path: Path
    series_uid: str | None = None
    split: str | None = None
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        return f"{self.path}#{self.series_uid}" if self.series_uid else str(self.path)


#: Folders of label maps in common dataset layouts (nnU-Net/MSD ``labelsTr``, ``masks/`` of
#: ``genesis-synth``); their files are annotations, not images, so a scan search skips them.
LABEL_DIRS = frozenset({"masks", "mask", "labels", "labelstr", "labelsts", "segmentations", "seg"})
#: File names of label maps (LiTS ``segmentation-N.nii``, BraTS ``*_seg.nii.gz``, ``*_mask``).
_LABEL_FILE = re.compile(r"(^|[_\-.])(seg|segmentation|mask|label|labels)([_\-.]|\d|$)", re.IGNORECASE)


def is_label_file(name: str) -> bool:
    """True for file names that denote label maps rather than images (see :data:`LABEL_DIRS`)."""
    stem = name.split(".")[0]
    return bool(_LABEL_FILE.search(stem))


def find_volumes(directory: str | Path) -> list[VolumeRecord]:
    """All image volumes under ``directory`` (recursive, sorted, hidden entries skipped).

    Files with a volume ending (.nii, .nii.gz, .mhd, .mha, .nrrd, .nhdr) are one record each; a
    folder holding DICOM files gives one record per series (with ``series_uid`` when it holds
    several). Companion data files (.raw, .zraw) are not listed. Label maps are skipped: folders
    named in :data:`LABEL_DIRS` and files such as ``segmentation-0.nii`` or ``case_seg.nii.gz``;
    list files explicitly in a CSV/YAML manifest to override this.

    Raises:
        DatasetLayoutError: ``directory`` is missing, not a directory, or holds no volume.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetLayoutError("not a directory", directory)
    records: list[VolumeRecord] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d.lower() not in LABEL_DIRS)
        here = Path(root)
        for name in sorted(files):
            if not name.startswith(".") and volume_suffix(name) is not None and not is_label_file(name):
                records.append(VolumeRecord(here / name))
        if dicom_files_in(here):
            series = list_dicom_series(here)
            for info in series:
                records.append(VolumeRecord(here, info.uid if len(series) > 1 else None))
    if not records:
        raise DatasetLayoutError(
            "no CT volumes found (looked for .nii/.nii.gz/.mhd/.mha/.nrrd/.nhdr files and DICOM series)", directory
        )
    return records
