"""HU volume -> normalised float32 volume in [0, 1]: body crop, resampling, intensity window.

Models Genesis (Zhou et al. 2021) clips HU to [-1000, 1000] and scales to [0, 1]; other windows
(PE [-100, 900], nodules [-600, 1500]...) are configuration. Order in :func:`preprocess`: body
crop first (fewer voxels to resample), then resampling, then the window.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from genesis.errors import ConfigError, GenesisWarning
from genesis.io.volume import Volume

_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


@dataclass
class PreprocessConfig:
    """How a HU volume becomes the [0, 1] array the models see.

    Attributes:
        window: (low, high) HU mapped to 0 and 1 (clipped outside). Models Genesis: (-1000, 1000).
        spacing: target voxel size (z, y, x) mm, or None to keep the native spacing.
        crop_body: crop to the bounding box of the body (largest component above ``body_threshold_hu``).
        body_threshold_hu: HU threshold of the body mask.
        body_margin: voxels kept around the body bounding box, (z, y, x).
        order: interpolation order for resampling (0 nearest, 1 linear, 3 B-spline).
        assume_spacing: mm used where a file's spacing is missing or invalid (explicit opt-in,
            ``--assume-spacing``); None makes such a file an error.
    """

    window: tuple[float, float] = (-1000.0, 1000.0)
    spacing: tuple[float, float, float] | None = None
    crop_body: bool = False
    body_threshold_hu: float = -500.0
    body_margin: tuple[int, int, int] = (2, 4, 4)
    order: int = 1
    assume_spacing: float | None = None

    def __post_init__(self) -> None:
        lo, hi = self.window
        if not hi > lo:
            raise ConfigError(f"preprocess window must be (low, high) with low < high, got {self.window}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ConfigError(f"preprocess spacing must be 3 positive mm values (z, y, x), got {self.spacing}")
        if self.order not in _INTERPOLATORS:
            raise ConfigError(f"interpolation order must be one of {sorted(_INTERPOLATORS)}, got {self.order}")


def window_hu(array: np.ndarray, window: tuple[float, float] = (-1000.0, 1000.0)) -> np.ndarray:
    """Clip HU to ``window`` and scale linearly to [0, 1].

    Args:
        array: HU values, any shape.
        window: (low, high) HU; low -> 0, high -> 1.
    Returns:
        float32 array of the same shape in [0, 1].
    Raises:
        ConfigError: ``low >= high``.
    """
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ConfigError(f"window must have low < high, got {window}")
    out = np.asarray(array, dtype=np.float32) - np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


def resample(volume: Volume, spacing: tuple[float, float, float], order: int = 1) -> Volume:
    """Resample to a new voxel spacing with SimpleITK, keeping origin, direction and extent.

    Args:
        volume: HU volume.
        spacing: target (z, y, x) mm.
        order: 0 nearest, 1 linear, 3 B-spline.
    Returns:
        A new Volume; outside the original grid is filled with the volume's minimum (air).
    Raises:
        ConfigError: bad spacing or order.
    """
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ConfigError(f"target spacing must be 3 positive mm values (z, y, x), got {spacing}")
    if order not in _INTERPOLATORS:
        raise ConfigError(f"interpolation order must be one of {sorted(_INTERPOLATORS)}, got {order}")
    new_size = [
        max(1, int(round(n * old / new)))
        for n, old, new in zip(volume.shape[::-1], volume.spacing[::-1], spacing[::-1])
    ]
    image = sitk.Resample(
        volume.to_sitk(),
        new_size,
        sitk.Transform(),
        _INTERPOLATORS[order],
        volume.origin,
        tuple(float(s) for s in spacing[::-1]),
        volume.direction,
        float(volume.array.min()),
        sitk.sitkFloat32,
    )
    array = sitk.GetArrayFromImage(image)
    return volume.with_array(array, spacing=tuple(float(s) for s in spacing))


def foreground_bbox(
    volume: Volume, threshold_hu: float = -500.0, margin: tuple[int, int, int] = (2, 4, 4)
) -> tuple[slice, slice, slice] | None:
    """Bounding box (z, y, x slices) of the largest connected component above ``threshold_hu``.

    The largest component is the body; the table and stray noise are smaller and dropped.
    Returns None when no voxel exceeds the threshold.
    """
    mask = volume.array > threshold_hu
    if not mask.any():
        return None
    labels, n = ndimage.label(mask)
    if n > 1:
        counts = np.bincount(labels.ravel())
        counts[0] = 0
        mask = labels == int(np.argmax(counts))
    box = []
    for axis, m in enumerate(margin):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(idx[0]) - m), min(mask.shape[axis], int(idx[-1]) + 1 + m)))
    return tuple(box)  # type: ignore[return-value]


def crop_foreground(
    volume: Volume, threshold_hu: float = -500.0, margin: tuple[int, int, int] = (2, 4, 4)
) -> Volume:
    """Crop to the body: bounding box of the largest component above ``threshold_hu`` plus ``margin``.

    The origin is moved so world coordinates of every kept voxel are unchanged. A volume with
    nothing above the threshold is returned unchanged with a :class:`GenesisWarning`.
    """
    box = foreground_bbox(volume, threshold_hu, margin)
    if box is None:
        message = f"{volume.path}: no voxel above {threshold_hu} HU, body crop skipped"
        warnings.warn(message, GenesisWarning, stacklevel=2)
        return volume
    start = [s.start for s in box]
    origin = tuple(float(v) for v in volume.index_to_world(start))
    return volume.with_array(np.ascontiguousarray(volume.array[box]), origin=origin)


def preprocess(volume: Volume, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """Body crop (optional) -> resample (optional) -> HU window -> float32 [0, 1] array (z, y, x).

    Args:
        volume: HU volume from :func:`genesis.io.load_volume` (or the synthetic generator).
        cfg: preprocessing settings (defaults: Models Genesis window, native spacing, no crop).
    Returns:
        C-contiguous float32 array in [0, 1], shape (z, y, x).
    """
    cfg = cfg or PreprocessConfig()
    if cfg.crop_body:
        volume = crop_foreground(volume, cfg.body_threshold_hu, cfg.body_margin)
    if cfg.spacing is not None and not np.allclose(volume.spacing, cfg.spacing):
        volume = resample(volume, cfg.spacing, cfg.order)
    return np.ascontiguousarray(window_hu(volume.array, cfg.window))
