"""Configuration and result types of the synthetic chest CT generator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from genesis.io import Volume

SYNTHETIC_DESCRIPTION = (
    "SYNTHETIC chest CT made by genesis.data.synthetic (procedural phantom, not patient data)"
)


@dataclass
class SyntheticConfig:
    """Parameters of :func:`generate_chest_ct`; every size is physical (mm), so any grid works.

    The default grid, ``(96, 160, 160)`` voxels of ``(2.5, 2.0, 2.0)`` mm, covers a whole adult
    chest (240 mm cranio-caudal from the upper abdomen to the lung apices, 320 mm field of view).
    HU values follow methods.md section 9.

    Attributes:
        shape: grid size (z, y, x) in voxels.
        spacing: voxel size (z, y, x) in mm.
        contrast: CT pulmonary angiography: pulmonary arteries 150-400 HU and emboli drawn.
        n_nodules: labelled nodules (finding label 1); ``(lo, hi)`` draws a count per case.
        nodule_diameter_mm: range of nodule diameters (log-uniform).
        nodule_subtypes: relative frequencies of solid / part-solid / ground-glass nodules.
        n_candidates: nodule-like false-positive candidates (vessel crossings, scars; label 0).
        n_emboli: filling defects in pulmonary arteries (only with ``contrast``).
        noise_hu: standard deviation of the scanner noise.
        noise_correlation_vox: Gaussian sigma (voxels) of the noise correlation.
        blur_vox: Gaussian sigma (voxels) of the partial-volume blur of the clean image.
        vessel_segments: maximum segments per vessel tree (speed/detail trade-off).
        body_scale: range of the per-case body size factor.
    """

    shape: tuple[int, int, int] = (96, 160, 160)
    spacing: tuple[float, float, float] = (2.5, 2.0, 2.0)
    contrast: bool = False
    n_nodules: int | tuple[int, int] = (1, 4)
    nodule_diameter_mm: tuple[float, float] = (3.0, 30.0)
    nodule_subtypes: dict[str, float] = field(
        default_factory=lambda: {"solid": 0.6, "part_solid": 0.2, "ground_glass": 0.2}
    )
    n_candidates: int | tuple[int, int] = (2, 6)
    n_emboli: int | tuple[int, int] = (1, 3)
    noise_hu: float = 20.0
    noise_correlation_vox: float = 0.8
    blur_vox: float = 0.5
    vessel_segments: int = 1600
    body_scale: tuple[float, float] = (0.9, 1.05)


@dataclass
class Finding:
    """One labelled object of a synthetic case.

    Attributes:
        kind: ``"nodule"``, ``"candidate"`` (nodule-like false positive) or ``"embolus"``.
        subtype: e.g. ``"solid"``, ``"part_solid"``, ``"ground_glass"``, ``"vessel_crossing"``, ``"scar"``.
        center_zyx: centre in voxel indices (z, y, x), float.
        diameter_mm: diameter (for emboli: diameter of the sphere of equal volume).
        label: 1 for a true finding, 0 for a false-positive candidate.
    """

    kind: str
    subtype: str
    center_zyx: tuple[float, float, float]
    diameter_mm: float
    label: int


@dataclass
class SyntheticCT:
    """A synthetic case: the volume (HU), binary masks on the same grid and the findings."""

    volume: "Volume"
    masks: dict[str, np.ndarray]
    findings: list[Finding]


def draw_count(value: int | tuple[int, int], rng: np.random.Generator) -> int:
    """A fixed count, or a count drawn uniformly from the inclusive range ``(lo, hi)``."""
    if isinstance(value, (tuple, list)):
        lo, hi = int(value[0]), int(value[1])
        return int(rng.integers(lo, hi + 1))
    return int(value)
