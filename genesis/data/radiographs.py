"""Radiographs as pretraining data: a folder or CSV of chest X-rays (or synthetic ones) as a source.

A radiograph source behaves like a volume source (:mod:`genesis.data.sources`) whose volumes are
2D images: ``load(i)`` gives (1, S, S) float32 in [0, 1] (:func:`genesis.io.radiograph.load_radiograph`,
resized to ``image_size`` S), so the pretraining pipeline (cubes of depth 1, ``--dims 2``) and
every 2D proxy task run on radiographs unchanged.

For the supervised ``metadata`` task a source built ``with_metadata`` returns (2, S, S): slice 0 is
the image, slice 1 carries the labels of that image (sex, age, view) in its first row behind a
marker value (:func:`encode_metadata`); the task splits the two (:func:`decode_metadata`) and
refuses a batch without the marker, so the labels travel with the image through the data loader,
the cache and DDP sharding without a second data path.

Metadata come from the CSV (CheXpert columns ``Sex``, ``Age``, ``Frontal/Lateral``) or, for DICOM
files, from the header (PatientSex, PatientAge, ViewPosition: ``LL``/``RL``/``LATERAL`` is lateral).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from genesis.errors import DatasetLayoutError

MARKER = -7.25  # never a pixel value (images are in [0, 1])
UNKNOWN = -1.0
META_FIELDS = ("sex", "age", "view")  # first-row positions 1, 2, 3 of the metadata slice
DEFAULT_IMAGE_SIZE = 224
_LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT")


@dataclass
class RadiographItem:
    """One radiograph of a source: its file and what is known about it (None = unknown)."""

    path: Path
    sex: float | None = None  # 1 male, 0 female
    age: float | None = None  # years
    view: float | None = None  # 0 frontal, 1 lateral


def encode_metadata(image: np.ndarray, item: RadiographItem) -> np.ndarray:
    """(S, S) image -> (2, S, S): the image, then a slice whose first row holds marker, sex, age, view."""
    plane = np.zeros_like(image)
    plane[0, 0] = MARKER
    for k, name in enumerate(META_FIELDS, start=1):
        value = getattr(item, name)
        plane[0, k] = UNKNOWN if value is None else float(value)
    return np.stack([image, plane]).astype(np.float32)


def decode_metadata(cubes: Any) -> tuple[Any, Any]:
    """(B, 1, 2, S, S) -> images (B, 1, S, S) and labels (B, 3) (sex, age, view; -1 unknown).

    Raises:
        ValueError: the batch does not carry metadata (not from a ``with_metadata`` source).
    """
    if cubes.dim() != 5 or cubes.shape[2] != 2 or not bool((cubes[:, 0, 1, 0, 0] == MARKER).all()):
        raise ValueError("the metadata task needs radiographs with metadata (--modality xray with a CSV of "
                         "radiographs, DICOM radiographs or the synthetic ones); this batch has none")
    return cubes[:, :, 0], cubes[:, 0, 1, 0, 1:1 + len(META_FIELDS)].float()


def _sex(text: Any) -> float | None:
    t = str(text or "").strip().upper()
    return 1.0 if t in ("M", "MALE") else 0.0 if t in ("F", "FEMALE") else None


def _float(text: Any) -> float | None:
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if np.isfinite(value) and value >= 0 else None


def _view(text: Any) -> float | None:
    t = str(text or "").strip().upper()
    if t in ("FRONTAL", "PA", "AP", "AP AXIAL", "PA LLD"):
        return 0.0
    return 1.0 if t in _LATERAL_VIEWS else None


def read_image_table(path: Path, required: tuple[str, ...] = ("Path",)) -> tuple[list[dict[str, str]], Callable[[str], Path]]:
    """Rows of a CSV whose ``Path`` column names images, and the function that finds each image.

    ``Path`` is resolved against the CSV's folder, its parent, or the CSV's folder without the
    path's first component (CheXpert's ``CheXpert-v1.0-small/...``), whichever holds the first row.

    Raises:
        DatasetLayoutError: unreadable CSV, missing ``required`` columns, no rows, or a first image
            that none of those folders holds.
    """
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetLayoutError(f"cannot read the CSV ({exc})", path) from None
    missing = [c for c in required if c not in fields]
    if missing:
        raise DatasetLayoutError(f"the CSV lacks column(s) {missing} (has {fields})", path)
    if not rows:
        raise DatasetLayoutError("CSV has no rows", path)
    first = rows[0]["Path"]
    candidates: list[Callable[[str], Path]] = [
        lambda p: path.parent / p,
        lambda p: path.parent.parent / p,
        lambda p: path.parent / Path(*Path(p).parts[1:]) if len(Path(p).parts) > 1 else path.parent / p,
    ]
    resolve = next((c for c in candidates if c(first).is_file()), None)
    if resolve is None:
        raise DatasetLayoutError(f"image {first} of the first row not found next to the CSV or its folder", path)
    return rows, resolve


def read_radiograph_csv(path: Path) -> list[RadiographItem]:
    """A CSV with a ``Path`` column (CheXpert layout; ``Sex``, ``Age``, ``Frontal/Lateral`` optional)."""
    rows, resolve = read_image_table(path)
    return [RadiographItem(resolve(row["Path"]), _sex(row.get("Sex")), _float(row.get("Age")),
                           _view(row.get("Frontal/Lateral") or row.get("AP/PA"))) for row in rows]


def find_radiographs(folder: Path) -> list[RadiographItem]:
    """PNG/JPEG/DICOM files under ``folder`` (recursive, sorted; hidden files skipped)."""
    from genesis.io.radiograph import is_radiograph_file

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and is_radiograph_file(p))
    if not files:
        raise DatasetLayoutError("no radiographs (.png, .jpg, .jpeg, .dcm) in this folder", folder)
    return [RadiographItem(p) for p in files]


def is_radiograph_data(data: str | Path | None) -> bool:
    """True for a CSV with a ``Path`` column of images, or a folder holding PNG/JPEG images and no
    CT volume files (DICOM radiograph folders need ``--modality xray``: CT series are DICOM too)."""
    if data is None:
        return False
    path = Path(data)
    if path.is_file() and path.suffix.lower() == ".csv":
        try:
            with open(path, newline="") as handle:
                row = next(csv.DictReader(handle), None)
        except (OSError, UnicodeDecodeError, csv.Error):
            return False
        return bool(row) and "Path" in row and str(row["Path"]).lower().endswith((".png", ".jpg", ".jpeg", ".dcm"))
    if path.is_dir():
        # PNG/JPEG and no CT volume files: a folder of scans with PNG montages stays CT
        from genesis.io.readers import volume_suffix

        images = False
        for p in path.rglob("*"):
            if volume_suffix(p) is not None:
                return False
            images = images or p.suffix.lower() in (".png", ".jpg", ".jpeg")
        return images
    return False


class RadiographSource:
    """Radiographs as a volume source: ``load(i)`` -> (1, S, S), or (2, S, S) ``with_metadata``.

    Args:
        items: the radiographs.
        image_size: side S of the square images.
        with_metadata: append the metadata slice (for the ``metadata`` task).
        aspect: see :func:`genesis.io.radiograph.resize_square`.
    """

    is_synthetic = False

    def __init__(self, items: list[RadiographItem], image_size: int = DEFAULT_IMAGE_SIZE,
                 with_metadata: bool = False, aspect: str = "pad", max_pixels: int | None = 8192 * 8192) -> None:
        if not items:
            raise DatasetLayoutError("no radiographs given")
        self.items, self.image_size, self.with_metadata, self.aspect = list(items), int(image_size), with_metadata, aspect
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        return str(self.items[i].path)

    def load(self, i: int) -> np.ndarray:
        from genesis.io.radiograph import load_radiograph

        item = self.items[i]
        r = load_radiograph(item.path, size=self.image_size, aspect=self.aspect, max_pixels=self.max_pixels)
        if item.sex is None and item.age is None and item.view is None and r.metadata:
            item = replace(item, sex=_sex(r.metadata.get("sex")), age=r.metadata.get("age"),
                           view=_view(r.metadata.get("view")))
        return encode_metadata(r.array, item) if self.with_metadata else r.array[None]


class SyntheticRadiographSource:
    """``n`` synthetic radiographs (:mod:`genesis.data.synthetic.radiograph`), marked synthetic."""

    is_synthetic = True

    def __init__(self, n: int = 16, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE,
                 with_metadata: bool = False) -> None:
        if n < 1:
            raise DatasetLayoutError(f"a synthetic source needs at least 1 radiograph, got n={n}")
        self.n, self.seed, self.image_size, self.with_metadata = int(n), int(seed), int(image_size), with_metadata

    def __len__(self) -> int:
        return self.n

    def name(self, i: int) -> str:
        return f"synthetic-radiograph:{self.seed + i}"

    def load(self, i: int) -> np.ndarray:
        from genesis.data.synthetic.radiograph import generate_radiograph

        r = generate_radiograph(self.seed + int(i), size=self.image_size)
        if not self.with_metadata:
            return r.image[None]
        item = RadiographItem(Path(self.name(i)), 1.0 if r.sex == "Male" else 0.0, float(r.age),
                              1.0 if r.view == "Lateral" else 0.0)
        return encode_metadata(r.image, item)
