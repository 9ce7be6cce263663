"""Generic targets on a researcher's own labelled data: ``segmentation`` and ``classification``.

``--data DATASET`` is any layout of :mod:`genesis.data.layouts` (MSD / nnU-Net raw folder, MONAI
datalist, CSV, ``.h5``/``.npz`` arrays), 2D or 3D, detected automatically; ``--test-data`` adds a
separate test set in any layout. The test split is, in order: ``--test-data``; the dataset's own
test entries (``imagesTs`` + ``labelsTs``, datalist ``test``, CSV ``split=test``); else 15% of
the patients drawn with a generator seeded by ``--seed``. Validation: the dataset's own
(datalist ``validation``, CSV ``split=val``), else 15% of the remaining patients. Splits and label
fractions always draw whole groups (patients): ``group`` columns/keys, an arrays file's
``groups``, or ``--group-size N`` (N consecutive samples are one patient). The test set's
patients come from the test set itself: its own groups or case names, or the same
``--group-size`` when it is an arrays file without ``groups``; every confidence interval and
paired test then resamples those patients.

Classes: dataset.json ``labels`` or the distinct label values, mapped in sorted order to
0..K-1. Two classes are a binary target (one sigmoid output: Dice/IoU, or AUC and accuracy); more
are K-class (softmax: Dice and IoU per class and their mean; one-vs-rest macro AUC and accuracy).

Intensities (:func:`genesis.data.layouts.intensity_mode`): CT in HU through ``--window``
(default [-1000, 1000]); MRI and other modalities per-volume percentile normalisation; arrays
already in [0, 1] as they are. Segmentation trains on crops (whole volumes: around the
foreground part of the time) and evaluates whole images by sliding window (patches the size of
the crop are one window); classification resizes each image to the crop (MONAI ``Resize``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from finetune.data import ClsSample, TargetData
from finetune.targets.base import Target, register_target
from genesis.errors import ConfigError, DatasetLayoutError

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig
    from genesis.data.layouts import Item, LabelledDataset

DEFAULT_CROP = {3: (32, 64, 64), 2: (128, 128)}
#: share of the patients drawn for validation / test when the dataset does not say
HELD_OUT = 0.15
CT_WINDOW = (-1000.0, 1000.0)


def _round8(n: int) -> int:
    return max(8, -(-int(n) // 8) * 8)


class GenericTarget(Target):
    """Shared loading of :class:`SegmentationTarget` and :class:`ClassificationTarget`."""

    window = CT_WINDOW
    quick_crop = None  # fitted to the images
    fraction_by_group = True
    real_layout = ("MSD/nnU-Net raw folder (dataset.json, imagesTr/, labelsTr/), MONAI datalist .json, "
                   ".csv (image,label[,group][,split]) or .h5/.npz arrays (images, labels[, groups])")

    def __init__(self) -> None:
        self._crop: tuple[int, ...] | None = None
        self._modes: dict[str, str] = {}
        self.class_names: list[str] = []

    def crop(self, cfg: "FinetuneConfig") -> tuple[int, ...]:  # type: ignore[override]
        if cfg.crop is not None:
            return tuple(cfg.crop)
        if self._crop is not None:
            return self._crop
        return DEFAULT_CROP[cfg.dims or 3]

    def load(self, cfg: "FinetuneConfig") -> TargetData:
        from genesis.data.layouts import grouped_by_sample, read_dataset

        if cfg.data is None:
            raise ConfigError(f"--target {self.name} needs --data DATASET (an MSD/nnU-Net raw folder, a MONAI "
                              "datalist .json, a .csv or an .h5/.npz arrays file); there is no synthetic default")
        ds = read_dataset(cfg.data, group_size=cfg.group_size)
        self._check_dataset(ds, cfg)
        test_ds = None
        if cfg.test_data is not None:
            test_ds = read_dataset(cfg.test_data, group_size=cfg.group_size, group_size_where_ungrouped=True)
            self._check_dataset(test_ds, cfg)
            if test_ds.in_channels != ds.in_channels:
                raise DatasetLayoutError(f"test data have {test_ds.in_channels} channel(s), --data has {ds.in_channels}",
                                         test_ds.path)
        self.spatial_dims, self.in_channels = ds.spatial_dims, ds.in_channels
        _check_weights_dims(cfg.weights, ds)
        splits = assign_group_splits(ds, has_test=test_ds is not None, seed=cfg.seed)
        values = ds.class_values()
        if test_ds is not None and self.task == "classification":
            values = sorted(set(values) | set(test_ds.class_values()))
        if len(values) < 2:
            raise DatasetLayoutError(f"labels hold a single class {values}: nothing to learn (empty label set)", ds.path)
        names = ds.label_names or {}
        self.class_names = [_safe(names.get(v, str(v))) for v in values]
        self.out_channels = 1 if len(values) == 2 else len(values)
        self._configure_metrics()
        lookup = {v: k for k, v in enumerate(values)}
        notes: list[str] = []
        data: dict[str, list] = {"train": [], "val": [], "test": []}
        modes: set[str] = set()
        for split, items in splits.items():
            data[split] = self._samples(ds, items, lookup, cfg, modes)
        if test_ds is not None:
            data["test"] = self._samples(test_ds, test_ds.labelled(), lookup, cfg, modes)
        self._check_fractions(cfg, splits["train"], ds)
        from genesis.data.layouts import describe_intensity

        window = self.hu_window(cfg)
        notes.append("intensities: " + "; ".join(describe_intensity(m, window) for m in sorted(modes)))
        for dataset in (ds, test_ds):
            if dataset is not None and grouped_by_sample(dataset):
                notes.append(f"note: {dataset.path.name} has no 'groups' and no --group-size was given: every sample "
                             "is its own patient (confidence intervals then resample samples); if consecutive samples "
                             "come from one patient, pass --group-size N")
        groups = {s: len({it.group for it in items}) for s, items in splits.items()}
        if test_ds is not None:
            groups["test"] = len({it.group for it in test_ds.labelled()})
        source = (f"{ds.layout} dataset at {ds.path} ({ds.spatial_dims}D, {ds.in_channels} channel(s), classes "
                  f"{dict(zip(values, self.class_names))}; patients train/val/test {groups['train']}/{groups['val']}/"
                  f"{groups['test']}{' (separate test set)' if test_ds is not None else ''})"
                  + (f"; test set {test_ds.layout} at {test_ds.path}" if test_ds is not None else ""))
        test_unit = "samples" if grouped_by_sample(test_ds if test_ds is not None else ds) else "patients"
        return TargetData(**data, synthetic=False, source=source, notes=tuple(notes), test_unit=test_unit)

    # ------------------------------------------------------------------------------ checks
    def _check_dataset(self, ds: "LabelledDataset", cfg: "FinetuneConfig") -> None:
        if ds.task is not None and ds.task != self.task:
            other = "classification" if self.task == "segmentation" else "segmentation"
            raise DatasetLayoutError(f"this dataset has {ds.task} labels; use --target {other}", ds.path)
        if cfg.dims is not None and cfg.dims != ds.spatial_dims:
            raise ConfigError(f"--dims {cfg.dims}, but the images of {ds.path} are {ds.spatial_dims}D; "
                              f"use --dims {ds.spatial_dims}")
        if cfg.crop is not None and len(cfg.crop) != ds.spatial_dims:
            raise ConfigError(f"--crop {' '.join(map(str, cfg.crop))} has {len(cfg.crop)} sides, the images of "
                              f"{ds.path} are {ds.spatial_dims}D")

    def _check_fractions(self, cfg: "FinetuneConfig", train: list["Item"], ds: "LabelledDataset") -> None:
        n = len({it.group for it in train})
        for f in cfg.label_fractions:
            if f < 1.0 and f * n < 0.5:
                raise DatasetLayoutError(
                    f"label fraction {f:g} of {n} training patients (groups) is {f * n:.2f} patients: less than one; "
                    "use a larger fraction, or more (smaller) groups if each group holds one sample", ds.path)

    def _configure_metrics(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _samples(self, ds: "LabelledDataset", items: list["Item"], lookup: dict[int, int], cfg: "FinetuneConfig",
                 modes: set[str]) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def _image(self, ds: "LabelledDataset", item: "Item", cfg: "FinetuneConfig", modes: set[str]):
        """(image in [0, 1] (C, *spatial), geometry, stored shape) of one item."""
        from genesis.data.layouts import intensity_mode, to_unit_range

        raw, geometry, header_modality = ds.load_image(item)
        key = str(ds.path)
        if key not in self._modes:  # one mode per dataset, decided on its first image (arrays: all)
            self._modes[key] = intensity_mode(ds, raw if ds._arrays is None else ds._arrays.full("images"),
                                              header_modality)
        mode = self._modes[key]
        modes.add(mode)
        return to_unit_range(raw, mode, self.hu_window(cfg)), geometry, raw.shape

    def _fit_crop(self, shapes: list[tuple[int, ...]], cfg: "FinetuneConfig") -> None:
        """The crop of a run without ``--crop``: the default, shrunk to the (training) images."""
        if cfg.crop is not None or self._crop is not None or not shapes:
            return
        smallest = np.min(np.asarray(shapes), axis=0)
        default = DEFAULT_CROP[len(smallest)]
        self._crop = tuple(min(d, _round8(s)) for d, s in zip(default, smallest))


def _check_weights_dims(weights: str | None, ds: "LabelledDataset") -> None:
    """3D weights cannot fill a 2D network (2D weights can fill a 3D one: their kernels are inflated)."""
    if not weights or ds.spatial_dims != 2 or not Path(weights).is_file() or Path(weights).suffix not in (".pt", ".pth"):
        return
    from genesis.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(weights)
    kwargs = ckpt.get("model_kwargs") or {}
    name = kwargs.get("encoder") if ckpt.get("model_name") == "encoder_classifier" else ckpt.get("model_name")
    if ckpt.get("dims") == 3 or name == "unet3d":
        raise ConfigError(f"--weights hold a 3D network ({name}); the images of {ds.path} are 2D: pretrain with "
                          "genesis-pretrain --dims 2 on 2D data", weights)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(name)) or "class"


def assign_group_splits(ds: "LabelledDataset", has_test: bool, seed: int) -> dict[str, list["Item"]]:
    """Train / val / test items of a dataset, whole groups (patients) per split.

    The layout's own ``val``/``test`` entries stay there (with ``has_test`` its test entries are not
    used: a separate test set replaces them); the rest is split by group with a generator seeded by
    ``seed``: 15% of the groups for validation when the layout has none, 15% for test when there is
    no test set, the rest for training. A group never spans two splits.

    Raises:
        DatasetLayoutError: too few groups to give every split one, or a group in several splits.
    """
    labelled = ds.labelled()
    fixed = {s: [it for it in labelled if it.split == s] for s in ("val", "test")}
    free = [it for it in labelled if it.split in (None, "train")]
    groups = sorted({it.group for it in free})
    need_val, need_test = not fixed["val"], not fixed["test"] and not has_test
    needed = 1 + need_val + need_test
    if len(groups) < needed:
        raise DatasetLayoutError(
            f"{len(groups)} training patient group(s) cannot be split into {needed} sets (train"
            f"{', val' if need_val else ''}{', test' if need_test else ''}) by patient: add samples, a 'split' column / "
            "validation list, --test-data, or (arrays) smaller --group-size", ds.path)
    rng = np.random.default_rng([int(seed), 0x5B1])
    order = [groups[i] for i in rng.permutation(len(groups))]
    n_hold = max(1, int(round(HELD_OUT * len(groups))))
    cut: dict[str, set[str]] = {"val": set(), "test": set()}
    if need_test:
        cut["test"], order = set(order[:n_hold]), order[n_hold:]
    if need_val:
        cut["val"], order = set(order[:min(n_hold, len(order) - 1)]), order[min(n_hold, len(order) - 1):]
    splits = {"train": [it for it in free if it.group in set(order)],
              "val": fixed["val"] + [it for it in free if it.group in cut["val"]],
              "test": ([] if has_test else fixed["test"]) + [it for it in free if it.group in cut["test"]]}
    seen: dict[str, str] = {}
    for split, items in splits.items():
        for it in items:
            if seen.setdefault(it.group, split) != split:
                raise DatasetLayoutError(f"patient group {it.group!r} is in the {seen[it.group]} and the {split} split "
                                         "(the layout's own splits cut a group)", ds.path)
    return splits


@register_target("segmentation")
class SegmentationTarget(GenericTarget):
    name = "segmentation"
    title = "segmentation on your own data"
    task = "segmentation"
    metrics = ("dice", "iou", "iou_mean_thresholds")
    primary_metric = "dice"
    val_metric = "dice"

    def _configure_metrics(self) -> None:
        if self.out_channels == 1:
            self.metrics = ("dice", "iou", "iou_mean_thresholds")
        else:
            per_class = tuple(f"{m}_{n}" for m in ("dice", "iou") for n in self.class_names[1:])
            self.metrics = ("dice", "iou", *per_class)

    def _samples(self, ds, items, lookup, cfg, modes) -> list:
        from finetune.targets._volumes import volume_case

        loaded = []
        for k, item in enumerate(items):
            image, geometry, shape = self._image(ds, item, cfg, modes)
            mask = ds.load_mask(item, geometry, shape)
            values = np.unique(mask)
            ds.check_values(values.tolist(), item.label if isinstance(item.label, Path) else ds.path)
            unknown = sorted(set(values.tolist()) - set(lookup))
            if unknown:
                raise DatasetLayoutError(f"{item.name}: label value(s) {unknown} are not among the classes "
                                         f"{sorted(lookup)} of --data", item.label if isinstance(item.label, Path) else ds.path)
            table = np.zeros(int(values.max()) + 1, dtype=np.uint8)
            for v, idx in lookup.items():
                if v < table.size:
                    table[v] = idx
            loaded.append((item, image, table[mask]))
        self._fit_crop([img.shape[1:] for _, img, _ in loaded], cfg)
        crop = self.crop(cfg)
        cases = []
        for k, (item, image, mask) in enumerate(loaded):
            image = image[0] if image.shape[0] == 1 else image
            patch = tuple(mask.shape) == tuple(crop)  # a patch the size of the crop: no crop centres needed
            case = volume_case(image, mask, item.name, k, n_centers=0 if patch else 32)
            case.group = item.group
            cases.append(case)
        return cases


@register_target("classification")
class ClassificationTarget(GenericTarget):
    name = "classification"
    title = "classification on your own data"
    task = "classification"
    metrics = ("auc", "accuracy")
    primary_metric = "auc"
    val_metric = "auc"

    def _configure_metrics(self) -> None:
        self.metrics = ("auc", "accuracy")

    def _samples(self, ds, items, lookup, cfg, modes) -> list:
        from monai.transforms import Resize

        loaded = []
        for item in items:
            if int(item.label) not in lookup:  # type: ignore[arg-type]
                raise DatasetLayoutError(f"{item.name}: class {item.label} is not among the classes {sorted(lookup)} "
                                         "of --data", ds.path)
            image, _, _ = self._image(ds, item, cfg, modes)
            loaded.append((item, image))
        self._fit_crop([img.shape[1:] for _, img in loaded], cfg)
        crop = self.crop(cfg)
        resize = Resize(spatial_size=crop, mode="area")
        samples = []
        for item, image in loaded:
            if tuple(image.shape[1:]) != tuple(crop):
                image = np.asarray(resize(image), dtype=np.float32)
            image = image[0] if image.shape[0] == 1 else image
            samples.append(ClsSample(np.ascontiguousarray(image, dtype=np.float32), lookup[int(item.label)],  # type: ignore[arg-type]
                                     item.group, item.name))
        return samples

