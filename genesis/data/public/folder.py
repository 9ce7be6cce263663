"""A folder of CT volumes: every NIfTI/MetaImage/NRRD file and every DICOM series, recursively."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genesis.errors import DatasetLayoutError
from genesis.io.dicom import list_dicom_series
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


def _is_dicom_file(path: Path) -> bool:
    """Content-based DICOM test shared with the readers (``genesis.io.is_dicom_file``)."""
    try:
        from genesis.io import is_dicom_file
    except ImportError:  # older genesis.io without the shared helper: the preamble test
        try:
            with open(path, "rb") as handle:
                return handle.read(132)[128:132] == b"DICM"
        except OSError:
            return False
    return is_dicom_file(path)


@dataclass(frozen=True)
class FoundEntry:
    """What a folder walk met: a volume record, or a file it left out and why (a label map)."""

    record: VolumeRecord
    skipped: str = ""  # "" = a scan; else the reason it is no scan (e.g. "label map (file name)")


def walk_volumes(directory: str | Path) -> list[FoundEntry]:
    """Every volume file and DICOM series under ``directory``, label maps marked, in sorted order.

    Symbolic links to folders and files are followed (datasets are often assembled from links);
    each real folder is visited once (a set of resolved paths), so link loops end. DICOM files are
    recognised by content (:func:`genesis.io.is_dicom_file`), with or without a suffix. Hidden
    entries are ignored. Label maps (folders in :data:`LABEL_DIRS`, files such as
    ``segmentation-0.nii``) are returned with ``skipped`` set, so callers can say what they left out.

    Raises:
        DatasetLayoutError: ``directory`` is missing or not a directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetLayoutError("not a directory", directory)
    entries: list[FoundEntry] = []
    seen: set[str] = set()

    def visit(folder: Path, label_dir: bool) -> None:
        real = os.path.realpath(folder)
        if real in seen:  # a link loop or a folder linked twice
            return
        seen.add(real)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return  # unreadable folder: nothing to find there (reported by the readers if listed)
        subdirs, dicom_here = [], False
        for name in names:
            if name.startswith("."):
                continue
            path = folder / name
            if path.is_dir():  # follows links
                subdirs.append(path)
            elif path.is_file():
                if volume_suffix(name) is not None:
                    why = "label map (folder name)" if label_dir else (
                        "label map (file name)" if is_label_file(name) else "")
                    entries.append(FoundEntry(VolumeRecord(path), why))
                elif not dicom_here and not name.lower().endswith((".raw", ".zraw")) and _is_dicom_file(path):
                    dicom_here = True
        if dicom_here:
            series = list_dicom_series(folder)
            for info in series:
                record = VolumeRecord(folder, info.uid if len(series) > 1 else None)
                entries.append(FoundEntry(record, "label map (folder name)" if label_dir else ""))
        for sub in subdirs:
            visit(sub, label_dir or sub.name.lower() in LABEL_DIRS)

    visit(directory, False)
    return entries


def find_volumes(directory: str | Path) -> list[VolumeRecord]:
    """All image volumes under ``directory`` (recursive, sorted, hidden entries skipped).

    Files with a volume ending (.nii, .nii.gz, .mhd, .mha, .nrrd, .nhdr) are one record each; a
    folder holding DICOM files (recognised by content) gives one record per series (with
    ``series_uid`` when it holds several). Symbolic links are followed, each real folder once
    (see :func:`walk_volumes`). Companion data files (.raw, .zraw) are not listed. Label maps are
    skipped: folders named in :data:`LABEL_DIRS` and files such as ``segmentation-0.nii`` or
    ``case_seg.nii.gz``; list files explicitly in a CSV/YAML manifest to override this.

    Raises:
        DatasetLayoutError: ``directory`` is missing, not a directory, or holds no volume.
    """
    records = [e.record for e in walk_volumes(directory) if not e.skipped]
    if not records:
        raise DatasetLayoutError(
            "no CT volumes found (looked for .nii/.nii.gz/.mhd/.mha/.nrrd/.nhdr files and DICOM series)", directory
        )
    return records
