"""Tiny datasets in every layout of :mod:`genesis.data.layouts`, written into a temporary folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def write_nifti(path: Path, array: np.ndarray, spacing=(2.0, 2.0, 2.0), dtype=np.int16) -> Path:
    image = sitk.GetImageFromArray(np.asarray(array, dtype=dtype))
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def ct_case(seed: int, shape=(16, 16, 16), n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A HU-like volume (air -1000, body 40) with a bright blob (class 1) and a dark one (class 2)."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1000.0) + rng.normal(0, 20, shape)
    label = np.zeros(shape, np.uint8)
    z, y, x = np.indices(shape)
    for k in range(1, n_classes):
        c = rng.integers(4, np.array(shape) - 4)
        blob = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= 9
        image[blob] = 200.0 * k
        label[blob] = k
    return image, label


def msd_folder(root: Path, n: int = 6, channels: int = 1, n_classes: int = 3, v2: bool = True,
               with_test: bool = True) -> Path:
    """An MSD / nnU-Net raw folder: ``dataset.json``, ``imagesTr/CASE_000k``, ``labelsTr``, ``imagesTs``/``labelsTs``."""
    names = ["background", "bright", "dark", "other"][:n_classes]
    for i in range(n + (1 if with_test else 0)):
        case = f"case_{i:03d}"
        image, label = ct_case(i, n_classes=n_classes)
        tr = i < n
        for c in range(channels):
            write_nifti(root / ("imagesTr" if tr else "imagesTs") / f"{case}_{c:04d}.nii.gz", image + c)
        write_nifti(root / ("labelsTr" if tr else "labelsTs") / f"{case}.nii.gz", label, dtype=np.uint8)
    if v2:
        meta = {"channel_names": {str(c): "CT" for c in range(channels)},
                "labels": {name: k for k, name in enumerate(names)}, "numTraining": n, "file_ending": ".nii.gz"}
    else:
        meta = {"modality": {str(c): "CT" for c in range(channels)},
                "labels": {str(k): name for k, name in enumerate(names)}, "numTraining": n}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def datalist(root: Path, n: int = 6) -> Path:
    """A MONAI datalist of binary 3D segmentation cases (training / validation / test)."""
    rows = []
    for i in range(n):
        image, label = ct_case(100 + i, n_classes=2)
        rows.append({"image": str(write_nifti(root / "img" / f"s{i}.nii.gz", image).relative_to(root)),
                     "label": str(write_nifti(root / "seg" / f"s{i}.nii.gz", label, dtype=np.uint8).relative_to(root))})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": rows[:4], "validation": rows[4:5], "test": rows[5:]}))
    return path


def classification_csv(root: Path, n: int = 12) -> Path:
    """CSV classification: bright-blob volumes (class 1) vs none (class 0), two scans per patient."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "labels.csv"
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["image", "label", "group"])
        for i in range(n):
            image, _ = ct_case(200 + i, n_classes=2 if i % 2 else 1)
            w.writerow([str(write_nifti(root / "vol" / f"v{i}.nii.gz", image).relative_to(root)), i % 2, f"p{i // 2}"])
    return path


def patches_h5(path: Path, n: int = 20, side: int = 16, seed: int = 0, **extra) -> Path:
    """2D patches (N, 1, H, W) in [0, 1] with a binary square lesion, like the MSD lung patches."""
    import h5py

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 0.3, (n, 1, side, side)).astype(np.float32)
    labels = np.zeros((n, 1, side, side))
    for i in range(n):
        y, x = rng.integers(2, side - 6, 2)
        images[i, 0, y:y + 4, x:x + 4] += 0.6
        labels[i, 0, y:y + 4, x:x + 4] = 1.0
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = labels
        for key, value in extra.items():
            f[key] = value
    return path
