"""A picture of every Models Genesis transform on one CT sub-volume.

``python -m proxy_tasks.gallery --out docs/img/proxy_tasks.png [--volume PATH] [--seed 0]``

Rows: identity, non-linear (increasing and decreasing), local shuffle, inner cut-out, outer
cut-out, and the combined scheme; columns: original, transformed, changed-voxel mask (middle axial
slice). Without ``--volume`` the sub-volume comes from the synthetic chest CT generator and the
title says so; with ``--volume`` any CT file SimpleITK reads (HU) is used.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import proxy_tasks
from genesis.errors import InputFileError
from genesis.viz import save_grid

CROP = (32, 64, 64)
WINDOW = (-1000.0, 1000.0)

ROWS = (
    ("identity", "identity", {}),
    ("non-linear (increasing)", "nonlinear", {"decreasing_prob": 0.0}),
    ("non-linear (decreasing)", "nonlinear", {"decreasing_prob": 1.0}),
    ("local shuffle", "local_shuffle", {}),
    ("inner cut-out", "inner_cutout", {}),
    ("outer cut-out", "outer_cutout", {}),
    ("combined", "combined", {"flip_prob": 0.0, "paint_prob": 1.0, "local_shuffle_prob": 1.0}),
)


def window01(hu: np.ndarray, window: tuple[float, float] = WINDOW) -> np.ndarray:
    """HU -> [0, 1] with the Models Genesis window [-1000, 1000]."""
    lo, hi = window
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def center_crop(volume: np.ndarray, crop: tuple[int, int, int] = CROP) -> np.ndarray:
    """Central (D, H, W) crop, edge-padded where the volume is smaller."""
    pad = [(max(0, (c - s + 1) // 2), max(0, c - s - (c - s + 1) // 2)) for s, c in zip(volume.shape, crop)]
    volume = np.pad(volume, pad, mode="edge")
    start = [(s - c) // 2 for s, c in zip(volume.shape, crop)]
    return volume[tuple(slice(a, a + c) for a, c in zip(start, crop))]


def save_transform_gallery(volume01: np.ndarray, path: str | Path, seed: int = 0, title: str | None = None) -> Path:
    """Write the gallery PNG for a (D, H, W) sub-volume in [0, 1].

    Args:
        volume01: sub-volume in [0, 1], (z, y, x).
        path: PNG to write (atomically).
        seed: seed of the transforms' torch.Generator.
        title: figure title.

    Returns:
        The path written.
    """
    vol = torch.as_tensor(np.ascontiguousarray(volume01), dtype=torch.float32)[None, None]
    z = vol.shape[2] // 2
    rows, names = [], []
    for k, (label, name, params) in enumerate(ROWS):
        task = proxy_tasks.build(name, **{**params, "prob": 1.0})
        pair = task(vol, generator=torch.Generator().manual_seed(seed + k))
        rows.append([pair.target[0, 0, z].numpy(), pair.input[0, 0, z].numpy(), pair.mask[0, 0, z].float().numpy()])
        names.append(label)
    return save_grid(
        rows,
        path,
        row_titles=names,
        col_titles=["original", "transformed", "changed voxels"],
        title=title or "Models Genesis transforms (axial slice)",
        cmap=["gray", "gray", "magma"],
    )


def _load_volume(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    try:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    except RuntimeError as exc:
        raise InputFileError(f"cannot read the CT volume: {str(exc).strip().splitlines()[-1]}", path) from None


def _synthetic_volume(seed: int) -> np.ndarray:
    from genesis.data.synthetic import generate_chest_ct

    ct = generate_chest_ct(seed, shape=(64, 128, 128))
    hu = ct.volume.array
    lungs = np.argwhere(ct.masks["lungs"] > 0)
    center = lungs.mean(0).round().astype(int) if len(lungs) else np.array(hu.shape) // 2
    start = [int(np.clip(c - s // 2, 0, n - s)) for c, s, n in zip(center, CROP, hu.shape)]
    return hu[tuple(slice(a, a + s) for a, s in zip(start, CROP))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Picture of the Models Genesis transforms on a CT sub-volume.")
    parser.add_argument("--out", type=Path, default=Path("docs/img/proxy_tasks.png"))
    parser.add_argument("--volume", type=Path, default=None, help="CT file (HU); default: synthetic chest CT")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.volume is not None:
        hu = center_crop(_load_volume(args.volume))
        title = f"Models Genesis transforms on {args.volume.name} (axial slice)"
    else:
        hu = _synthetic_volume(args.seed)
        title = "Models Genesis transforms on a SYNTHETIC chest CT (axial slice)"
    out = save_transform_gallery(window01(hu), args.out, seed=args.seed, title=title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
