"""RSNA STR Pulmonary Embolism Detection (2020): ``train.csv`` + ``train/<study>/<series>/<sop>.dcm``.

``train.csv`` has one row per slice (``StudyInstanceUID``, ``SeriesInstanceUID``,
``SOPInstanceUID``, ``pe_present_on_image``, ``negative_exam_for_pe``, and further exam-level
columns such as ``rv_lv_ratio_gte_1``, ``central_pe``... kept in ``exam_labels``). A study is PE
positive iff any slice is positive (equivalently, not ``negative_exam_for_pe``). Slices are
ordered by position along the slice normal (from the DICOM headers), falling back to
``InstanceNumber`` and then to the CSV order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genesis.data.public.luna16 import read_csv_rows
from genesis.errors import DatasetLayoutError

_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_SLICE_LABEL = "pe_present_on_image"
_EXAM_NEGATIVE = "negative_exam_for_pe"


@dataclass
class RsnaPeSlice:
    """One slice: SOP UID, file path, label (None without labels) and position along the normal."""

    sop_uid: str
    path: Path
    pe_present: int | None
    position: float | None = None


@dataclass
class RsnaPeStudy:
    """One CTPA study (one series) with its ordered slices and labels."""

    study_uid: str
    series_uid: str
    directory: Path
    slices: list[RsnaPeSlice]
    negative_exam: bool | None
    exam_labels: dict[str, int] = field(default_factory=dict)

    @property
    def pe_present(self) -> bool | None:
        """Study label: any slice positive (None when the CSV has no labels)."""
        labels = [s.pe_present for s in self.slices if s.pe_present is not None]
        if labels:
            return any(labels)
        return None if self.negative_exam is None else not self.negative_exam

    @property
    def slice_labels(self) -> np.ndarray:
        return np.array([s.pe_present if s.pe_present is not None else -1 for s in self.slices], dtype=np.int64)


def _int(value: str) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _order(slices: list[RsnaPeSlice]) -> list[RsnaPeSlice]:
    import pydicom

    keys = []
    for s in slices:
        if not s.path.is_file():
            return slices
        try:
            ds = pydicom.dcmread(str(s.path), stop_before_pixels=True)
        except Exception:
            return slices
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            o = np.asarray([float(v) for v in ds.ImageOrientationPatient])
            normal = np.cross(o[:3], o[3:])
            s.position = float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
            keys.append(s.position)
        elif "InstanceNumber" in ds:
            keys.append(float(ds.InstanceNumber))
        else:
            return slices
    return [s for _, s in sorted(zip(keys, slices), key=lambda t: t[0])]


def load_rsna_pe(
    root: str | Path, csv_name: str = "train.csv", image_dir: str = "train", *, order_by_position: bool = True
) -> list[RsnaPeStudy]:
    """Studies of an RSNA PE folder, slices ordered by position.

    Args:
        root: folder holding ``csv_name`` and ``image_dir``.
        csv_name: ``train.csv`` (labels) or ``test.csv`` (UIDs only).
        image_dir: folder of ``<study>/<series>/<sop>.dcm``.
        order_by_position: read the DICOM headers to sort slices (else CSV order).

    Raises:
        DatasetLayoutError: missing CSV / image folder / columns, or a listed slice file is missing.
    """
    root = Path(root)
    csv_path = root / csv_name
    if not csv_path.is_file():
        raise DatasetLayoutError(f"{csv_name} is missing (RSNA PE layout)", root)
    if not (root / image_dir).is_dir():
        raise DatasetLayoutError(f"image folder {image_dir}/ is missing (RSNA PE layout)", root)
    rows = read_csv_rows(csv_path, _UIDS)
    studies: dict[tuple[str, str], RsnaPeStudy] = {}
    for row in rows:
        study, series, sop = (row[k] for k in _UIDS)
        directory = root / image_dir / study / series
        key = (study, series)
        if key not in studies:
            negative = _int(row.get(_EXAM_NEGATIVE, ""))
            exam_values = ((k, _int(row[k])) for k in row if k not in _UIDS and k != _SLICE_LABEL)
            exam = {k: v for k, v in exam_values if v is not None}
            studies[key] = RsnaPeStudy(study, series, directory, [], None if negative is None else bool(negative), exam)
        path = directory / f"{sop}.dcm"
        if not path.is_file():
            message = f"slice {study}/{series}/{sop}.dcm listed in {csv_name} is missing"
            raise DatasetLayoutError(message, root / image_dir)
        studies[key].slices.append(RsnaPeSlice(sop, path, _int(row.get(_SLICE_LABEL, ""))))
    out = list(studies.values())
    if order_by_position:
        for st in out:
            st.slices = _order(st.slices)
    return out
