"""DICOM series: discovery (GDCM via SimpleITK), header checks (pydicom), reading and writing.

Pixel data are read by SimpleITK's ``ImageSeriesReader`` (GDCM), which applies each slice's
RescaleSlope/RescaleIntercept; we ask for float32 output so slices with different rescale values
cannot be truncated. pydicom reads the headers only (``stop_before_pixels``) to check the series
before any pixels are touched: one orientation, one in-plane grid, no duplicate positions, and
evenly spaced slices (a gap means a missing or unreadable slice).
"""

from __future__ import annotations

import datetime
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from genesis.errors import DicomSeriesError, GenesisWarning, VolumeReadError
from genesis.io.volume import Volume

#: Relative tolerance on slice spacing: larger deviations from the median step are an error.
SPACING_TOLERANCE = 0.1


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a directory.

    Attributes:
        uid: SeriesInstanceUID.
        files: slice files as GDCM lists them (sorted by position).
        description: SeriesDescription ("" when absent).
        modality: Modality tag (None when absent).
        series_number: SeriesNumber (None when absent).
    """

    uid: str
    files: tuple[Path, ...]
    description: str = ""
    modality: str | None = None
    series_number: int | None = None

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def __str__(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid} ({self.n_slices} slices{desc}, modality {self.modality or '?'})"


def _header(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for bad files
        raise DicomSeriesError(f"unreadable DICOM file ({type(exc).__name__}: {exc})", path) from exc


def list_dicom_series(directory: str | Path) -> list[SeriesInfo]:
    """List the DICOM series directly inside ``directory`` (not recursive).

    Args:
        directory: a folder of DICOM files.
    Returns:
        One :class:`SeriesInfo` per SeriesInstanceUID, ordered by series number then UID.
        Empty if the folder holds no readable DICOM file.
    Raises:
        DicomSeriesError: ``directory`` is not a directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DicomSeriesError("not a directory of DICOM files", directory)
    try:
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    except RuntimeError as exc:
        raise DicomSeriesError(f"cannot scan for DICOM series ({exc})", directory) from exc
    series = []
    for uid in uids:
        files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
        if not files:
            continue
        head = _header(files[0])
        number = head.get("SeriesNumber")
        series.append(
            SeriesInfo(
                uid=str(uid),
                files=files,
                description=str(head.get("SeriesDescription", "") or ""),
                modality=str(head.Modality) if head.get("Modality") else None,
                series_number=int(number) if number not in (None, "") else None,
            )
        )
    series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.uid))
    return series


#: First data-element groups a DICOM file without preamble can start with: the file meta group
#: (0002), identifying (0008) or, in old ACR-NEMA style exports, the command group (0000).
_BARE_FIRST_GROUPS = (0x0000, 0x0002, 0x0008)


