"""NIfTI-1/2 voxels and geometry, by the standard's precedence: sform, then qform, then pixdim.

The NIfTI standard (``nifti1.h``, "3 different methods") gives a header up to three descriptions
of where its voxels are: the sform (``sform_code > 0``: a general affine whose column norms are
the voxel sizes), the qform (``qform_code > 0``: a rotation quaternion with ``pixdim`` as voxel
sizes) and ``pixdim`` alone (both codes 0). nibabel's ``get_best_affine`` follows that order.
ITK does not: it takes ``pixdim`` as the spacing even when the sform says otherwise (a writer that
rewrote a zero pixdim to 1 gives 1 mm where the sform says 1.5 mm), and it prefers the qform over
an sform of code 2-4 (measured with SimpleITK 2.5 / ITK 5.4). Here spacing, origin and direction
always come from one transform, the first the standard's order allows, and every disagreement
with the others is a :class:`~genesis.errors.GenesisWarning` naming the file and both values.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genesis.errors import GenesisWarning, VolumeReadError

#: NIfTI world coordinates are RAS, ITK's (and :class:`~genesis.io.Volume`'s) are LPS.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: Relative difference of two voxel sizes, absolute difference of direction cosines, and mm of
#: origin above which two transforms of one header disagree. Headers store float32 (about 1e-7
#: relative), so these only flag real disagreements.
SPACING_RTOL, DIRECTION_ATOL, ORIGIN_ATOL_MM = 1e-4, 1e-4, 1e-3
#: Cosine between two sform columns above which the sform shears the voxel grid (0.06 degrees).
SHEAR_COS = 1e-3


@dataclass(frozen=True)
class NiftiGeometry:
    """Where a NIfTI file's voxels are, from one of its transforms.

    Attributes:
        spacing_xyz: voxel sizes (x, y, z) as that transform declares them (``pixdim`` ones may be
            zero, negative or NaN: :func:`genesis.io.integrity.resolve_spacing` decides).
        origin: world (x, y, z) mm of voxel (0, 0, 0), LPS.
        direction: 9 floats, row-major, columns the x, y, z axis directions, LPS.
        source: ``"sform"``, ``"qform"`` or ``"pixdim"``.
    """

    spacing_xyz: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    source: str


def _shown(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _lps(rotation_ras: np.ndarray, origin_ras: np.ndarray, spacing: Any, source: str) -> NiftiGeometry:
    return NiftiGeometry(tuple(float(s) for s in spacing), tuple(float(v) for v in _RAS_TO_LPS @ origin_ras),
                         tuple(float(v) for v in (_RAS_TO_LPS @ rotation_ras).ravel()), source)


def _sform(header: Any) -> tuple[NiftiGeometry | None, str, bool]:
    """The sform's geometry, or None, why it cannot describe a grid of voxels and whether that is
    because it shears the grid (then only a qform can stand in for it)."""
    affine = np.asarray(header.get_sform(), dtype=np.float64)
    matrix = affine[:3, :3]
    if not np.isfinite(affine[:3]).all():
        return None, "it holds NaN or infinite values", False
    norms = np.linalg.norm(matrix, axis=0)
    if not (norms > 0).all():
        return None, f"it has a zero column (voxel sizes {_shown(norms)})", False
    rotation = matrix / norms
    if np.abs(rotation.T @ rotation - np.eye(3)).max() > SHEAR_COS:
        return None, "it shears the voxel grid (its columns are not orthogonal), which no spacing and direction can hold", True
    return _lps(rotation, affine[:3, 3], norms, "sform"), "", False


def _qform(header: Any, pixdim_xyz: tuple[float, ...]) -> NiftiGeometry:
    """The qform's geometry: the quaternion's rotation (z flipped when qfac is -1), pixdim as spacing."""
    from nibabel.quaternions import quat2mat

    qfac = -1.0 if float(header["pixdim"][0]) < 0 else 1.0  # the standard treats 0 as 1
    rotation = quat2mat(header.get_qform_quaternion()) @ np.diag([1.0, 1.0, qfac])
    offset = np.array([float(header["qoffset_x"]), float(header["qoffset_y"]), float(header["qoffset_z"])])
    return _lps(rotation, offset, pixdim_xyz, "qform")


def _disagreements(chosen: NiftiGeometry, other: NiftiGeometry) -> list[str]:
    said = []
    a, b = np.asarray(chosen.spacing_xyz), np.asarray(other.spacing_xyz)
    if not np.allclose(a, b, rtol=SPACING_RTOL, atol=0.0):
        said.append(f"voxel size {_shown(a)} mm in the {chosen.source}, {_shown(b)} in the {other.source}")
    if other.source != "pixdim":  # pixdim alone says nothing about position or orientation
        if not np.allclose(chosen.origin, other.origin, rtol=0.0, atol=ORIGIN_ATOL_MM):
            said.append(f"origin {_shown(chosen.origin)} mm in the {chosen.source}, {_shown(other.origin)} in the "
                        f"{other.source}")
        if not np.allclose(chosen.direction, other.direction, rtol=0.0, atol=DIRECTION_ATOL):
            said.append(f"direction {_shown(chosen.direction)} in the {chosen.source}, {_shown(other.direction)} in "
                        f"the {other.source}")
    return said


def nifti_geometry(header: Any, pixdim_xyz: tuple[float, ...], path: Path) -> NiftiGeometry:
    """The geometry of a NIfTI header by the standard's precedence (see the module docstring).

    Args:
        header: the nibabel header.
        pixdim_xyz: the raw pixdim[1:4] (nibabel rewrites a 0 to 1; see
            :func:`genesis.io.integrity.nifti_pixdim`).
        path: the file, for messages.
    Raises:
        VolumeReadError: an sform that shears the grid with no qform to fall back on.
    Warns:
        GenesisWarning: the chosen transform disagrees with another one the header holds (both
            values named), or an unusable sform was passed over.
    """
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    pixdim = tuple(float(v) for v in pixdim_xyz)
    # pixdim alone (the standard's method 1) attaches no orientation to the axes: keep ITK's (and
    # this reader's earlier) choice, the identity in LPS at the origin
    fallback = _qform(header, pixdim) if qform_code > 0 else _lps(_RAS_TO_LPS, np.zeros(3), pixdim, "pixdim")
    if sform_code > 0:
        sform, why, sheared = _sform(header)
        if sform is not None:
            said = _disagreements(sform, fallback)
            if said:
                warnings.warn(f"{path}: the header's transforms disagree: {'; '.join(said)}. Using the sform, "
                              "as the NIfTI standard says (sform before qform before pixdim); fix the header if "
                              "that is wrong", GenesisWarning, stacklevel=5)
            return sform
        if sheared and qform_code == 0:  # pixdim alone would drop the rotation as well
            raise VolumeReadError(f"the header's sform (sform_code {sform_code}) {why}, and there is no qform to "
                                  "use instead; resample the image onto an orthogonal grid", path)
        warnings.warn(f"{path}: the header's sform (sform_code {sform_code}) is unusable: {why}; using the "
                      f"{fallback.source} instead", GenesisWarning, stacklevel=5)
    return fallback


def open_nifti(path: Path) -> Any:
    """The nibabel image of ``path``, its header read and its voxels not yet.

    Raises:
        VolumeReadError: not a readable NIfTI header.
    """
    import nibabel as nib

    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises ImageFileError, HeaderDataError, OSError, EOFError, zlib.error...
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise VolumeReadError(f"not a readable image file ({reason})", path) from exc


def nifti_layout(image: Any) -> tuple[tuple[int, ...], int]:
    """The image's size (up to 4 axes, x first, as ITK reports it) and components per voxel
    (RGB(A) datatypes and the NIfTI vector axis, dim[5])."""
    shape = tuple(int(n) for n in image.header.get_data_shape())
    components = len(image.get_data_dtype().names or ()) or 1
    if len(shape) > 4:
        components *= int(np.prod(shape[4:]))
        shape = shape[:4]
    return shape, components


def read_nifti(image: Any, path: Path, pixdim_xyz: tuple[float, ...] | None) -> tuple[np.ndarray, NiftiGeometry]:
    """The voxels of an :func:`open_nifti` image as (z, y, x) float32 with scl_slope/scl_inter
    applied, and the geometry of :func:`nifti_geometry`.

    nibabel rather than ITK because ITK silently zero-fills truncated NIfTI files, turns NaN
    into 0, takes pixdim over the sform and refuses an sform it cannot use instead of falling
    back to the qform. Both libraries keep the on-disk voxel order, so transposing nibabel's
    (x, y, z) array gives ITK's (z, y, x) array.

    Args:
        image: from :func:`open_nifti`, 3D or 4D with one time point (the caller checked).
        path: the file, for messages.
        pixdim_xyz: the raw pixdim[1:4] (None: nibabel's).
    Raises:
        VolumeReadError: truncated or corrupt data, or a geometry :func:`nifti_geometry` refuses.
    """
    if pixdim_xyz is None:
        pixdim_xyz = tuple(float(v) for v in image.header["pixdim"][1:4])
    geometry = nifti_geometry(image.header, pixdim_xyz, path)  # before the voxels: a refused header costs nothing
    try:
        data = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel/zlib/gzip raise OSError, EOFError, zlib.error, ValueError...
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise VolumeReadError(f"cannot read the pixel data, truncated or corrupt? ({reason})", path) from exc
    data = data.reshape(data.shape[:3]) if data.ndim == 4 else data
    return np.ascontiguousarray(data.transpose(2, 1, 0)), geometry
