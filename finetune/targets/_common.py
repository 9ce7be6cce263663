"""Helpers shared by the target modules: synthetic cases, HU -> [0, 1], resampling masks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from genesis.data.preprocess import resample, window_hu
from genesis.errors import DatasetLayoutError

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig
    from genesis.data.synthetic import SyntheticCT
    from genesis.io import Volume

#: seed offsets so the synthetic train, validation and test cases never coincide
SPLIT_OFFSETS = {"train": 0, "val": 100_000, "test": 200_000}
SYNTHETIC_NOTE = "SYNTHETIC chest CT (genesis.data.synthetic; procedural phantom, not patient data)"


def split_sizes(cfg: "FinetuneConfig") -> dict[str, int]:
    s = cfg.synthetic
    return {"train": s.n_train, "val": s.n_val, "test": s.n_test}


def synthetic_cases(
    cfg: "FinetuneConfig",
    shape: Sequence[int],
    spacing: Sequence[float],
    **overrides,
) -> Iterator[tuple[str, int, "SyntheticCT"]]:
    """Yield ``(split, index, SyntheticCT)`` for every synthetic case of every split.

    Seeds are ``cfg.synthetic.seed + split offset + index`` (independent of the run seed), so all
    repeats and label fractions share one test set.
    """
    from genesis.data.synthetic import generate_chest_ct

    shape = tuple(cfg.synthetic.shape) if cfg.synthetic.shape is not None else tuple(shape)
    for split, n in split_sizes(cfg).items():
        for i in range(n):
            seed = cfg.synthetic.seed + SPLIT_OFFSETS[split] + i
            yield split, i, generate_chest_ct(seed, shape=shape, spacing=tuple(spacing), **overrides)


def resample_pair(volume: "Volume", masks: dict[str, np.ndarray], spacing: Sequence[float] | None):
    """Resample a volume (linear) and its masks (nearest) to ``spacing`` (None: unchanged)."""
    if spacing is None or np.allclose(volume.spacing, spacing):
        return volume, masks
    new = resample(volume, tuple(spacing), order=1)
    out = {}
    for name, m in masks.items():
        rm = resample(volume.with_array(np.asarray(m, dtype=np.float32)), tuple(spacing), order=0)
        out[name] = (rm.array > 0.5).astype(np.uint8)
    return new, out


def to_unit(volume: "Volume", window: tuple[float, float]) -> np.ndarray:
    """HU volume -> float32 [0, 1] by the target's window."""
    return window_hu(volume.array, window).astype(np.float32)


def normalise_mri(array: np.ndarray) -> np.ndarray:
    """MRI has no HU: scale by the 0.5 / 99.5 percentiles of the non-zero (brain) voxels to [0, 1]."""
    a = np.asarray(array, dtype=np.float32)
    brain = a[a > 0]
    if brain.size == 0:
        return np.zeros_like(a)
    lo, hi = np.percentile(brain, [0.5, 99.5])
    return np.clip((a - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def require_dir(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise DatasetLayoutError(f"expected a directory with {what}", root)
    return root


def scale_to_mm(center_zyx: Sequence[float], src_spacing: Sequence[float], dst_spacing: Sequence[float]) -> tuple[float, ...]:
    """Voxel coordinates on one grid -> voxel coordinates on a resampled grid (same origin)."""
    return tuple(float(c) * s / d for c, s, d in zip(center_zyx, src_spacing, dst_spacing))


def limit_negatives(candidates: list, limit: int | None, key: str, label=lambda c: c.label) -> list:
    """All positive candidates plus at most ``limit`` negatives, chosen by a generator seeded from
    ``key`` (the scan id), so the subset is the same in every run and repeat. ``None``/0: all."""
    if not limit:
        return list(candidates)
    negatives = [i for i, c in enumerate(candidates) if not label(c)]
    if len(negatives) <= limit:
        return list(candidates)
    seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    keep = set(np.random.default_rng(seed).choice(negatives, size=limit, replace=False).tolist())
    return [c for i, c in enumerate(candidates) if label(c) or i in keep]


def cached_array(cfg: "FinetuneConfig", kind: str, source: Path, params: object, compute) -> tuple[np.ndarray, dict]:
    """``compute() -> (array, meta)`` cached under ``OUT/cache/``; the array comes back memory-mapped.

    Real datasets are far larger than memory once cut into cubes or windows (RSNA PE: ~7,000
    studies); memory-mapping keeps only the pages in use resident, and a second run (another seed,
    fraction or ``--resume``) skips the DICOM/NIfTI reading. ``meta`` (labels, names) is a small
    JSON-able dict stored next to the ``.npy``. The key covers the source's path, size and
    modification time and the preprocessing ``params`` (crop, window, spacing...).
    """
    import json

    from genesis.fileio import atomic_path, atomic_write_text

    stat = source.stat() if source.exists() else None
    # assume_spacing changes the geometry of scans without a valid spacing, so it is part of the key
    key = hashlib.sha256(repr((str(source.resolve()), stat.st_size if stat else None,
                               stat.st_mtime_ns if stat else None, params,
                               getattr(cfg, "assume_spacing", None))).encode()).hexdigest()[:20]
    path = Path(cfg.out) / "cache" / kind / f"{key}.npy"
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        array, meta = compute()
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array))
        atomic_write_text(meta_path, json.dumps(meta))
    return np.load(path, mmap_mode="r"), json.loads(meta_path.read_text())


def candidate_samples(
    cfg: "FinetuneConfig",
    kind: str,
    source: Path,
    load,
    candidates: list,
    crop: Sequence[int],
    window: tuple[float, float],
    spacing: Sequence[float] | None,
    group: str,
) -> list:
    """Cubes around world-mm candidates (``.coord_xyz``, ``.label``) of one scan, cached (float16).

    ``load()`` reads the scan (a :class:`genesis.io.Volume`) only when the cache misses; the scan is
    resampled to ``spacing``, windowed, and each candidate's centre is mapped world -> voxel with
    the volume's full geometry (origin, spacing, direction).
    """
    from finetune.data import ClsSample, extract_patch

    def compute() -> tuple[np.ndarray, dict]:
        volume, _ = resample_pair(load(), {}, spacing)
        image = to_unit(volume, window)
        cubes = [extract_patch(image, volume.world_to_index(c.coord_xyz), crop) for c in candidates]
        return np.stack(cubes).astype(np.float16), {"labels": [int(c.label) for c in candidates]}

    params = (group, tuple(crop), tuple(window), spacing and tuple(spacing),
              [(tuple(c.coord_xyz), int(c.label)) for c in candidates])
    cubes, meta = cached_array(cfg, kind, source, params, compute)
    return [ClsSample(cubes[k], label, group, f"{group}/candidate-{k}") for k, label in enumerate(meta["labels"])]
