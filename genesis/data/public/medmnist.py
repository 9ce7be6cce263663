"""MedMNIST v2 3D ``.npz`` files (OrganMNIST3D, NoduleMNIST3D, AdrenalMNIST3D, ...).

Keys ``{train,val,test}_images`` (N, S, S, S) uint8 with S = 28 (or 64 for MedMNIST+) and
``{train,val,test}_labels`` (N, L). Images are returned as float32 in [0, 1] (divided by 255).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from genesis.errors import DatasetLayoutError, InputFileError

SPLITS = ("train", "val", "test")


@dataclass
class MedMnistSplit:
    """One split: images float32 (N, D, H, W) in [0, 1] and labels int64 (N,) or (N, L)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_medmnist3d(path: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, MedMnistSplit]:
    """Load the requested splits of a MedMNIST 3D ``.npz`` file.

    Raises:
        InputFileError: missing file or not an ``.npz`` archive.
        DatasetLayoutError: missing keys, a 2D MedMNIST file, or inconsistent image/label counts.
    """
    path = Path(path)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DatasetLayoutError(f"unknown MedMNIST split(s) {unknown}; use {SPLITS}", path)
    if not path.is_file():
        raise InputFileError("MedMNIST file does not exist", path)
    from genesis.io.integrity import check_declared_arrays, npz_headers

    try:
        # sizes from the headers, checked before np.load allocates them (a lone .npy fails below)
        headers = npz_headers(path) if zipfile.is_zipfile(path) else {}
        wanted = {f"{s}_{k}" for s in splits for k in ("images", "labels")}
        check_declared_arrays({k: v for k, v in headers.items() if k in wanted}, path, limit=None,
                              error=InputFileError)
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise InputFileError(f"not a MedMNIST .npz archive ({exc})", path) from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputFileError("not a MedMNIST .npz archive (a single .npy array)", path)
    with archive:
        keys = set(archive.files)
        missing = [f"{s}_{k}" for s in splits for k in ("images", "labels") if f"{s}_{k}" not in keys]
        if missing:
            raise DatasetLayoutError(f"MedMNIST file lacks key(s) {missing} (has {sorted(keys)})", path)
        out = {}
        for split in splits:
            images = archive[f"{split}_images"]
            labels = archive[f"{split}_labels"]
            # 2D MedMNIST: (N, H, W) grey or (N, H, W, 3) colour; 3D is (N, S, S, S).
            is_2d_colour = images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] != images.shape[-1]
            if images.ndim == 3 or is_2d_colour:
                raise DatasetLayoutError(
                    f"{split}_images has shape {images.shape}: this is a 2D MedMNIST file; a 3D one has (N, S, S, S)",
                    path,
                )
            if images.ndim != 4:
                raise DatasetLayoutError(f"{split}_images has shape {images.shape}, expected (N, S, S, S)", path)
            if len(labels) != len(images):
                raise DatasetLayoutError(f"{split}: {len(images)} images but {len(labels)} labels", path)
            labels = labels.astype(np.int64)
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            scale = 255.0 if images.dtype == np.uint8 or images.max(initial=0) > 1.0 else 1.0
            out[split] = MedMnistSplit(images.astype(np.float32) / np.float32(scale), labels)
    return out
