"""Labelled datasets in the layouts researchers bring, detected automatically.

:func:`read_dataset` turns a ``--data`` argument into a :class:`LabelledDataset`: a list of
:class:`Item` (image channel files or an array row, a label, a patient group, a split when the
layout gives one) plus how to read them. Four layouts:

* **MSD / nnU-Net raw** folder: ``dataset.json`` + ``imagesTr/`` + ``labelsTr/`` (+ ``imagesTs/``,
  ``labelsTs/``). nnU-Net v2 (``channel_names``, ``labels`` name -> value, ``file_ending``) and MSD /
  nnU-Net v1 (``modality``, ``labels`` value -> name, ``training`` list). Channels are files
  ``CASE_0000``, ``CASE_0001``... (a file without the suffix is one channel).
* **MONAI datalist** JSON: ``{"training": [{"image": ..., "label": ...}], "validation": [...],
  "test": [...]}`` read with :func:`monai.data.load_decathlon_datalist` (paths relative to the JSON).
* **CSV**: columns ``image``, ``label`` (a mask file for segmentation, a class for classification),
  optional ``group`` (patient) and ``split`` (train / val / test).
* **arrays** file, HDF5 (``.h5``/``.hdf5``) or ``.npz``: ``images`` (N, C, H, W) or (N, C, D, H, W),
  ``labels`` of the same spatial shape (segmentation) or (N,) (classification), optional
  ``groups`` (N,); without groups, ``group_size`` makes each run of N consecutive samples a group.

Every check that needs the data (shape/geometry of image vs label, label values vs dataset.json,
missing files, empty label sets) raises :class:`DatasetLayoutError` naming the file. Files are
read only when an item is loaded; the listing itself touches JSON/CSV/array headers only.
Arrays keep their stored intensities; volumes come back in their stored units (HU for CT).
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from genesis.errors import DatasetLayoutError, GenesisWarning, InputFileError

LAYOUTS = ("msd", "datalist", "csv", "arrays")
ARRAY_SUFFIXES = (".h5", ".hdf5", ".npz")
#: split names accepted in CSV ``split`` columns and datalist keys
_SPLIT_ALIASES = {"train": "train", "training": "train", "tr": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test", "ts": "test"}
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_VOLUME_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


@dataclass
class Item:
    """One sample of a dataset.

    Attributes:
        name: identifies the sample in outputs (case id, file stem or ``file#row``).
        group: the patient it belongs to; splits and label fractions never cut a group.
        split: ``"train"``, ``"val"``, ``"test"`` when the layout says, else None (drawn later).
        images: channel files (file layouts); empty for arrays.
        label: mask file (segmentation), class value (classification) or None (images only).
        index: row of an arrays file.
    """

    name: str
    group: str
    split: str | None = None
    images: tuple[Path, ...] = ()
    label: Path | int | None = None
    index: int | None = None


@dataclass
class Geometry:
    """Voxel spacing (z, y, x) mm, origin and direction of a file volume, to compare image and label."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def matches(self, other: "Geometry", tol: float = 1e-3) -> bool:
        return (self.shape == other.shape
                and np.allclose(self.spacing, other.spacing, rtol=tol, atol=tol)
                and np.allclose(self.origin, other.origin, rtol=tol, atol=max(tol, 1e-2))
                and np.allclose(self.direction, other.direction, atol=tol))


@dataclass
class LabelledDataset:
    """A dataset in one of :data:`LAYOUTS` (see the module docstring).

    Attributes:
        path: the ``--data`` argument (folder or file).
        layout: one of :data:`LAYOUTS`.
        items: every sample, in file order.
        spatial_dims: 2 (images) or 3 (volumes); for file layouts read from the first image.
        task: ``"segmentation"``, ``"classification"`` or None (no labels).
        modality: ``"CT"``, ``"MRI"``... from dataset.json or the arrays file; None when unknown.
        label_names: class value -> name from dataset.json (None: values found in the labels).
        in_channels: image channels.
    """

    path: Path
    layout: str
    items: list[Item]
    spatial_dims: int
    task: str | None
    modality: str | None = None
    label_names: dict[int, str] | None = None
    in_channels: int = 1
    _arrays: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------------------ reading
    def labelled(self, split: str | None = None) -> list[Item]:
        """Items with a label (optionally of one split)."""
        return [it for it in self.items if it.label is not None and (split is None or it.split == split)]

    def load_image(self, item: Item) -> tuple[np.ndarray, Geometry | None, str | None]:
        """``(array (C, *spatial) float32, geometry, header modality)`` of one item, as stored.

        Raises:
            DatasetLayoutError: NaN, infinite or complex values (every layout; checked here, where
                the images of every layout are read, so none is trained on).
        """
        if self._arrays is not None:
            image = self._arrays.image(item.index)
            check_image_values(image, self.path, f"{item.name} ('images' row {item.index})")
            return np.asarray(image, dtype=np.float32), None, None
        arrays, geometries, modality = [], [], None
        for path in item.images:
            array, geometry, modality = _read_volume(path, self.modality)
            if geometries and not geometry.matches(geometries[0]):
                raise DatasetLayoutError(
                    f"channel geometry {geometry.shape} / spacing {geometry.spacing} differs from the first channel "
                    f"{item.images[0].name} ({geometries[0].shape} / {geometries[0].spacing})", path)
            check_image_values(array, path, item.name)
            arrays.append(array)
            geometries.append(geometry)
        return np.stack(arrays).astype(np.float32, copy=False), geometries[0], modality

    def load_mask(self, item: Item, geometry: Geometry | None, image_shape: Sequence[int]) -> np.ndarray:
        """The integer mask of a segmentation item, checked against its image's shape and geometry."""
        if self._arrays is not None:
            mask = np.asarray(self._arrays.label(item.index))
            where = self.path
            if mask.ndim == len(image_shape) and mask.shape[0] == 1:
                mask = mask[0]
        else:
            if not isinstance(item.label, Path):
                raise DatasetLayoutError(f"{item.name}: expected a mask file as label, got {item.label!r}", self.path)
            where = item.label
            mask_geometry, mask = _read_label(item.label)
            if geometry is not None and not mask_geometry.matches(geometry):
                raise DatasetLayoutError(
                    f"label geometry does not match its image {item.images[0].name}: shape {mask_geometry.shape} vs "
                    f"{geometry.shape}, spacing {mask_geometry.spacing} vs {geometry.spacing}, origin "
                    f"{mask_geometry.origin} vs {geometry.origin}", where)
        if tuple(mask.shape) != tuple(image_shape[1:]):
            raise DatasetLayoutError(f"{item.name}: label shape {tuple(mask.shape)} does not match the image's spatial "
                                     f"shape {tuple(image_shape[1:])}", where)
        return _integer_labels(mask, where, item.name)

    def class_values(self) -> list[int]:
        """Sorted class values: dataset.json's, else every value found in the labels (reads masks)."""
        if self.label_names is not None:
            return sorted(self.label_names)
        if self.task == "classification":
            return sorted({int(it.label) for it in self.labelled()})  # type: ignore[arg-type]
        if self._arrays is not None:
            return sorted(int(v) for v in _integer_labels(np.unique(self._arrays.all_labels()), self.path, "labels"))
        values: set[int] = set()
        for it in self.labelled():
            values.update(int(v) for v in np.unique(_read_label(it.label)[1]))  # type: ignore[arg-type]
        return sorted(values)

    def check_values(self, values: Iterable[int], where: Path | str) -> None:
        """Raise if label values are not declared in dataset.json."""
        if self.label_names is None:
            return
        extra = sorted(set(int(v) for v in values) - set(self.label_names))
        if extra:
            raise DatasetLayoutError(f"label value(s) {extra} are not in dataset.json labels "
                                     f"{dict(sorted(self.label_names.items()))}", where)


# ----------------------------------------------------------------------------------- detection
def detect_layout(path: str | Path) -> str | None:
    """The layout of ``path`` (one of :data:`LAYOUTS`), or None when it is none of them."""
    p = Path(path)
    if p.is_dir():
        return "msd" if (p / "dataset.json").is_file() else None
    suffix = p.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return "arrays"
    if suffix == ".json":
        return "msd" if p.name == "dataset.json" and (p.parent / "imagesTr").is_dir() else "datalist"
    if suffix == ".csv" and p.is_file():
        return "csv" if "image" in _csv_columns(p) else None
    return None


def read_dataset(path: str | Path, *, group_size: int | None = None, require_labels: bool = True,
                 group_size_where_ungrouped: bool = False) -> LabelledDataset:
    """Read the listing of a dataset in any of :data:`LAYOUTS` (detected automatically).

    Args:
        path: a folder (MSD / nnU-Net raw), a ``.json`` datalist, a ``.csv`` or an arrays file.
        group_size: arrays without ``groups``: each run of this many consecutive samples is one
            group (patient). An error for layouts that name their groups (``groups`` array, case
            names, ``group`` column), unless ``group_size_where_ungrouped``.
        require_labels: False to accept images without labels (pretraining).
        group_size_where_ungrouped: apply ``group_size`` only where the dataset does not group its
            samples itself, and let its own groups stand elsewhere (a ``--test-data`` set takes
            ``--group-size`` of ``--data`` when it is an arrays file without ``groups``).
    Returns:
        The :class:`LabelledDataset`.
    Raises:
        InputFileError: the path does not exist or is no known layout.
        DatasetLayoutError: anything wrong inside the layout (the message names the file).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError("dataset path does not exist", p)
    layout = detect_layout(p)
    if layout is None:
        raise InputFileError("not a dataset layout genesis knows: expected an MSD/nnU-Net raw folder (dataset.json + "
                             "imagesTr/ + labelsTr/), a MONAI datalist .json, a .csv with image,label columns, or an "
                             ".h5/.npz arrays file (images, labels[, groups])", p)
    if group_size is not None and group_size < 1:
        raise DatasetLayoutError(f"--group-size must be at least 1, got {group_size}", p)
    if group_size_where_ungrouped and group_size is not None and (layout != "arrays" or _has_groups(p)):
        group_size = None  # the dataset names its own groups (patients)
    reader = {"msd": _read_msd, "datalist": _read_datalist, "csv": _read_csv, "arrays": _read_arrays}[layout]
    ds = reader(p.parent if p.is_file() and layout == "msd" else p, group_size)
    if group_size is not None and layout != "arrays":
        raise DatasetLayoutError("--group-size applies to arrays files without 'groups'; this layout names its "
                                 "cases (use a 'group' column/key for patients)", p)
    if require_labels:
        if not ds.labelled():
            raise DatasetLayoutError("the dataset has no labelled samples (empty label set)", p)
        if ds.label_names is not None and len(ds.label_names) < 2:
            raise DatasetLayoutError(f"dataset.json declares labels {ds.label_names}: need background and at least "
                                     "one foreground class (empty label set)", p / "dataset.json")
    return ds


# ------------------------------------------------------------------------------------- readers
def check_image_values(image: np.ndarray, where: Path | str, name: str) -> None:
    """Refuse an image that is not real and finite: a complex array (its imaginary part would be
    dropped by the cast to float32) or NaN/infinite values (they turn the loss into NaN, or, windowed
    to [0, 1], into silent constant voxels).

    Raises:
        DatasetLayoutError: naming ``where`` (the file) and ``name`` (the item).
    """
    dtype = np.asarray(image).dtype
    if dtype.kind == "c":
        raise DatasetLayoutError(f"{name}: image values are complex ({dtype}); genesis needs real intensities (store "
                                 "the magnitude, np.abs, or the real part, if that is what the image means)", where)
    if dtype.kind not in "biuf":
        raise DatasetLayoutError(f"{name}: image values are not numbers ({dtype})", where)
    finite = np.isfinite(image)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise DatasetLayoutError(f"{name}: image holds {bad} NaN or infinite value(s) of {finite.size}", where)


def _read_volume(path: Path, modality: str | None) -> tuple[np.ndarray, Geometry, str | None]:
    """A 3D image file as stored (float32), through genesis.io (checks of the harden helpers)."""
    from genesis.io.readers import load_volume

    if not path.is_file():
        raise DatasetLayoutError("image file listed by the dataset does not exist", path)
    with warnings.catch_warnings():
        if modality is not None and modality.upper() != "CT":
            # "not HU" warnings are expected for MRI and other modalities
            warnings.simplefilter("ignore", GenesisWarning)
        volume = load_volume(path)
    geometry = Geometry(volume.shape, volume.spacing, volume.origin, volume.direction)
    return volume.array.astype(np.float32, copy=False), geometry, volume.modality


def _read_label(path: Path) -> tuple[Geometry, np.ndarray]:
    """A label map with its geometry, read like the images (``load_volume(check=False)``: the same
    header checks and NIfTI sform/qform precedence, none of the HU checks, which an all-background
    mask would fail), so an image and its label never get different geometry from one header."""
    from genesis.errors import GenesisError
    from genesis.io.readers import load_volume

    if not Path(path).is_file():
        raise DatasetLayoutError("label file listed by the dataset does not exist", path)
    try:
        volume = load_volume(path, check=False)
    except GenesisError as exc:
        raise DatasetLayoutError(f"cannot read label file ({exc.args[0] if exc.args else exc})", path) from None
    array = volume.array
    if array.ndim != 3:
        raise DatasetLayoutError(f"label map is {array.ndim}D; 3D expected", path)
    geometry = Geometry(tuple(int(s) for s in array.shape), tuple(volume.spacing), tuple(volume.origin),
                        tuple(volume.direction))
    return geometry, array


def _integer_labels(mask: np.ndarray, where: Path | str, name: str) -> np.ndarray:
    if np.iscomplexobj(mask):
        raise DatasetLayoutError(f"{name}: labels are complex ({mask.dtype}); labels must be non-negative integers", where)
    values = np.unique(mask)
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)) or (values.size and values.min() < 0):
        shown = values[:8].tolist()
        raise DatasetLayoutError(f"{name}: labels must be non-negative integers, found values {shown}", where)
    return mask.astype(np.int64 if values.size and values.max() > 255 else np.uint8)


def _split_name(value: Any, where: Path, row: str) -> str | None:
    text = str(value or "").strip().lower()
    if not text:
        return None
    if text not in _SPLIT_ALIASES:
        raise DatasetLayoutError(f"{row}: unknown split {value!r} (use train, val or test)", where)
    return _SPLIT_ALIASES[text]


def _parse_class(value: Any, where: Path, row: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DatasetLayoutError(f"{row}: class label {value!r} is not a number", where) from None
    if number != round(number) or number < 0:
        raise DatasetLayoutError(f"{row}: class label {value!r} must be a non-negative integer", where)
    return int(number)


def _strip_ending(name: str) -> str | None:
    for ending in _VOLUME_ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return None


# MSD / nnU-Net raw ---------------------------------------------------------------------------
def _msd_labels(meta: dict, where: Path) -> dict[int, str] | None:
    labels = meta.get("labels")
    if labels is None:
        return None
    if not isinstance(labels, dict):
        raise DatasetLayoutError("'labels' must map names to values (nnU-Net v2) or values to names (MSD)", where)
    out: dict[int, str] = {}
    for key, value in labels.items():
        if isinstance(value, (list, tuple)):
            raise DatasetLayoutError(f"label {key!r} is a region ({value}); region-based labels are not supported", where)
        if str(key).strip().lstrip("-").isdigit():  # MSD / v1: "1": "tumour"
            out[int(key)] = str(value)
        else:  # nnU-Net v2: "tumour": 1
            out[_parse_class(value, where, f"label {key!r}")] = str(key)
    return out


def _msd_cases(folder: Path, ending: str | None, n_channels: int, where: Path) -> dict[str, tuple[Path, ...]]:
    """case id -> channel files of an images folder (``_0000`` suffixes or one file per case)."""
    files: dict[str, dict[int, Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        stem = f.name[: -len(ending)] if ending and f.name.endswith(ending) else _strip_ending(f.name)
        if stem is None:
            continue
        match = _CHANNEL_RE.match(stem)
        case, channel = (match["case"], int(match["channel"])) if match else (stem, 0)
        files.setdefault(case, {})[channel] = f
    cases = {}
    for case, channels in files.items():
        missing = [c for c in range(n_channels) if c not in channels]
        if missing:
            raise DatasetLayoutError(f"case {case!r} lacks channel file(s) {', '.join(f'{case}_{c:04d}' for c in missing)} "
                                     f"({n_channels} channels in dataset.json)", folder)
        cases[case] = tuple(channels[c] for c in range(n_channels))
    return cases


def _read_msd(root: Path, group_size: int | None) -> LabelledDataset:
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetLayoutError("MSD / nnU-Net raw folder without dataset.json", root)
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"not valid JSON ({exc})", meta_path) from None
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "unknown"}
    n_channels = len(channels)
    modality = str(channels.get("0", channels.get(0, "unknown")))
    modality = "CT" if modality.upper() == "CT" else ("MRI" if modality.upper() in ("MR", "MRI") or
                                                      modality.upper() in ("FLAIR", "T1", "T1W", "T2", "T2W", "T1GD", "ADC")
                                                      else modality)
    label_names = _msd_labels(meta, meta_path)
    ending = meta.get("file_ending")
    if not (root / "imagesTr").is_dir():
        raise DatasetLayoutError("no imagesTr/ folder", root)
    items: list[Item] = []
    for folder, labels, split in (("imagesTr", "labelsTr", None), ("imagesTs", "labelsTs", "test")):
        if not (root / folder).is_dir():
            continue
        label_dir = root / labels
        for case, files in _msd_cases(root / folder, ending, n_channels, meta_path).items():
            label = None
            if label_dir.is_dir() or folder == "imagesTr":
                suffix = ending or next(e for e in _VOLUME_ENDINGS if files[0].name.lower().endswith(e))
                candidate = label_dir / f"{case}{suffix}"
                if not candidate.is_file():
                    if folder == "imagesTr":
                        raise DatasetLayoutError(f"case {case!r} has no label file (expected {candidate})", candidate)
                    continue
                label = candidate
            items.append(Item(name=case, group=case, split=split, images=files, label=label))
    if not items:
        raise DatasetLayoutError("imagesTr/ holds no image files (.nii.gz, .nii, .mha, .nrrd)", root / "imagesTr")
    return LabelledDataset(root, "msd", items, 3, "segmentation", modality, label_names, n_channels)


# MONAI datalist --------------------------------------------------------------------------------
def _read_datalist(path: Path, group_size: int | None) -> LabelledDataset:
    from monai.data import load_decathlon_datalist

    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"not a readable JSON datalist ({exc})", path) from None
    keys = [k for k in ("training", "validation", "test") if isinstance(meta, dict) and meta.get(k)]
    if "training" not in keys:
        raise DatasetLayoutError("a MONAI datalist needs a non-empty 'training' list "
                                 '({"training": [{"image": ..., "label": ...}], "validation": [...], "test": [...]})', path)
    entries = [e for k in keys for e in meta[k] if isinstance(e, dict)]
    task = None
    if any("label" in e for e in entries):
        task = "segmentation" if all(isinstance(e.get("label"), str) for e in entries if "label" in e) else "classification"
    items: list[Item] = []
    for key in keys:
        split = {"training": None, "validation": "val", "test": "test"}[key]
        try:
            rows = load_decathlon_datalist(path, is_segmentation=task == "segmentation", data_list_key=key,
                                           base_dir=path.parent)
        except (ValueError, TypeError, KeyError) as exc:
            raise DatasetLayoutError(f"datalist key {key!r}: {exc}", path) from None
        for n, row in enumerate(rows):
            where = f"{key}[{n}]"
            if not isinstance(row, dict) or "image" not in row:
                raise DatasetLayoutError(f"{where} has no 'image'", path)
            images = row["image"] if isinstance(row["image"], (list, tuple)) else [row["image"]]
            images = tuple(Path(p) for p in images)
            for image in images:
                if not image.is_file():
                    raise DatasetLayoutError(f"{where}: image {image} does not exist", path)
            label: Path | int | None = None
            if "label" in row and row["label"] not in (None, ""):
                if task == "segmentation":
                    label = Path(row["label"])
                    if not label.is_file():
                        raise DatasetLayoutError(f"{where}: label file {label} does not exist", path)
                else:
                    label = _parse_class(row["label"], path, where)
            name = _strip_ending(images[0].name) or images[0].name
            group = str(row.get("group") or row.get("patient") or row.get("subject") or name)
            items.append(Item(name=name, group=group, split=split, images=images, label=label))
    return LabelledDataset(path, "datalist", items, 3, task, None, None, len(items[0].images))


# CSV -------------------------------------------------------------------------------------------
def _csv_columns(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [c.strip() for c in (next(csv.reader(handle), None) or [])]
    except (OSError, UnicodeDecodeError):
        return []


def _read_csv(path: Path, group_size: int | None) -> LabelledDataset:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetLayoutError(f"cannot read CSV ({exc})", path) from None
    rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(text.splitlines())]
    if not rows:
        raise DatasetLayoutError("CSV has no rows", path)
    labels = [r.get("label", "") for r in rows if r.get("label", "")]
    task = None
    if labels:
        numeric = all(re.fullmatch(r"[+-]?\d+(\.0*)?", v) for v in labels)
        task = "classification" if numeric else "segmentation"
    items: list[Item] = []
    for n, row in enumerate(rows, start=2):  # line numbers as an editor shows them
        where = f"line {n}"
        if not row.get("image"):
            raise DatasetLayoutError(f"{where}: empty 'image'", path)
        images = tuple(_resolve(path, p) for p in row["image"].split(";"))
        for image in images:
            if not image.is_file():
                raise DatasetLayoutError(f"{where}: image {image} does not exist", path)
        label: Path | int | None = None
        if row.get("label"):
            if task == "segmentation":
                label = _resolve(path, row["label"])
                if not label.is_file():
                    raise DatasetLayoutError(f"{where}: label file {label} does not exist", path)
            else:
                label = _parse_class(row["label"], path, where)
        name = _strip_ending(images[0].name) or images[0].name
        items.append(Item(name=name, group=row.get("group") or name, split=_split_name(row.get("split"), path, where),
                          images=images, label=label))
    return LabelledDataset(path, "csv", items, 3, task, None, None, len(items[0].images))


def _resolve(base: Path, value: str) -> Path:
    p = Path(value.strip()).expanduser()
    return p if p.is_absolute() else base.parent / p


# arrays ----------------------------------------------------------------------------------------
class _Arrays:
    """Row access to ``images``/``labels`` of an HDF5 or npz file (HDF5 rows read on demand)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        from genesis.io.integrity import check_declared_arrays, npz_headers

        # The whole arrays are read into memory (full()): refuse a header claim that cannot fit
        # before allocating. No fixed cap (a dataset may rightly be large): available memory is it.
        keys = ("images", "labels", "groups", "modality")
        if path.suffix.lower() == ".npz":
            import zipfile

            try:
                headers = npz_headers(path)
                check_declared_arrays({k: v for k, v in headers.items() if k in keys}, path, limit=None,
                                      error=DatasetLayoutError)
                with np.load(path, allow_pickle=False) as z:
                    self._data = {k: z[k] for k in keys if k in z.files}
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                raise DatasetLayoutError(f"cannot read npz ({exc})", path) from None
            self.attrs: dict[str, Any] = {}
            if "modality" in self._data:
                self.attrs["modality"] = str(self._data.pop("modality"))
        else:
            import h5py

            try:
                handle = h5py.File(path, "r")
            except OSError as exc:
                raise DatasetLayoutError(f"cannot read HDF5 ({exc})", path) from None
            self._data = {k: handle[k] for k in keys[:3] if k in handle}
            try:
                not_arrays = [k for k, v in self._data.items() if not isinstance(v, h5py.Dataset)]
                if not_arrays:
                    raise DatasetLayoutError(f"{not_arrays} in the arrays file are HDF5 groups, not datasets", path)
                check_declared_arrays({k: (v.shape, v.dtype) for k, v in self._data.items()}, path, limit=None,
                                      error=DatasetLayoutError)
            except DatasetLayoutError:
                handle.close()
                raise
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle.attrs.items()}
        if "images" not in self._data:
            raise DatasetLayoutError(f"arrays file needs an 'images' array (N, C, H, W) or (N, C, D, H, W); "
                                     f"found {sorted(self._data)}", path)
        self.shape = tuple(int(s) for s in self._data["images"].shape)
        if len(self.shape) not in (4, 5):
            raise DatasetLayoutError(f"'images' has shape {self.shape}; expected (N, C, H, W) or (N, C, D, H, W)", path)
        self._cache: dict[str, np.ndarray] = {}

    def has(self, key: str) -> bool:
        return key in self._data

    def full(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = np.asarray(self._data[key][()])
        return self._cache[key]

    def image(self, i: int) -> np.ndarray:
        return self.full("images")[i]

    def label(self, i: int) -> np.ndarray:
        return self.full("labels")[i]

    def all_labels(self) -> np.ndarray:
        return self.full("labels")


def _has_groups(path: Path) -> bool:
    """Whether an arrays file has a ``groups`` array (read from its header, not its data)."""
    if path.suffix.lower() == ".npz":
        import zipfile

        from genesis.io.integrity import npz_headers

        try:
            return "groups" in npz_headers(path)
        except (OSError, ValueError, zipfile.BadZipFile):
            return False  # the reader reports the damage
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return "groups" in handle
    except OSError:
        return False


def _read_arrays(path: Path, group_size: int | None) -> LabelledDataset:
    arrays = _Arrays(path)
    n, channels, spatial = arrays.shape[0], arrays.shape[1], arrays.shape[2:]
    task = None
    if arrays.has("labels"):
        lshape = tuple(int(s) for s in arrays._data["labels"].shape)
        if lshape in ((n,), (n, 1)):
            task = "classification"
        elif lshape in ((n, *spatial), (n, 1, *spatial)):
            task = "segmentation"
        else:
            raise DatasetLayoutError(f"'labels' has shape {lshape}; with images {arrays.shape} expected ({n},) for "
                                     f"classification or ({n}, 1, {', '.join(map(str, spatial))}) for segmentation", path)
    if arrays.has("groups"):
        groups = [g.decode() if isinstance(g, bytes) else str(g) for g in np.asarray(arrays.full("groups")).reshape(-1)]
        if len(groups) != n:
            raise DatasetLayoutError(f"'groups' has {len(groups)} entries for {n} images", path)
        if group_size is not None:
            raise DatasetLayoutError("the file has 'groups'; --group-size is only for files without them", path)
    elif group_size is not None:
        if n % group_size:
            raise DatasetLayoutError(f"--group-size {group_size} does not divide the {n} samples", path)
        groups = [f"group-{i // group_size:04d}" for i in range(n)]
    else:
        groups = [f"sample-{i:05d}" for i in range(n)]
    labels: list[Any] = [None] * n
    if task == "classification":
        raw = arrays.full("labels").reshape(n)
        labels = [_parse_class(v, path, f"labels[{i}]") for i, v in enumerate(raw.tolist())]
    elif task == "segmentation":
        labels = [i for i in range(n)]  # the mask is row i of 'labels'
    items = [Item(name=f"{path.stem}#{i}", group=groups[i], label=labels[i], index=i) for i in range(n)]
    modality = arrays.attrs.get("modality")
    return LabelledDataset(path, "arrays", items, len(spatial), task, str(modality) if modality else None, None,
                           channels, _arrays=arrays)


def grouped_by_sample(ds: LabelledDataset) -> bool:
    """True when an arrays file had neither ``groups`` nor ``--group-size`` (each sample its own group)."""
    return ds.layout == "arrays" and all(it.group.startswith("sample-") for it in ds.items)


# --------------------------------------------------------------------------------- intensities
#: how :func:`intensity_mode` scales images to [0, 1]
INTENSITY_MODES = ("window", "percentile", "as-is")


def intensity_mode(ds: LabelledDataset, sample: np.ndarray, header_modality: str | None = None) -> str:
    """How this dataset's images become [0, 1]: ``window`` (CT in HU), ``percentile`` (MRI and other
    modalities, per volume and channel) or ``as-is`` (arrays already in [0, 1]).

    The declared modality (dataset.json, the arrays file's ``modality`` attribute, the image header)
    wins; without one, values below -500 mean CT in HU and values within [0, 1] mean "already
    normalised".
    """
    lo, hi = float(np.min(sample)), float(np.max(sample))
    if lo >= 0.0 and hi <= 1.0:
        return "as-is"
    modality = (ds.modality or header_modality or "").upper()
    if modality == "CT" or (not modality and lo < -500.0):
        return "window"
    return "percentile"


def percentile_normalise(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Per-channel scaling of (C, *spatial) by the ``low``/``high`` percentiles of its non-zero voxels
    (zero is the background of skull-stripped MRI), clipped to [0, 1]."""
    out = np.empty(image.shape, dtype=np.float32)
    for c in range(image.shape[0]):
        a = np.asarray(image[c], dtype=np.float32)
        inside = a[a != 0]
        if inside.size == 0:
            out[c] = 0.0
            continue
        lo, hi = np.percentile(inside, [low, high])
        out[c] = np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return out


def to_unit_range(image: np.ndarray, mode: str, window: tuple[float, float] = (-1000.0, 1000.0)) -> np.ndarray:
    """(C, *spatial) stored intensities -> float32 [0, 1] by :func:`intensity_mode`'s ``mode``."""
    from genesis.data.preprocess import window_hu

    if mode == "window":
        return window_hu(image, window).astype(np.float32)
    if mode == "percentile":
        return percentile_normalise(image)
    if mode == "as-is":
        return np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    raise ValueError(f"unknown intensity mode {mode!r}; one of {INTENSITY_MODES}")


def describe_intensity(mode: str, window: tuple[float, float]) -> str:
    """One line for banners and metrics.json."""
    return {"window": f"CT window [{window[0]:g}, {window[1]:g}] HU -> [0, 1]",
            "percentile": "per-volume 0.5/99.5 percentile normalisation (not CT)",
            "as-is": "images already in [0, 1]: used as they are"}[mode]


# ------------------------------------------------------------------------------ pretraining
class LayoutVolumeSource:
    """The images of a dataset layout as a pretraining volume source (labels ignored).

    Every channel of every item (all splits) is one volume, (z, y, x) float32 in [0, 1]; a 2D
    image is a volume of depth 1 (``spatial_dims == 2``). CT is windowed with the preprocessing
    window (and resampled to its spacing when one is set); other modalities use
    :func:`percentile_normalise`; arrays already in [0, 1] are used as they are.
    """

    is_synthetic = False

    def __init__(self, path: str | Path, preprocess_cfg: Any = None, group_size: int | None = None) -> None:
        from genesis.data.preprocess import PreprocessConfig

        self.dataset = read_dataset(path, group_size=group_size, require_labels=False)
        self.preprocess_cfg = preprocess_cfg or PreprocessConfig()
        self.spatial_dims = self.dataset.spatial_dims
        channels = self.dataset.in_channels
        self._index = [(item, c) for item in self.dataset.items for c in range(channels)]
        self._mode: str | None = None
        if not self._index:
            raise DatasetLayoutError("the dataset lists no images", self.dataset.path)

    def __len__(self) -> int:
        return len(self._index)

    def name(self, i: int) -> str:
        item, c = self._index[i]
        return f"{item.name}" + (f"[channel {c}]" if self.dataset.in_channels > 1 else "")

    def group(self, i: int) -> str:
        """The patient of volume ``i`` (every channel of an item is the same patient)."""
        return self._index[i][0].group

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Spatial shape of the first image (arrays: of every image)."""
        arrays = self.dataset._arrays
        if arrays is not None:
            return tuple(arrays.shape[2:])
        return tuple(self.load(0).shape[-self.spatial_dims:])

    def load(self, i: int) -> np.ndarray:
        from genesis.data.preprocess import resample
        from genesis.io.volume import Volume

        from genesis.io.readers import assumed_spacing

        item, c = self._index[i]
        with assumed_spacing(getattr(self.preprocess_cfg, "assume_spacing", None)):  # pretrain --assume-spacing
            image, geometry, header_modality = self.dataset.load_image(item)
        if self._mode is None:
            self._mode = intensity_mode(self.dataset, image, header_modality)
        channel = image[c]
        if self._mode == "window" and self.preprocess_cfg.spacing is not None and geometry is not None:
            channel = resample(Volume(channel, geometry.spacing, geometry.origin, geometry.direction),
                               tuple(self.preprocess_cfg.spacing), order=1).array
        out = to_unit_range(channel[None], self._mode, tuple(self.preprocess_cfg.window))[0]
        return out[None] if out.ndim == 2 else out  # 2D image -> a (1, H, W) volume


def is_layout_argument(path: str | Path) -> bool:
    """Whether a pretraining ``--data`` argument is one of these layouts (not a plain scan folder,
    ``path``-column manifest or volume file)."""
    p = Path(path).expanduser()
    return p.exists() and detect_layout(p) is not None
