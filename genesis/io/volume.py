"""The :class:`Volume`: a CT volume in Hounsfield units with its physical geometry.

Geometry follows the ITK / SimpleITK physical convention (LPS world coordinates, millimetres):

    world_xyz = origin + direction @ (spacing_xyz * index_xyz)

where ``direction`` is the 3x3 matrix whose *columns* are the directions of the x, y, z voxel
axes, stored row-major as 9 floats (exactly ``sitk.Image.GetDirection()``). The array itself is
ordered (z, y, x) like ``sitk.GetArrayFromImage``; ``spacing`` is given in the same (z, y, x)
order as the array, whereas ``origin`` is a world point and therefore (x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Volume:
    """A 3D image in HU with its geometry.

    Attributes:
        array: float32 Hounsfield units, shape (z, y, x).
        spacing: voxel size in mm, (z, y, x) like the array.
        origin: world position (x, y, z) mm of voxel (0, 0, 0), ITK/LPS convention.
        direction: 9 floats, row-major 3x3 matrix whose columns are the x, y, z axis directions.
        path: the file or DICOM directory it was read from (None if made in memory).
        modality: DICOM Modality when known (``"CT"``), else None.
        metadata: free-form extras (format, series UID, ``synthetic``...).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    path: Path | None = None
    modality: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(d) for d in self.direction)
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise ValueError("Volume needs 3 spacings, a 3-element origin and 9 direction cosines")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (z, y, x)."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def direction_matrix(self) -> np.ndarray:
        """3x3 direction matrix; column j is the world direction of voxel axis j (x, y, z)."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_world(self, zyx: Any) -> np.ndarray:
        """Voxel index (z, y, x) (fractional allowed; shape (3,) or (N, 3)) -> world (x, y, z) mm."""
        idx = np.asarray(zyx, dtype=np.float64)
        ijk = idx[..., ::-1] * np.asarray(self.spacing[::-1])
        return np.asarray(self.origin) + ijk @ self.direction_matrix.T

    def world_to_index(self, xyz_mm: Any) -> np.ndarray:
        """World point (x, y, z) mm (shape (3,) or (N, 3)) -> fractional voxel index (z, y, x)."""
        pts = np.asarray(xyz_mm, dtype=np.float64) - np.asarray(self.origin)
        ijk = pts @ np.linalg.inv(self.direction_matrix).T / np.asarray(self.spacing[::-1])
        return ijk[..., ::-1]

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """A copy with a new array (and optionally other fields); metadata is copied shallowly."""
        return replace(self, array=array, metadata=dict(self.metadata), **changes)

    def to_sitk(self) -> sitk.Image:
        """This volume as a SimpleITK image (float32 HU) with the same geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(tuple(self.spacing[::-1]))
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, **fields: Any) -> "Volume":
        """Build a Volume (float32 array) from a 3D SimpleITK image and extra dataclass fields."""
        array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
        return cls(
            array=array,
            spacing=tuple(image.GetSpacing()[::-1]),
            origin=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
            **fields,
        )
