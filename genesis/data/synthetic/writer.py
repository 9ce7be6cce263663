"""Write a synthetic chest CT dataset to disk: volumes, masks, findings and LUNA16-style CSVs.

The CSVs use world (mm) coordinates like LUNA16, so :mod:`genesis.data.public.luna16` reads a
``layout="luna16"`` dataset exactly as it reads the real one.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from genesis.data.synthetic.chest import MASK_NAMES, generate_chest_ct
from genesis.data.synthetic.config import SYNTHETIC_DESCRIPTION, SyntheticConfig, SyntheticCT
from genesis.errors import ConfigError, InputFileError
from genesis.fileio import atomic_write_text

LAYOUTS = ("nifti", "luna16")


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset made with ``seed`` (independent streams per case)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def case_uid(seed: int, index: int) -> str:
    """Series identifier of a synthetic case; says it is synthetic."""
    return f"synthetic-s{int(seed)}-{int(index):04d}"


def save_mask(mask: np.ndarray, ct: SyntheticCT, path: str | Path) -> Path:
    """Write a uint8 mask on the grid of ``ct.volume`` (any SimpleITK format), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask, dtype=np.uint8))
    vol = ct.volume
    image.SetSpacing(tuple(vol.spacing[::-1]))
    image.SetOrigin(vol.origin)
    image.SetDirection(vol.direction)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        sitk.WriteImage(image, str(tmpdir / path.name), useCompression=True)
        os.replace(tmpdir / path.name, path)
    finally:
        for item in tmpdir.iterdir():
            item.unlink()
        tmpdir.rmdir()
    return path


def _csv_text(header: Sequence[str], rows: list[Sequence]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_synthetic_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    config: SyntheticConfig | None = None,
    *,
    layout: str = "nifti",
    masks: Sequence[str] = MASK_NAMES,
    montage: bool = False,
) -> list[Path]:
    """Generate ``n`` synthetic chest CTs and write them with their annotations.

    Layout under ``out_dir``:
      - ``images/<uid>.nii.gz`` (``layout="nifti"``) or ``subset<i % 10>/<uid>.mhd`` (``"luna16"``);
      - ``masks/<uid>/<name>.nii.gz`` (uint8) for each name in ``masks``;
      - ``findings.csv`` (every finding: voxel and world coordinates, kind, subtype, label);
      - ``annotations.csv`` (nodules) and ``candidates.csv`` (nodules class 1, false positives
        class 0) in LUNA16 columns and world mm;
      - ``README.txt`` saying the data is synthetic; ``montages/<uid>.png`` if ``montage``.

    Args:
        out_dir: destination folder (created).
        n: number of cases (>= 1).
        seed: dataset seed; case i uses :func:`case_seed` (seed, i).
        config: generator configuration (defaults when None).
        layout: ``"nifti"`` or ``"luna16"``.
        masks: which masks to write.
        montage: also write a PNG montage per case.

    Returns:
        The volume paths, in case order.

    Raises:
        ConfigError: bad ``n``, ``layout`` or mask name.
        InputFileError: ``out_dir`` exists and is not a directory.
    """
    if n < 1:
        raise ConfigError(f"number of synthetic cases must be >= 1, got {n}")
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown synthetic dataset layout {layout!r}; use one of {LAYOUTS}")
    unknown = sorted(set(masks) - set(MASK_NAMES))
    if unknown:
        raise ConfigError(f"unknown mask name(s) {unknown}; known: {list(MASK_NAMES)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputFileError("output path exists and is not a directory", out)
    out.mkdir(parents=True, exist_ok=True)

    from genesis.io import save_volume

    paths: list[Path] = []
    findings_rows, annotation_rows, candidate_rows = [], [], []
    for i in range(n):
        uid = case_uid(seed, i)
        ct = generate_chest_ct(case_seed(seed, i), config)
        ct.volume.metadata["series_uid"] = uid
        path = out / (f"images/{uid}.nii.gz" if layout == "nifti" else f"subset{i % 10}/{uid}.mhd")
        save_volume(ct.volume, path)
        paths.append(path)
        for name in masks:
            save_mask(ct.masks[name], ct, out / "masks" / uid / f"{name}.nii.gz")
        for f in ct.findings:
            x, y, z = (float(v) for v in ct.volume.index_to_world(f.center_zyx))
            findings_rows.append(
                [uid, f.kind, f.subtype, *f.center_zyx, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f.diameter_mm, f.label]
            )
            if f.kind == "nodule":
                annotation_rows.append([uid, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f.diameter_mm])
            if f.kind in ("nodule", "candidate"):
                candidate_rows.append([uid, f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", f.label])
        if montage:
            save_case_montage(ct, out / "montages" / f"{uid}.png", title=f"{uid} (SYNTHETIC)")

    atomic_write_text(
        out / "findings.csv",
        _csv_text(
            ["seriesuid", "kind", "subtype", "index_z", "index_y", "index_x"]
            + ["coordX", "coordY", "coordZ", "diameter_mm", "label"],
            findings_rows,
        ),
    )
    luna_columns = ["seriesuid", "coordX", "coordY", "coordZ"]
    atomic_write_text(out / "annotations.csv", _csv_text(luna_columns + ["diameter_mm"], annotation_rows))
    atomic_write_text(out / "candidates.csv", _csv_text(luna_columns + ["class"], candidate_rows))
    cfg = config or SyntheticConfig()
    atomic_write_text(
        out / "README.txt",
        f"{SYNTHETIC_DESCRIPTION}.\nThese {n} volumes are SYNTHETIC (seed {seed}, contrast={cfg.contrast}, "
        f"shape {tuple(cfg.shape)}, spacing {tuple(cfg.spacing)} mm); they contain no patient data.\n"
        "findings.csv lists every finding (label 1 true, 0 false-positive candidate); annotations.csv and\n"
        "candidates.csv follow the LUNA16 columns in world millimetres.\n",
    )
    return paths


def save_case_montage(ct: SyntheticCT, path: str | Path, *, title: str | None = None) -> Path:
    """Axial/coronal/sagittal montage through the first finding (or the centre) with mask outlines."""
    from genesis.viz import save_montage

    vol = ct.volume.array
    centre = np.asarray(vol.shape) // 2
    if ct.findings:
        centre = np.clip(np.rint(ct.findings[0].center_zyx).astype(int), 0, np.asarray(vol.shape) - 1)
    # save_montage shows middle slices: recentre (padding, no wrap-around) on the chosen point.
    def centred(arr: np.ndarray, fill: float) -> np.ndarray:
        padded = np.pad(arr, [(s // 2, s // 2) for s in arr.shape], constant_values=fill)
        return padded[tuple(slice(c, c + s) for c, s in zip(centre, arr.shape))]

    overlays = {
        name: centred(ct.masks[name], 0)
        for name in ("lungs", "nodules", "candidates", "emboli")
        if ct.masks[name].any()
    }
    return save_montage(
        centred(vol, -1024.0),
        path,
        spacing=ct.volume.spacing,
        window=(-1000.0, 400.0),
        overlays=overlays,
        title=title or "SYNTHETIC chest CT",
    )
