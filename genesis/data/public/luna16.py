"""LUNA16 (LUng Nodule Analysis 2016): ``subset0..subset9`` of ``<seriesuid>.mhd/.raw`` + CSVs.

Layout (as distributed)::

    root/subset0/<seriesuid>.mhd (+ .raw)   ... root/subset9/
    root/annotations.csv        seriesuid,coordX,coordY,coordZ,diameter_mm   (nodules >= 3 mm)
    root/candidates.csv         seriesuid,coordX,coordY,coordZ,class          (or candidates_V2.csv,
                                                                               also in candidates_V2/)

Coordinates are world millimetres (ITK/LPS, x y z). The Models Genesis / Tariq et al. reference
split uses subsets 0-4 for training, 5-6 for validation and 7-9 for testing (:data:`REFERENCE_SPLIT`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from genesis.errors import DatasetLayoutError, InputFileError

REFERENCE_SPLIT: dict[str, tuple[int, ...]] = {"train": (0, 1, 2, 3, 4), "val": (5, 6), "test": (7, 8, 9)}
CANDIDATE_FILES = ("candidates_V2.csv", "candidates_V2/candidates_V2.csv", "candidates.csv")


@dataclass(frozen=True)
class Luna16Scan:
    """One CT scan: its series UID, ``.mhd`` header path and subset number."""

    seriesuid: str
    path: Path
    subset: int


@dataclass(frozen=True)
class Luna16Annotation:
    """A reference nodule: centre (x, y, z) in world mm and diameter in mm."""

    seriesuid: str
    coord_xyz: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class Luna16Candidate:
    """A detection candidate: centre (x, y, z) world mm; ``label`` 1 = nodule, 0 = false positive."""

    seriesuid: str
    coord_xyz: tuple[float, float, float]
    label: int


def read_csv_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts; raises DatasetLayoutError naming missing columns."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DatasetLayoutError(f"CSV lacks column(s) {missing} (has {columns})", path)
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except OSError as exc:
        raise InputFileError(f"cannot read CSV ({exc.strerror or exc})", path) from exc
    except UnicodeDecodeError as exc:
        raise InputFileError("not a text CSV file", path) from exc


def _float(row: dict[str, str], key: str, path: Path, line: int) -> float:
    try:
        return float(row[key])
    except (TypeError, ValueError):
        raise DatasetLayoutError(f"line {line}: column {key!r} is not a number: {row.get(key)!r}", path) from None


def _world_xyz(row: dict[str, str], path: Path, line: int) -> tuple[float, float, float]:
    """The (coordX, coordY, coordZ) world position in mm of one CSV row."""
    return (_float(row, "coordX", path, line), _float(row, "coordY", path, line), _float(row, "coordZ", path, line))


def read_annotations(path: str | Path) -> list[Luna16Annotation]:
    """Parse ``annotations.csv``."""
    path = Path(path)
    rows = read_csv_rows(path, ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"))
    return [
        Luna16Annotation(
            r["seriesuid"],
            _world_xyz(r, path, i),
            _float(r, "diameter_mm", path, i),
        )
        for i, r in enumerate(rows, start=2)
    ]


def read_candidates(path: str | Path) -> list[Luna16Candidate]:
    """Parse ``candidates.csv`` / ``candidates_V2.csv``."""
    path = Path(path)
    rows = read_csv_rows(path, ("seriesuid", "coordX", "coordY", "coordZ", "class"))
    return [
        Luna16Candidate(
            r["seriesuid"],
            _world_xyz(r, path, i),
            int(_float(r, "class", path, i)),
        )
        for i, r in enumerate(rows, start=2)
    ]


class Luna16:
    """A LUNA16 root folder: scans by subset, annotations and candidates by series UID.

    Args:
        root: folder holding ``subset*`` folders and ``annotations.csv``.
        subsets: only these subset numbers (default: all present).

    Raises:
        DatasetLayoutError: root missing, no ``subsetN`` folder with ``.mhd`` files, or no
            ``annotations.csv``.
    """

    def __init__(self, root: str | Path, *, subsets: Iterable[int] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetLayoutError("LUNA16 root folder does not exist", self.root)
        wanted = None if subsets is None else {int(s) for s in subsets}
        scans: list[Luna16Scan] = []
        for folder in sorted(self.root.iterdir()):
            match = re.fullmatch(r"subset(\d+)", folder.name)
            if not (match and folder.is_dir()):
                continue
            subset = int(match.group(1))
            if wanted is not None and subset not in wanted:
                continue
            scans += [Luna16Scan(p.stem, p, subset) for p in sorted(folder.glob("*.mhd"))]
        if not scans:
            raise DatasetLayoutError(
                "no subset0..subset9 folder with <seriesuid>.mhd scans found (LUNA16 layout)", self.root
            )
        self.scans = scans
        self._by_uid = {s.seriesuid: s for s in scans}
        ann_path = self.root / "annotations.csv"
        if not ann_path.is_file():
            raise DatasetLayoutError("annotations.csv is missing (LUNA16 layout)", self.root)
        self.annotations = read_annotations(ann_path)
        cand_path = next((self.root / c for c in CANDIDATE_FILES if (self.root / c).is_file()), None)
        self.candidates = read_candidates(cand_path) if cand_path else []

    def __len__(self) -> int:
        return len(self.scans)

    def split(self, name: str) -> list[Luna16Scan]:
        """Scans of the reference split ``"train"`` (subsets 0-4), ``"val"`` (5-6) or ``"test"`` (7-9)."""
        if name not in REFERENCE_SPLIT:
            raise DatasetLayoutError(f"unknown LUNA16 split {name!r}; use one of {sorted(REFERENCE_SPLIT)}")
        return [s for s in self.scans if s.subset in REFERENCE_SPLIT[name]]

    def scan(self, seriesuid: str) -> Luna16Scan:
        try:
            return self._by_uid[seriesuid]
        except KeyError:
            raise DatasetLayoutError(f"no scan {seriesuid}.mhd in any subset folder", self.root) from None

    def annotations_for(self, seriesuid: str) -> list[Luna16Annotation]:
        return [a for a in self.annotations if a.seriesuid == seriesuid]

    def candidates_for(self, seriesuid: str) -> list[Luna16Candidate]:
        return [c for c in self.candidates if c.seriesuid == seriesuid]

    def load(self, seriesuid: str):
        """The scan as a ``genesis.io.Volume`` (HU)."""
        from genesis.io import load_volume

        return load_volume(self.scan(seriesuid).path)


def world_to_voxel(volume, coord_xyz: Sequence[float]) -> np.ndarray:
    """World (x, y, z) mm -> fractional voxel index (z, y, x), honouring origin/spacing/direction."""
    return np.asarray(volume.world_to_index(np.asarray(coord_xyz, dtype=np.float64)))


def voxel_to_world(volume, index_zyx: Sequence[float]) -> np.ndarray:
    """Voxel index (z, y, x) -> world (x, y, z) mm."""
    return np.asarray(volume.index_to_world(np.asarray(index_zyx, dtype=np.float64)))


def extract_cube(
    array: np.ndarray, centre_zyx: Sequence[float], size: Sequence[int], *, pad_value: float = -1000.0
) -> np.ndarray:
    """A ``size`` (D, H, W) block of ``array`` centred on ``centre_zyx`` (rounded), padded at borders.

    The block starts at ``round(centre) - size // 2`` on each axis; parts outside the array are
    filled with ``pad_value`` (air by default, for HU arrays).
    """
    size = tuple(int(s) for s in size)
    if len(size) != array.ndim:
        raise ValueError(f"cube size {size} does not match a {array.ndim}D array")
    out = np.full(size, pad_value, dtype=array.dtype)
    start = [int(np.rint(c)) - s // 2 for c, s in zip(centre_zyx, size)]
    src, dst = [], []
    for st, s, n in zip(start, size, array.shape):
        lo, hi = max(st, 0), min(st + s, n)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - st, hi - st))
    out[tuple(dst)] = array[tuple(src)]
    return out
