"""Synthetic stand-ins for the fine-tuning targets that need data we cannot ship.

- ``kind="liver"`` (stand-in for LiTS / the ``lcs`` liver segmentation target): abdominal CT with
  fat, muscle, spine, aorta, kidneys, spleen, bowel gas and a liver of 50-70 HU holding 1-4
  hypodense lesions. Labels follow LiTS: 0 background, 1 liver, 2 lesion.
- ``kind="brain"`` (stand-in for BraTS / the ``bms`` brain tumour target): FLAIR-like MRI (arbitrary
  units 0-1000, CSF dark, white matter darker than grey matter) with a glioma made of an
  enhancing rim, a necrotic core and surrounding oedema (bright on FLAIR). Labels follow BraTS
  2018: 0 background, 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour.

Both are procedural phantoms: ``volume.metadata["synthetic"] = True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from genesis.data.synthetic.shapes import Grid, correlated_noise, draw_blob, soft_edge
from genesis.errors import ConfigError
from genesis.rng import numpy_generator

TARGET_KINDS = ("liver", "brain")
_DEFAULTS = {
    "liver": ((64, 112, 112), (3.0, 3.0, 3.0)),
    "brain": ((64, 80, 80), (2.5, 2.5, 2.5)),
}


@dataclass
class TargetCase:
    """A synthetic target case.

    Attributes:
        volume: ``genesis.io.Volume`` (HU for liver CT, arbitrary FLAIR-like units for brain MRI).
        masks: uint8 masks: liver -> ``liver`` (incl. lesions), ``lesions``; brain -> ``brain``,
            ``tumour`` (whole tumour), ``core``, ``enhancing``, ``edema``.
        labels: uint8 label map in the public dataset's convention (LiTS or BraTS, see module doc).
        kind: ``"liver"`` or ``"brain"``.
    """

    volume: "object"
    masks: dict[str, np.ndarray]
    labels: np.ndarray
    kind: str


def _ellipsoid_sd(grid: Grid, centre, axes) -> np.ndarray:
    q = np.sqrt(
        ((grid.z - centre[0]) / axes[0]) ** 2
        + ((grid.y - centre[1]) / axes[1]) ** 2
        + ((grid.x - centre[2]) / axes[2]) ** 2
    )
    return (1.0 - q) * float(min(axes))


def _blend(img: np.ndarray, value, occ: np.ndarray) -> None:
    img += occ * (value - img)


def generate_target_case(
    seed: int,
    kind: str = "liver",
    *,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    n_lesions: int | None = None,
    noise: float | None = None,
) -> TargetCase:
    """Generate a synthetic liver-CT or brain-MRI case with organ and lesion masks.

    Args:
        seed: integer seed (same seed -> identical case).
        kind: ``"liver"`` or ``"brain"``.
        shape: grid (z, y, x); defaults liver (64, 112, 112), brain (64, 80, 80).
        spacing: voxel size (z, y, x) mm; defaults liver 3 mm, brain 2.5 mm isotropic. When only
            ``shape`` is given, the spacing is scaled so the field of view (192 x 336 x 336 mm
            liver, 160 x 200 x 200 mm brain) still holds the whole organ.
        n_lesions: liver lesions (default 1-4 drawn); ignored for brain (one tumour).
        noise: noise sd (default 15 HU for liver, 20 units for brain).

    Raises:
        ConfigError: unknown ``kind`` or bad sizes.
    """
    if kind not in TARGET_KINDS:
        raise ConfigError(f"unknown synthetic target kind {kind!r}; use one of {TARGET_KINDS}")
    d_shape, d_spacing = _DEFAULTS[kind]
    shape = tuple(int(s) for s in (shape or d_shape))  # type: ignore[assignment]
    if spacing is None:
        # Keep the default field of view (the whole organ) when only the grid size changes.
        spacing = tuple(float(sp) * n / float(m) for sp, n, m in zip(d_spacing, d_shape, shape))
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 4 or len(spacing) != 3 or min(spacing) <= 0:
        raise ConfigError(f"bad synthetic target grid shape={shape} spacing={spacing}")
    grid = Grid(shape, spacing)
    rng = numpy_generator(seed, 10 if kind == "liver" else 11)
    if kind == "liver":
        image, masks, labels, modality = _liver(grid, rng, n_lesions, 15.0 if noise is None else noise)
    else:
        image, masks, labels, modality = _brain(grid, rng, 20.0 if noise is None else noise)

    from genesis.io import Volume

    origin = tuple(float(-grid.centre[k] * spacing[k]) for k in (2, 1, 0))
    volume = Volume(
        array=image.astype(np.float32),
        spacing=spacing,
        origin=origin,
        path=None,
        modality=modality,
        metadata={
            "synthetic": True,
            "description": f"SYNTHETIC {'abdominal CT (liver)' if kind == 'liver' else 'brain MRI FLAIR-like'} "
            "made by genesis.data.synthetic.generate_target_case (not patient data)",
            "seed": int(seed),
            "kind": kind,
        },
    )
    masks = {k: np.ascontiguousarray(v, dtype=np.uint8) for k, v in masks.items()}
    return TargetCase(volume=volume, masks=masks, labels=labels.astype(np.uint8), kind=kind)


def _liver(grid: Grid, rng: np.random.Generator, n_lesions: int | None, noise: float):
    Y, X = grid.y, grid.x
    vox = grid.voxel_mm
    s = rng.uniform(0.9, 1.05)
    ax, ay = 150.0 * s, 110.0 * s
    rho = np.sqrt((X / ax) ** 2 + (Y / ay) ** 2)
    sd_body = (1.0 - rho) * np.sqrt(X**2 + Y**2) / np.maximum(rho, 1e-3)
    img = np.full(grid.shape, -1000.0, dtype=np.float32)
    fat = rng.uniform(12.0, 30.0)
    _blend(img, -100.0, soft_edge(sd_body, vox))
    _blend(img, 45.0, soft_edge(sd_body - fat, vox))
    _blend(img, -90.0, soft_edge(sd_body - fat - 10.0, vox))  # visceral fat
    # Bowel: soft-tissue loops with a few gas pockets in the anterior/left abdomen.
    for _ in range(12):
        c = np.array([rng.uniform(-80, 80), rng.uniform(-70, 20) * s, rng.uniform(-20, 90) * s])
        drawn = draw_blob(grid, c, rng.uniform(10, 20), rng, lobulation=0.2)
        if drawn is not None:
            sl, occ, _ = drawn
            _blend(img[sl], 35.0, occ * (sd_body[:, sl[1], sl[2]] > fat + 12))
    for _ in range(5):
        c = np.array([rng.uniform(-80, 80), rng.uniform(-70, 0) * s, rng.uniform(0, 90) * s])
        drawn = draw_blob(grid, c, rng.uniform(4, 10), rng, lobulation=0.2)
        if drawn is not None:
            sl, occ, _ = drawn
            _blend(img[sl], -1000.0, occ)
    # Spine, aorta, kidneys, spleen.
    spine_y = ay - fat - 45.0
    vb = soft_edge(18.0 - np.sqrt(X**2 + (Y - spine_y) ** 2), vox)
    _blend(img, 300.0, vb)
    _blend(img, 40.0, soft_edge(11.0 - np.sqrt((X - 15) ** 2 + (Y - spine_y + 30) ** 2), vox))
    for side in (-1.0, 1.0):
        kidney = _ellipsoid_sd(grid, (-40.0, spine_y - 5, side * 65.0 * s), (50.0, 25.0, 22.0))
        _blend(img, 30.0, soft_edge(kidney, vox))
    _blend(img, 45.0, soft_edge(_ellipsoid_sd(grid, (30.0, spine_y - 25, 80.0 * s), (45.0, 35.0, 25.0)), vox))
    # Liver: large ellipsoid in the right upper abdomen, cut obliquely on the left.
    liver_c = (rng.uniform(5, 25), -5.0 * s, -50.0 * s)
    liver_ax = (rng.uniform(55, 75), rng.uniform(65, 80) * s, rng.uniform(70, 85) * s)
    sd_liver = np.minimum(_ellipsoid_sd(grid, liver_c, liver_ax), 20.0 * s - X - 0.5 * (Y + 20.0))
    sd_liver = np.minimum(sd_liver, sd_body - fat - 12.0)
    liver_occ = soft_edge(sd_liver, vox)
    liver_hu = rng.uniform(50.0, 70.0)
    _blend(img, liver_hu, liver_occ)
    liver = liver_occ >= 0.5
    lesions = np.zeros(grid.shape, dtype=bool)
    idx = np.argwhere(liver)
    count = int(rng.integers(1, 5)) if n_lesions is None else int(n_lesions)
    for _ in range(count if len(idx) else 0):
        r = rng.uniform(5.0, 22.0)
        centre = grid.to_mm(idx[int(rng.integers(len(idx)))])
        drawn = draw_blob(grid, centre, r, rng, lobulation=0.12)
        if drawn is None:
            continue
        sl, occ, mask = drawn
        inside = liver[sl]
        _blend(img[sl], liver_hu - rng.uniform(25.0, 50.0), occ * inside)
        lesions[sl] |= mask & inside
    img = ndimage.gaussian_filter(img, 0.5, truncate=3.0)
    img += correlated_noise(grid.shape, noise, 0.8, rng)
    np.clip(img, -1024.0, 3071.0, out=img)
    labels = liver.astype(np.uint8)
    labels[lesions] = 2
    return img, {"liver": liver, "lesions": lesions}, labels, "CT"


def _brain(grid: Grid, rng: np.random.Generator, noise: float):
    vox = grid.voxel_mm
    s = rng.uniform(0.92, 1.05)
    head = (80.0 * s, 95.0 * s, 75.0 * s)
    sd_head = _ellipsoid_sd(grid, (0.0, 0.0, 0.0), head)
    img = np.zeros(grid.shape, dtype=np.float32)
    _blend(img, 550.0, soft_edge(sd_head, vox))  # scalp (fat is bright on FLAIR)
    _blend(img, 40.0, soft_edge(sd_head - 5.0, vox))  # skull: no signal
    _blend(img, 80.0, soft_edge(sd_head - 11.0, vox))  # CSF (suppressed on FLAIR)
    brain_occ = soft_edge(sd_head - 14.0, vox)
    _blend(img, 560.0, brain_occ)  # grey matter
    _blend(img, 440.0, soft_edge(sd_head - 20.0, vox))  # white matter
    for side in (-1.0, 1.0):  # lateral ventricles
        _blend(img, 70.0, soft_edge(_ellipsoid_sd(grid, (5.0, -5.0, side * 9.0), (18.0, 32.0, 6.0)), vox))
    brain = brain_occ >= 0.5
    # Glioma: enhancing rim around a necrotic core inside a wider oedema, away from the midline.
    idx = np.argwhere(brain & (np.abs(grid.x) > 20.0) & (soft_edge(sd_head - 35.0, vox) > 0.5))
    if not len(idx):
        idx = np.argwhere(brain)
    centre = grid.to_mm(idx[int(rng.integers(len(idx)))])
    r_tumour = rng.uniform(10.0, 22.0)
    labels = np.zeros(grid.shape, dtype=np.uint8)
    masks = {name: np.zeros(grid.shape, dtype=bool) for name in ("edema", "enhancing", "core")}
    for name, radius, value, lob in (
        ("edema", r_tumour * rng.uniform(1.4, 1.9), 850.0, 0.25),
        ("enhancing", r_tumour, 700.0, 0.15),
        ("core", r_tumour * rng.uniform(0.4, 0.7), 300.0, 0.1),
    ):
        drawn = draw_blob(grid, centre, radius, rng, lobulation=lob)
        if drawn is None:
            continue
        sl, occ, mask = drawn
        mask = mask & brain[sl]
        _blend(img[sl], value, occ * brain[sl])
        masks[name][sl] |= mask
    labels[masks["edema"]] = 2
    labels[masks["enhancing"]] = 4
    labels[masks["core"]] = 1
    img = ndimage.gaussian_filter(img, 0.6, truncate=3.0)
    # MRI magnitude noise is Rician: the modulus of complex Gaussian noise.
    img = np.hypot(img + correlated_noise(grid.shape, noise, 0.7, rng), correlated_noise(grid.shape, noise, 0.7, rng))
    tumour = labels > 0
    return (
        img,
        {
            "brain": brain,
            "tumour": tumour,
            "core": (labels == 1) | (labels == 4),
            "enhancing": labels == 4,
            "edema": labels == 2,
        },
        labels,
        "MR",
    )