def is_dicom_file(path: str | Path) -> bool:
    """Whether ``path`` is a regular file whose *content* is DICOM (the file name is ignored).

    A Part 10 file has a 128-byte preamble followed by ``DICM``. Files written without the
    preamble (older scanners, some PACS exports) are recognised when they start with a data
    element of group 0000/0002/0008 and pydicom parses a header holding a SOP Class UID, SOP
    Instance UID or Modality. Never blocks on FIFOs or devices and never raises: unreadable and
    non-regular files are not DICOM here (the readers report permission problems themselves).

    Args:
        path: any path.
    Returns:
        True for a DICOM file.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    # Little-endian group number of the first element; big-endian files always have the preamble.
    if int.from_bytes(head[0:2], "little") not in _BARE_FIRST_GROUPS:
        return False
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        return any(key in ds for key in ("SOPClassUID", "SOPInstanceUID", "Modality"))
    except Exception:  # any parse failure means "not DICOM" here
        return False


def dicom_files_in(directory: Path) -> list[Path]:
    """Regular files directly in ``directory`` whose content is DICOM (see :func:`is_dicom_file`)."""
    return sorted(p for p in Path(directory).iterdir() if is_dicom_file(p))


def select_series(directory: str | Path, series_uid: str | None = None) -> SeriesInfo:
    """The series to read from ``directory``: the one with ``series_uid``, or the only one.

    Raises:
        DicomSeriesError: no series; ``series_uid`` not found; several series and no uid given
            (the message lists uid, slice count and description of each).
    """
    return _select(Path(directory), series_uid)[0]


def _select(directory: Path, series_uid: str | None) -> tuple[SeriesInfo, int]:
    series = list_dicom_series(directory)
    if not series:
        raise DicomSeriesError("no DICOM series found in this directory", directory)
    listing = "; ".join(str(s) for s in series)
    if series_uid is not None:
        for info in series:
            if info.uid == series_uid:
                return info, len(series)
        raise DicomSeriesError(f"no series with uid {series_uid}; found: {listing}", directory)
    if len(series) > 1:
        raise DicomSeriesError(f"{len(series)} DICOM series here, pass series_uid= to choose one: {listing}", directory)
    return series[0], 1


#: File endings that claim DICOM. They never hide a file (detection is by content), they only
#: make a damaged file that lost its 'DICM' marker count as a suspect slice.
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def _claims_dicom(path: Path) -> bool:
    return is_dicom_file(path) or path.suffix.lower() in DICOM_SUFFIXES


def _sop_class(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    return str(getattr(uid, "name", uid or ""))


def check_readable(path: Path) -> None:
    """Refuse what cannot be read as a plain file: FIFOs, devices, sockets, unreadable files.

    A FIFO given as a scan would block the reader forever; a file without read permission must be
    reported as such, not as missing or corrupt.

    Raises:
        VolumeReadError: not a regular file, or permission denied.
    """
    try:
        mode = os.stat(path).st_mode
    except PermissionError as exc:
        raise VolumeReadError("permission denied", path) from exc
    except OSError as exc:
        raise VolumeReadError(f"cannot access ({exc.strerror or exc})", path) from exc
    if stat.S_ISDIR(mode):
        return
    if not stat.S_ISREG(mode):
        raise VolumeReadError("not a regular file (a FIFO, socket or device?); give a file or a folder", path)
    if not os.access(path, os.R_OK):
        raise VolumeReadError("permission denied", path)


def _check_unlisted_files(directory: Path, info: SeriesInfo) -> None:
    """Every file here that claims to be DICOM but is not in the series GDCM found must be explained.

    Explained are: objects of another series, and non-image objects (a DICOMDIR, a structured
    report) without pixel data. Anything else (a file pydicom cannot parse, an image object of
    this series or without a SeriesInstanceUID: a slice truncated inside its header) is an error
    naming the file, wherever it lies in the series: a lost first or last slice leaves no gap.

    Raises:
        DicomSeriesError: an unexplained file, or a file here that cannot be read (permission).
    """
    listed = {f.resolve() for f in info.files}
    for path in sorted(directory.iterdir()):
        if path.is_dir():
            continue
        try:  # listed slices too: GDCM itself skips files it may not open
            check_readable(path)
        except VolumeReadError as exc:
            message = str(exc.args[0]).removeprefix(f"{path}: ")
            raise DicomSeriesError(f"{message} (in the folder of DICOM series {info.uid})", path) from exc
        if path.resolve() in listed or not _claims_dicom(path):
            continue
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for damaged files
            reason = " ".join(f"{type(exc).__name__}: {exc}".split()).split(". ")[0]
            raise DicomSeriesError(f"corrupt or unreadable DICOM file next to series {info.uid} ({reason})", path) from exc
        uid = ds.get("SeriesInstanceUID")
        if uid is not None and str(uid) != info.uid:
            continue  # another series
        sop = _sop_class(ds)
        if sop and "Image Storage" not in sop:
            continue  # a DICOMDIR, a report, a presentation state...: not a slice
        raise DicomSeriesError(f"slice {path.name} of series {info.uid} could not be read (truncated or corrupt?)", path)


def check_series_geometry(info: SeriesInfo, directory: Path) -> tuple[list[Path], float]:
    """Check slice headers and return the files sorted along the slice normal and the z step.

    Raises:
        DicomSeriesError: fewer than 2 slices, missing geometry tags, mixed orientation or
            in-plane grid, duplicate positions, a gap (missing slice) or uneven spacing.
    """
    if info.n_slices == 1 and int(_header(info.files[0]).get("NumberOfFrames", 1) or 1) > 1:
        raise DicomSeriesError(
            "multi-frame (enhanced) DICOM is not supported; convert it to NIfTI first (e.g. with dcm2niix)",
            info.files[0],
        )
    if info.n_slices < 2:
        raise DicomSeriesError(
            f"series {info.uid} has {info.n_slices} slice: a 2D image, a 3D volume is needed", directory
        )
    heads = [(path, _header(path)) for path in info.files]
    first_path, first = heads[0]
    try:
        orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    except AttributeError as exc:
        raise DicomSeriesError("slice has no ImageOrientationPatient", first_path) from exc
    normal = np.cross(orientation[:3], orientation[3:])
    grid = (first.get("Rows"), first.get("Columns"), tuple(float(v) for v in first.get("PixelSpacing", ())))
    positions = []
    for path, head in heads:
        if "ImagePositionPatient" not in head:
            raise DicomSeriesError("slice has no ImagePositionPatient", path)
        if not np.allclose(np.asarray(head.get("ImageOrientationPatient", orientation), float), orientation, atol=1e-3):
            raise DicomSeriesError(f"slice orientation differs from {first_path.name}", path)
        this_grid = (head.get("Rows"), head.get("Columns"), tuple(float(v) for v in head.get("PixelSpacing", ())))
        if this_grid != grid:
            raise DicomSeriesError(
                f"slice size/pixel spacing {this_grid} differs from {grid} of {first_path.name}", path
            )
        positions.append(float(np.dot(np.asarray(head.ImagePositionPatient, float), normal)))
    order = np.argsort(positions, kind="stable")
    pos = np.asarray(positions)[order]
    files = [heads[i][0] for i in order]
    steps = np.diff(pos)
    if np.any(steps < 1e-4):
        k = int(np.argmin(steps))
        raise DicomSeriesError(
            f"duplicate slice position {pos[k]:.3f} mm ({files[k].name}, {files[k + 1].name})", directory
        )
    step = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - step) > SPACING_TOLERANCE * step)
    if bad.size:
        k = int(bad[0])
        ratio = steps[k] / step
        if abs(ratio - round(ratio)) < SPACING_TOLERANCE and round(ratio) >= 2:
            problem = f"gap of {steps[k]:.3f} mm: about {round(ratio) - 1} missing slice(s)"
        else:
            problem = f"inconsistent slice spacing {steps[k]:.3f} mm vs {step:.3f} mm elsewhere"
        raise DicomSeriesError(f"{problem} between {files[k].name} and {files[k + 1].name}", directory)
    return files, step


def read_dicom_series(directory: str | Path, series_uid: str | None = None, *,
                      assume_spacing: float | None = None) -> Volume:
    """Read one DICOM series from ``directory`` as a float32 HU :class:`Volume`.

    A gantry-tilted series (slices shifted in-plane along the stack, so the slice positions do not
    follow the slice normal) is resampled onto an orthogonal grid, with a warning; see
    :func:`correct_gantry_tilt`.

    Args:
        directory: folder holding the slices.
        series_uid: which series, when the folder holds several.
        assume_spacing: mm for a missing/invalid PixelSpacing (explicit opt-in); None: an error.
    Returns:
        The volume; ``modality`` from the DICOM header; metadata has ``format="dicom"``,
        ``series_uid``, ``series_description``, ``n_slices`` (and ``gantry_tilt_deg`` if corrected).
    Raises:
        DicomSeriesError: see :func:`select_series` and :func:`check_series_geometry`, or GDCM
            could not decode the pixels.
        VolumeReadError: invalid PixelSpacing without ``assume_spacing``.
    """
    from genesis.io.integrity import check_allocation, resolve_spacing

    directory = Path(directory)
    info, _ = _select(directory, series_uid)
    _check_unlisted_files(directory, info)
    files, step = check_series_geometry(info, directory)
    first = _header(files[0])
    rows, cols = int(first.get("Rows", 0) or 0), int(first.get("Columns", 0) or 0)
    check_allocation(rows * cols * len(files) * 4, directory, f"a {cols}x{rows}x{len(files)} series")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        reason = " ".join(str(exc).strip().splitlines()[-1].split())
        raise DicomSeriesError(f"cannot decode series {info.uid} ({reason})", directory) from exc
    volume = Volume.from_sitk(
        image,
        path=directory,
        modality=info.modality,
        metadata={
            "format": "dicom",
            "series_uid": info.uid,
            "series_description": info.description,
            "n_slices": info.n_slices,
        },
    )
    # ITK derives the z spacing from the first two slices; use the checked median step instead.
    volume.spacing = (step, volume.spacing[1], volume.spacing[2])
    spacing = _floats_or_none(first.get("PixelSpacing"))
    if spacing is not None and len(spacing) == 2:
        volume = resolve_spacing(volume, (spacing[1], spacing[0], step), assume_spacing, "PixelSpacing")
    else:  # the z step comes from the slice positions, checked above
        volume = resolve_spacing(volume, (float("nan"), float("nan"), step), assume_spacing, "PixelSpacing missing:")
    last = _header(files[-1])
    return correct_gantry_tilt(volume, first, last, len(files))


def _floats_or_none(values) -> list[float] | None:
    if values is None or values == "":
        return None
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return [float("nan")] * 2


#: A tilt is corrected when it shifts the last slice in-plane by more than this many pixels.
TILT_TOLERANCE_PIXELS = 0.5


def correct_gantry_tilt(volume: Volume, first: pydicom.Dataset, last: pydicom.Dataset, n: int) -> Volume:
    """Resample a gantry-tilted stack onto an orthogonal grid (or return ``volume`` unchanged).

    With gantry tilt the slices are parallel but each is shifted in-plane: the vector from one
    slice position to the next is not along the slice normal. ITK then builds an orthogonal
    geometry that puts every voxel after the first slice at the wrong place (a shear). Slice k
    is shifted back by k times the in-plane part of the slice step (linear interpolation; what
    shifts out of the field of view is lost, what shifts in is filled with the volume minimum),
    and the geometry becomes: origin = first slice, directions = row, column, normal.

    Args:
        volume: as read by ITK, slices sorted along the normal, spacing (step, dy, dx).
        first, last: headers of the first and last slice in that order.
        n: number of slices.
    """
    from scipy import ndimage

    orientation = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    p0 = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    p1 = np.asarray(last.ImagePositionPatient, dtype=np.float64)
    step_vec = (p1 - p0) / max(n - 1, 1)
    shift_x, shift_y = float(step_vec @ row), float(step_vec @ col)  # mm per slice, in-plane
    step_z = float(step_vec @ normal)
    dz, dy, dx = volume.spacing
    drift = max(abs(shift_x) / dx, abs(shift_y) / dy) * (n - 1)
    if drift <= TILT_TOLERANCE_PIXELS:
        return volume
    tilt = float(np.degrees(np.arctan2(np.hypot(shift_x, shift_y), abs(step_z))))
    # output (k, j, i) = input (k, j + k * shift_y / dy, i + k * shift_x / dx): the world point of
    # the orthogonal grid lies in input slice k, displaced against that slice's in-plane shift.
    matrix = np.array([[1.0, 0.0, 0.0], [-shift_y / dy, 1.0, 0.0], [-shift_x / dx, 0.0, 1.0]])
    array = ndimage.affine_transform(volume.array, matrix, order=1, mode="constant",
                                     cval=float(volume.array.min()), output=np.float32)
    direction = np.stack([row, col, normal], axis=1)
    warnings.warn(
        f"{volume.path}: gantry tilt of {tilt:.1f} degrees (slices shift {drift:.1f} pixels in-plane over the "
        "series); resampled onto an orthogonal grid", GenesisWarning, stacklevel=3)
    out = volume.with_array(array, spacing=(abs(step_z), dy, dx), origin=tuple(p0), direction=tuple(direction.ravel()))
    out.metadata["gantry_tilt_deg"] = round(tilt, 3)
    return out


def write_dicom_series(
    volume: Volume,
    directory: str | Path,
    *,
    series_uid: str | None = None,
    modality: str = "CT",
    description: str = "genesis",
    rescale_intercept: float = -1024.0,
    prefix: str = "slice",
) -> list[Path]:
    """Write ``volume`` as a DICOM series (one file per z slice, int16 + rescale) with pydicom.

    Meant for tests and exports; the HU values are rounded to integers. Stored value (int16) =
    HU - ``rescale_intercept`` (slope 1), clipped to the int16 range.

    Args:
        volume: the volume to write.
        directory: created if missing; files are named ``{prefix}0000.dcm``...
        series_uid: SeriesInstanceUID (a new one by default).
        modality: Modality tag.
        description: SeriesDescription.
        rescale_intercept: RescaleIntercept written in every slice.
        prefix: file name prefix (use different ones to put several series in one folder).
    Returns:
        The written file paths, in z order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = generate_uid(), generate_uid()
    d = volume.direction_matrix
    orientation = [*d[:, 0], *d[:, 1]]
    stored = np.clip(np.rint(volume.array - rescale_intercept), -32768, 32767).astype(np.int16)
    today = datetime.date.today().strftime("%Y%m%d")
    paths = []
    for k in range(volume.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = directory / f"{prefix}{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.PatientID = "genesis"
        ds.StudyDate = today
        ds.ImagePositionPatient = [f"{v:.6f}" for v in volume.index_to_world((k, 0, 0))]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.PixelSpacing = [f"{volume.spacing[1]:.6f}", f"{volume.spacing[2]:.6f}"]
        ds.SliceThickness = f"{volume.spacing[0]:.6f}"
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept = f"{rescale_intercept:g}"
        ds.RescaleSlope = "1"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(str(path), enforce_file_format=True)
        paths.append(path)
    return paths
