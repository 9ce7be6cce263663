"""Reading and writing CT volumes: NIfTI (nibabel, :mod:`genesis.io.nifti`), MetaImage and NRRD
(SimpleITK) and DICOM series.

Every failure a user can cause becomes a :class:`~genesis.errors.VolumeReadError` (or
:class:`~genesis.errors.DicomSeriesError`) naming the file; volumes that read fine but look
suspicious (not CT, not Hounsfield units) raise a :class:`~genesis.errors.GenesisWarning`.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from genesis.errors import GenesisWarning, VolumeReadError
from genesis.io.dicom import check_readable, is_dicom_file, read_dicom_series, write_dicom_series
from genesis.io.integrity import (check_allocation, metaimage_checks, nifti_pixdim, nrrd_checks, require_regular_data_file,
                                   resolve_spacing, verify_compressed)
from genesis.io.nifti import nifti_layout, open_nifti, read_nifti
from genesis.io.volume import Volume

#: File endings read/written through SimpleITK, with the ITK ImageIO used to write them.
FILE_FORMATS: dict[str, str] = {
    ".nii.gz": "NiftiImageIO",
    ".nii": "NiftiImageIO",
    ".mhd": "MetaImageIO",
    ".mha": "MetaImageIO",
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
}


#: ``--assume-spacing`` for readers called deep inside a dataset loader (the fine-tuning targets'
#: LUNA16 / LIDC / LiTS / RSNA PE / dataset-layout readers): one scoped setting instead of an
#: argument threaded through every loader. A ContextVar, not a module global: it is set only inside
#: :func:`assumed_spacing` and restored on exit, so nothing leaks between runs or threads.
_ASSUMED_SPACING: ContextVar[float | None] = ContextVar("genesis_assume_spacing", default=None)


def current_assumed_spacing() -> float | None:
    """The ``--assume-spacing`` in effect (the enclosing :func:`assumed_spacing` block's), or None."""
    return _ASSUMED_SPACING.get()


@contextmanager
def assumed_spacing(mm: float | None) -> Iterator[None]:
    """Within the block, :func:`load_volume` calls without ``assume_spacing`` use ``mm``.

    ``None`` keeps the default (invalid spacing is an error). An explicit ``assume_spacing``
    argument of :func:`load_volume` always wins.
    """
    token = _ASSUMED_SPACING.set(mm)
    try:
        yield
    finally:
        _ASSUMED_SPACING.reset(token)


def volume_suffix(path: str | Path) -> str | None:
    """The recognised volume file ending of ``path`` (``".nii.gz"``, ``".mhd"``...), or None."""
    name = Path(path).name.lower()
    for suffix in FILE_FORMATS:
        if name.endswith(suffix):
            return suffix
    return None


def _itk_message(exc: Exception) -> str:
    """The useful last line of an ITK exception (they are long multi-line traces)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    errors = [line.split("): ", 1)[-1] for line in lines if "ERROR" in line]
    return errors[-1] if errors else (lines[-1] if lines else type(exc).__name__)


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(magic)) == magic


def _read_file(path: Path, assume_spacing: float | None = None) -> Volume:
    suffix = volume_suffix(path)
    if suffix == ".nii.gz" and _starts_with(path, b"\x1f\x8b"):
        # first: ITK fails on some damage with a misleading "no ImageIO" message, and nibabel
        # stops reading before the CRC/length trailer
        verify_compressed(path, 0, 31, None, "gzip stream")
    nifti = suffix in (".nii", ".nii.gz")
    if nifti:  # the header through nibabel: ITK refuses some headers the standard can read
        image = open_nifti(path)
        size, ncomp = nifti_layout(image)
        dim = len(size)
    else:
        require_regular_data_file(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise VolumeReadError(f"not a readable image file ({_itk_message(exc)})", path) from exc
        dim, ncomp, size = reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize()
    if ncomp != 1:
        raise VolumeReadError(f"image has {ncomp} components per voxel; a scalar CT volume is needed", path)
    if not (dim == 3 or (dim == 4 and size[3] == 1)):
        raise VolumeReadError(f"image is {dim}D with size {tuple(size)}; a 3D volume is needed", path)
    check_allocation(math.prod(size[:3]) * 4, path, f"a {'x'.join(str(s) for s in size[:3])} volume")
    metadata = {"format": suffix}
    if nifti:
        array, geometry = read_nifti(image, path, nifti_pixdim(path))
        declared = geometry.spacing_xyz
        source = "sform column norms" if geometry.source == "sform" else "pixdim"  # the qform's spacing is pixdim
        metadata["geometry_source"] = geometry.source
        volume = Volume(array=array, spacing=declared[::-1], origin=geometry.origin, direction=geometry.direction,
                        path=path, metadata=metadata)
    else:
        if suffix in (".mha", ".mhd"):
            declared, source = metaimage_checks(path), "ElementSpacing"
        else:
            declared, source = nrrd_checks(path), "spacings/space directions"
        if dim == 4:
            reader.SetExtractIndex([0, 0, 0, 0])
            reader.SetExtractSize([size[0], size[1], size[2], 0])  # 0 collapses the time axis
        reader.SetOutputPixelType(sitk.sitkFloat32)
        try:
            itk_image = reader.Execute()
        except RuntimeError as exc:
            reason = _itk_message(exc)
            raise VolumeReadError(f"cannot read the pixel data, truncated or corrupt? ({reason})", path) from exc
        volume = Volume.from_sitk(itk_image, path=path, metadata=metadata)
    volume = resolve_spacing(volume, declared, assume_spacing, source)
    if not nifti and reader.HasMetaDataKey("Modality"):  # MetaImage: MET_CT, MET_MR, MET_MOD_UNKNOWN...
        modality = reader.GetMetaData("Modality").strip().upper().removeprefix("MET_")
        volume.modality = None if modality in ("", "MOD_UNKNOWN", "UNKNOWN") else modality
    return volume


def check_volume(volume: Volume) -> Volume:
    """Reject unusable volumes and warn about suspicious ones.

    Raises:
        VolumeReadError: empty; a single slice in some axis (2D); NaN or infinite values;
            constant intensity; non-positive spacing.
    Warns:
        GenesisWarning: modality other than CT; intensities that do not look like HU
            (all >= 0, e.g. 0..255 or 0..1 images, or label maps with a few integer values).
    """
    path, array = volume.path, volume.array
    if array.size == 0:
        raise VolumeReadError("volume is empty (0 voxels)", path)
    if array.ndim != 3:
        raise VolumeReadError(f"array is {array.ndim}D; a 3D volume is needed", path)
    if min(array.shape) < 2:
        raise VolumeReadError(f"volume has shape {array.shape} (z, y, x): a 2D image, a 3D volume is needed", path)
    if not all(np.isfinite(s) and s > 0 for s in volume.spacing):
        raise VolumeReadError(f"invalid voxel spacing {volume.spacing}", path)
    finite = np.isfinite(array)
    if not finite.all():
        bad = array.size - int(np.count_nonzero(finite))
        raise VolumeReadError(f"volume contains {bad} NaN or infinite values", path)
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        raise VolumeReadError(f"volume is constant (every voxel = {lo:g}); nothing to learn from", path)
    if volume.modality is not None and volume.modality.upper() != "CT":
        message = f"{path}: modality is {volume.modality}, not CT; HU windows may not apply"
        warnings.warn(message, GenesisWarning, stacklevel=3)
    if lo >= 0.0:
        sample = array[::4, ::4, ::4]  # a label map has few integer values; CT has thousands
        values = np.unique(sample)
        if values.size <= 64 and np.all(values == np.round(values)):
            what = f"{values.size} distinct integer values: a label map or mask, not an image?"
        elif hi <= 1.0:
            what = "values lie in [0, 1]: already normalised, not HU?"
        elif hi <= 255.0:
            what = "values lie in 0..255: an 8-bit image, not HU?"
        else:
            what = f"no negative values (range {lo:g}..{hi:g}): raw stored values without rescale intercept?"
        warnings.warn(f"{path}: intensities do not look like Hounsfield units; {what}", GenesisWarning, stacklevel=3)
    return volume


def load_volume(path: str | Path, *, series_uid: str | None = None, assume_spacing: float | None = None,
                check: bool = True) -> Volume:
    """Read a CT volume as float32 Hounsfield units, array (z, y, x).

    Args:
        path: a ``.nii``/``.nii.gz``/``.mhd``/``.mha``/``.nrrd``/``.nhdr`` file, a directory holding
            a DICOM series, or one ``.dcm`` file (its whole series in that folder is read).
        series_uid: SeriesInstanceUID to pick when a DICOM folder holds several series.
        assume_spacing: mm to use where the file's spacing is missing, zero, negative or NaN
            (an explicit opt-in, with a warning); None (default) takes the enclosing
            :func:`assumed_spacing` block's value, and without one makes that an error.
        check: apply :func:`check_volume` (a CT image); False for label maps and masks, which get
            every check of the file and its geometry but none of the intensities.
    Returns:
        The :class:`Volume` (geometry in the ITK/LPS convention, see :mod:`genesis.io.volume`).
    Raises:
        VolumeReadError: missing path, unknown or corrupt/truncated file, 2D image, NaN/inf,
            empty or constant volume.
        DicomSeriesError: no/several/broken DICOM series (missing slice, uneven spacing...).
    Warns:
        GenesisWarning: non-CT modality, intensities that do not look like HU.
    """
    path = Path(path)
    if assume_spacing is None:
        assume_spacing = _ASSUMED_SPACING.get()
    if not path.exists():
        raise VolumeReadError("no such file or directory", path)
    check_readable(path)
    if path.is_dir():
        volume = read_dicom_series(path, series_uid, assume_spacing=assume_spacing)
    elif volume_suffix(path) is not None:
        volume = _read_file(path, assume_spacing)
    elif is_dicom_file(path):
        if series_uid is None:
            series_uid = _series_uid_of(path)
        volume = read_dicom_series(path.parent, series_uid, assume_spacing=assume_spacing)
    else:
        known = ", ".join(FILE_FORMATS)
        raise VolumeReadError(f"unknown volume format (expected {known}, or a DICOM directory)", path)
    return check_volume(volume) if check else volume


def _series_uid_of(path: Path) -> str:
    import pydicom

    try:
        return str(pydicom.dcmread(str(path), stop_before_pixels=True).SeriesInstanceUID)
    except Exception as exc:
        raise VolumeReadError(f"not a readable DICOM file ({type(exc).__name__}: {exc})", path) from exc


def save_volume(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` (float32 HU and geometry) in the format given by the extension.

    ``.nii``/``.nii.gz``/``.mhd`` (+ ``.raw``)/``.mha``/``.nrrd``/``.nhdr`` go through SimpleITK;
    a path without extension is written as a DICOM series directory (int16 + rescale intercept,
    HU rounded to integers; see :func:`genesis.io.dicom.write_dicom_series`). Single-file formats are
    written atomically (temporary file in the same folder, then renamed).

    Args:
        volume: what to write.
        path: destination.
    Returns:
        ``path``.
    Raises:
        VolumeReadError: unknown extension or the writer failed.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        if path.suffix:
            raise VolumeReadError(f"cannot write format {path.suffix!r}; use one of {', '.join(FILE_FORMATS)}", path)
        write_dicom_series(volume, path, modality=volume.modality or "CT")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write into a private temp folder with the real name (ITK picks the writer and, for .mhd/.nhdr,
    # the data file name from it), then move the files in place: data file first, header last.
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        try:
            compress = suffix in (".nii.gz", ".nrrd", ".mha")
            sitk.WriteImage(volume.to_sitk(), str(tmpdir / path.name), useCompression=compress)
        except RuntimeError as exc:
            raise VolumeReadError(f"cannot write volume ({_itk_message(exc)})", path) from exc
        written = sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name)
        for item in written:
            os.replace(item, path.parent / item.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path
