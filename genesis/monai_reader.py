"""genesis' volume reader as a MONAI ``ImageReader``: ``LoadImaged(keys, reader=GenesisReader())``.

MONAI's default readers need extra packages for NRRD and MetaImage (``itk`` or ``pynrrd``); without
them ``LoadImaged`` on a ``.nrrd`` file ends in a pydicom error about a missing DICM prefix.
:class:`GenesisReader` reads everything :func:`genesis.io.load_volume` reads (NIfTI, MetaImage,
NRRD, DICOM series folders or one of their files), with its checks (truncated or damaged files,
NaN, 2D images, constant volumes, header sizes), and hands MONAI what its own readers hand it:

* the array in MONAI's axis order (x, y, z) (``LoadImage``'s ``ITKReader`` and ``NibabelReader``
  order), float32 Hounsfield units; genesis' own arrays are (z, y, x);
* the meta dict with ``affine`` / ``original_affine`` in MONAI's RAS convention (genesis volumes
  are ITK/LPS: the first two world axes change sign), ``spatial_shape`` (x, y, z), ``spacing``
  (x, y, z) mm, ``space`` and ``original_channel_dim`` (``nan``: no channel axis); several files
  are stacked on a new first (channel) axis, as MONAI does.

MONAI tries another reader when ``read`` raises; it would then load a file genesis refuses,
without the checks. So ``read`` keeps a genesis error and :meth:`GenesisReader.get_data` raises it:
``LoadImaged`` fails with genesis' message naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from genesis.errors import GenesisError, VolumeReadError
from genesis.io import Volume, is_dicom_file, load_volume, volume_suffix

__all__ = ["GenesisReader", "monai_affine"]


def monai_affine(volume: Volume, lps_to_ras: bool = True) -> np.ndarray:
    """4x4 affine from voxel (x, y, z) indices to world mm, RAS (MONAI's default) or LPS."""
    affine = np.eye(4)
    affine[:3, :3] = volume.direction_matrix @ np.diag(volume.spacing[::-1])
    affine[:3, 3] = volume.origin
    if lps_to_ras:
        affine[:2] *= -1.0  # LPS -> RAS: x and y world axes flip
    return affine


@dataclass
class _Failed:
    """A file genesis refused; :meth:`GenesisReader.get_data` raises its error."""

    error: GenesisError


class GenesisReader(ImageReader):
    """Read volumes with :func:`genesis.io.load_volume` for MONAI's ``LoadImage`` / ``LoadImaged``.

    Args:
        affine_lps_to_ras: give the affine in RAS (MONAI's convention, default) or in LPS (ITK's).
        **load_kwargs: for :func:`genesis.io.load_volume` (``series_uid``, ``assume_spacing``).
    """

    def __init__(self, affine_lps_to_ras: bool = True, **load_kwargs: Any) -> None:
        super().__init__()
        self.affine_lps_to_ras = affine_lps_to_ras
        self.load_kwargs = load_kwargs

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        """True for genesis' file formats, ``.dcm`` files and folders (DICOM series)."""
        return all(volume_suffix(f) is not None or str(f).lower().endswith(".dcm") or Path(f).is_dir()
                   or (Path(f).is_file() and is_dicom_file(Path(f))) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> list[Volume | _Failed]:
        """One :class:`genesis.io.Volume` per file; a refused file is kept as its error (see module doc)."""
        out: list[Volume | _Failed] = []
        for name in ensure_tuple(data):
            try:
                out.append(load_volume(name, **{**self.load_kwargs, **kwargs}))
            except GenesisError as exc:
                out.append(_Failed(exc))
        return out

    def get_data(self, img: Sequence[Volume | _Failed] | Volume) -> tuple[np.ndarray, dict]:
        """(array (x, y, z) or (files, x, y, z), meta dict) as MONAI's readers return them.

        Raises:
            GenesisError: a file :meth:`read` could not read (genesis' message, naming the file).
            VolumeReadError: several files whose grids differ.
        """
        volumes = list(ensure_tuple(img))
        for item in volumes:
            if isinstance(item, _Failed):
                raise item.error
        arrays = [v.array.transpose(2, 1, 0) for v in volumes]  # (z, y, x) -> MONAI's (x, y, z), a view
        first = volumes[0]
        affine = monai_affine(first, self.affine_lps_to_ras)
        for other in volumes[1:]:
            if other.shape != first.shape or not np.allclose(monai_affine(other, self.affine_lps_to_ras), affine):
                raise VolumeReadError(f"cannot stack as channels: grid {other.shape} (z, y, x) / affine differ "
                                      f"from {first.path}'s", other.path)
        meta = {
            MetaKeys.ORIGINAL_AFFINE: affine,
            MetaKeys.AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[0].shape),
            MetaKeys.SPACE: SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan") if len(arrays) == 1 else 0,
            "spacing": np.asarray(first.spacing[::-1]),
            "modality": first.modality or "",
            "format": str(first.metadata.get("format", "")),
        }
        return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), meta
