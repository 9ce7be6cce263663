"""Which patient each volume of a source comes from, so splits never cut a patient.

In order: the source's own ``group(i)`` (dataset layouts: ``groups`` of an arrays file,
``--group-size``, MSD case ids, datalist/CSV ``group`` columns); a manifest's ``group`` /
``patient`` / ``patient_id`` / ``subject`` column; the DICOM PatientID of a series (the
StudyInstanceUID when PatientID is empty); else the volume's own name (one patient per scan).
Wrapping sources (a subset, nnU-Net's transposed view) pass their inner source's groups through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Manifest columns naming the patient, in order of preference.
GROUP_COLUMNS = ("group", "patient", "patient_id", "subject")


def volume_groups(source: Any) -> list[str]:
    """One group name per volume of ``source`` (see the module docstring)."""
    inner = getattr(source, "source", None)
    if inner is not None and not hasattr(source, "group") and len(inner) == len(source):
        return volume_groups(inner)
    group = getattr(source, "group", None)
    if callable(group):
        return [str(group(i)) for i in range(len(source))]
    records = getattr(source, "records", None)
    if records is not None and len(records) == len(source):
        return [record_group(r) for r in records]
    return [str(source.name(i)) for i in range(len(source))]


def record_group(record: Any) -> str:
    """The patient of a :class:`~genesis.data.public.folder.VolumeRecord` (see the module docstring)."""
    extra = getattr(record, "extra", None) or {}
    for column in GROUP_COLUMNS:
        value = str(extra.get(column) or "").strip()
        if value:
            return value
    path = Path(record.path)
    patient = dicom_patient(path, getattr(record, "series_uid", None))
    return patient if patient else str(getattr(record, "name", path))


def dicom_patient(path: Path, series_uid: str | None = None) -> str | None:
    """``PatientID`` (else ``StudyInstanceUID``) of the first DICOM file of a series, or None.

    Reads one header without pixel data; files that are not DICOM (or unreadable) give None.
    """
    from genesis.io import is_dicom_file

    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    elif path.is_file():
        candidates = [path]
    else:
        return None
    import pydicom

    for file in candidates[:64]:
        if not is_dicom_file(file):
            continue
        try:
            ds = pydicom.dcmread(str(file), stop_before_pixels=True,
                                 specific_tags=["PatientID", "StudyInstanceUID", "SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - pydicom raises many kinds on damaged headers
            continue
        if series_uid and str(getattr(ds, "SeriesInstanceUID", "") or "") not in ("", series_uid):
            continue
        patient = str(getattr(ds, "PatientID", "") or "").strip()
        study = str(getattr(ds, "StudyInstanceUID", "") or "").strip()
        return f"patient:{patient}" if patient else (f"study:{study}" if study else None)
    return None
