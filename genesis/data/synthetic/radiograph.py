"""Synthetic chest radiographs: projections of the synthetic chest CT, with labels and metadata.

A frontal radiograph is a line integral of attenuation along the antero-posterior axis; a lateral
one along the left-right axis. Attenuation is taken proportional to ``(HU + 1000) / 1000`` (water 1,
air 0) and the displayed value is ``1 - exp(-k * integral)`` (MONOCHROME2: bone bright, lungs
dark), scaled so the densest ray is white. Rows run head to feet.

Findings give CheXpert-style labels (1 positive, 0 negative, -1 uncertain):

* ``Pleural Effusion``: fluid (10 HU) filling the posterior (dependent) part of the lung bases;
* ``Consolidation``: a ball of lung 20-40 mm across filled with 0-40 HU;
* ``Lung Lesion``: nodules of the CT generator; only nodules of 10 mm or more are labelled 1,
  smaller ones -1 (uncertain, as a report would hedge), none 0;
* ``No Finding``: 1 when none of the above is positive.

Metadata are drawn and leave a trace in the image, so the ``metadata`` pretext task has something
to learn: sex (M: larger body, F: smaller), age 20-90 years (bone density falls with age), view
(frontal 80 %, AP or PA, or lateral). Everything here is synthetic and marked so; never patient data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from genesis.rng import numpy_generator

#: CheXpert's 14 observations, in the order of its CSV columns.
CHEXPERT_OBSERVATIONS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)
SYNTHETIC_CXR_NOTE = "SYNTHETIC chest radiographs (projections of genesis.data.synthetic chest CT; not patient data)"
_STREAM = 0xC4E5


@dataclass
class SyntheticRadiograph:
    """One synthetic radiograph.

    Attributes:
        image: float32 (size, size) in [0, 1], MONOCHROME2.
        labels: observation -> 1 / 0 / -1 (uncertain) / None (not mentioned).
        sex: ``"Male"`` or ``"Female"`` (CheXpert's spelling).
        age: years.
        view: ``"Frontal"`` or ``"Lateral"``.
        projection: ``"AP"``, ``"PA"`` or ``""`` (lateral).
        seed: the generator seed.
    """

    image: np.ndarray
    labels: dict[str, float | None]
    sex: str
    age: int
    view: str
    projection: str
    seed: int
    synthetic: bool = field(default=True)


def generate_radiograph(seed: int, size: int = 64, ct_shape: tuple[int, int, int] = (40, 64, 64)) -> SyntheticRadiograph:
    """A seeded synthetic chest radiograph (see the module docstring).

    Args:
        seed: the same seed gives the same radiograph.
        size: side of the square image.
        ct_shape: (z, y, x) voxels of the synthetic CT projected (the chest keeps its physical
            size; a coarser grid is faster).
    """
    from genesis.data.synthetic import generate_chest_ct
    from genesis.io.radiograph import resize_square

    rng = numpy_generator(_STREAM, seed)
    sex = "Male" if rng.random() < 0.5 else "Female"
    age = int(rng.integers(20, 91))
    lateral = rng.random() < 0.2
    projection = "" if lateral else ("AP" if rng.random() < 0.4 else "PA")
    spacing = tuple(s * b / n for s, b, n in zip((2.5, 2.0, 2.0), (96, 160, 160), ct_shape))
    scale = (1.0, 1.05) if sex == "Male" else (0.88, 0.93)
    ct = generate_chest_ct(int(seed), shape=tuple(ct_shape), spacing=spacing, body_scale=scale, n_nodules=(0, 3))
    hu = ct.volume.array.copy()
    lungs = ct.masks["lungs"].astype(bool)
    bones = ct.masks["bones"].astype(bool)
    hu[bones] = -1000.0 + (hu[bones] + 1000.0) * (1.0 - 0.005 * (age - 20))  # bone density falls with age
    z, y, x = np.indices(hu.shape, dtype=np.float32)
    labels: dict[str, float | None] = {name: None for name in CHEXPERT_OBSERVATIONS}
    effusion = rng.random() < 0.35 and lungs.any()
    if effusion:  # fluid in the dependent (posterior, inferior) lung
        zs = np.flatnonzero(lungs.any(axis=(1, 2)))
        level = zs[0] + rng.uniform(0.2, 0.45) * (zs[-1] - zs[0])
        ys = np.flatnonzero(lungs.any(axis=(0, 2)))
        back = ys[0] + 0.5 * (ys[-1] - ys[0])
        hu[lungs & (z < level) & (y > back)] = 10.0
    labels["Pleural Effusion"] = 1.0 if effusion else 0.0
    consolidation = rng.random() < 0.3 and lungs.any()
    if consolidation:
        idx = np.argwhere(lungs)
        c = idx[int(rng.integers(len(idx)))]
        radius_mm = rng.uniform(10.0, 20.0)
        sz, sy, sx = spacing
        ball = ((z - c[0]) * sz) ** 2 + ((y - c[1]) * sy) ** 2 + ((x - c[2]) * sx) ** 2 < radius_mm**2
        hu[ball & lungs] = rng.uniform(0.0, 40.0)
    labels["Consolidation"] = 1.0 if consolidation else 0.0
    nodules = [f for f in ct.findings if f.kind == "nodule"]
    if any(f.diameter_mm >= 10.0 for f in nodules):
        labels["Lung Lesion"] = 1.0
    elif nodules:
        labels["Lung Lesion"] = -1.0
    else:
        labels["Lung Lesion"] = 0.0
    positive = any(labels[k] == 1.0 for k in ("Pleural Effusion", "Consolidation", "Lung Lesion"))
    labels["No Finding"] = None if positive else 1.0
    mu = np.clip((hu + 1000.0) / 1000.0, 0.0, None)
    axis, step = (2, spacing[2]) if lateral else (1, spacing[1])
    path = mu.sum(axis=axis) * step / 10.0  # cm of water equivalent
    image = 1.0 - np.exp(-0.08 * path)
    image = image[::-1] / max(float(image.max()), 1e-6)  # rows head to feet
    image, _ = resize_square(image.astype(np.float32), int(size), "pad")
    return SyntheticRadiograph(image=image, labels=labels, sex=sex, age=age,
                               view="Lateral" if lateral else "Frontal", projection=projection, seed=int(seed))


def write_synthetic_chexpert(root, n: int, seed: int = 0, size: int = 64, uncertain_rows: bool = True):
    """Write ``n`` synthetic radiographs as 8-bit PNGs and a CheXpert-layout ``train.csv`` in ``root``.

    One patient per radiograph; returns the CSV path. The folder gets a README saying it is synthetic.
    """
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    rows = []
    for i in range(n):
        r = generate_radiograph(seed + i, size=size)
        rel = Path("CheXpert-synthetic") / "train" / f"patient{i + 1:05d}" / "study1" / f"view1_{r.view.lower()}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(r.image * 255).astype(np.uint8)).save(root / rel)
        values = ["" if r.labels[o] is None else f"{r.labels[o]:.1f}" for o in CHEXPERT_OBSERVATIONS]
        rows.append([str(rel), r.sex, str(r.age), r.view, r.projection] + values)
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
    import csv

    csv_path = root / "train.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    (root / "README.txt").write_text(SYNTHETIC_CXR_NOTE + "\n")
    return csv_path
