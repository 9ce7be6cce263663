"""What a target hands to the engine: cases for segmentation, cubes for classification.

Targets turn their dataset (real layout or synthetic) into a :class:`TargetData` of three splits.
Arrays are (z, y, x), intensities already windowed to [0, 1], masks uint8. Everything here is
plain numpy so targets, the engine and the tests share it without touching torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Sequence, TypeVar, Union

import numpy as np

from genesis.data.public.luna16 import extract_cube


@dataclass
class SegCase:
    """One segmentation case: a whole volume or a region around a lesion.

    Attributes:
        image: float32 (z, y, x) in [0, 1].
        mask: uint8 (z, y, x), 1 = foreground.
        name: identifies the case in outputs (e.g. ``"LIDC-IDRI-0001/nodule-2"``).
        centers: voxel centres (z, y, x) of objects of interest; training crops are drawn around
            them (with jitter) part of the time, the rest anywhere in the case.
        group: the patient it comes from ("" when every case is its own patient); label fractions
            of targets with ``fraction_by_group`` draw whole groups.

    Generic targets (``segmentation``) may hold 2D cases (y, x), several channels (C, *spatial)
    and class indices 0..K-1 in ``mask``.
    """

    image: np.ndarray
    mask: np.ndarray
    name: str
    centers: list[tuple[int, ...]] = field(default_factory=list)
    group: str = ""


@dataclass
class ClsSample:
    """One classification sample: a cube (or a window of slices) with a binary label.

    Attributes:
        image: float32 (D, H, W) in [0, 1], the training crop size.
        label: 1 positive (true nodule / true embolus / PE window), 0 negative.
        group: the study or patient it comes from; splits never cut a group, and targets with
            study-level evaluation (``pe``) aggregate predictions per group.
        name: identifies the sample in outputs.
    """

    image: np.ndarray
    label: int
    group: str
    name: str


Sample = Union[SegCase, ClsSample]
S = TypeVar("S", SegCase, ClsSample)


@dataclass
class TargetData:
    """Train / validation / test splits of one target, and where they came from."""

    train: list
    val: list
    test: list
    synthetic: bool
    source: str
    #: lines the engine prints under the banner (e.g. how intensities were normalised)
    notes: tuple[str, ...] = ()


def extract_patch(
    array: np.ndarray, center: Sequence[float], size: Sequence[int], fill: float = 0.0
) -> np.ndarray:
    """The ``size`` (z, y, x) box of ``array`` centred at ``center``, padded with ``fill`` outside.

    Padding lets cubes near the volume border keep the crop size (LUNA16 candidates can sit at
    the edge of the scan); the work is :func:`genesis.data.public.luna16.extract_cube`'s.
    """
    return extract_cube(array, center, size, pad_value=fill)


def random_crop(
    case: SegCase,
    size: Sequence[int],
    rng: np.random.Generator,
    center_prob: float = 0.7,
    jitter: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A training crop (image, mask) of ``size`` from ``case``.

    With probability ``center_prob`` the crop is centred on one of ``case.centers`` shifted by up
    to ``jitter * size`` per axis; otherwise, or when the case has no centres, at a uniformly random
    position. Cases smaller than ``size`` are padded.

    The default ``jitter`` 0.5 puts the lesion centre anywhere in the crop. With smaller shifts
    the lesion is always near the middle and a small U-Net learns that shortcut (zero padding
    tells it where the middle is): it segments centred crops well and then marks the middle of
    every sliding window at evaluation (measured on synthetic NCS: training-case Dice 0.65 on
    centred crops, 0.13 with the nodule 12 voxels off-centre, 0.05 by sliding window).
    """
    size = tuple(int(s) for s in size)
    spatial = case.image.shape[-len(size):]
    if case.centers and rng.random() < center_prob:
        base = case.centers[int(rng.integers(len(case.centers)))]
        center = [c + rng.uniform(-jitter, jitter) * s for c, s in zip(base, size)]
    else:
        center = [rng.uniform(min(s / 2, n / 2), max(n - s / 2, n / 2)) for s, n in zip(size, spatial)]
    if case.image.ndim == len(size) + 1:  # channels first: every channel, same box
        channels = case.image.shape[0]
        image = extract_patch(case.image, [channels // 2, *center], (channels, *size))
    else:
        image = extract_patch(case.image, center, size)
    return image, extract_patch(case.mask, center, size)


def subset_fraction(items: list[S], fraction: float, seed: int, by_group: bool = False) -> list[S]:
    """A seeded random subset with ``round(fraction * n)`` items (at least one).

    Classification samples are stratified by label, so a small fraction of a rare positive class
    still keeps at least one positive (and one negative) when there is one. With ``by_group`` the
    unit is the group (a study: PE fractions count studies, as Ke et al. 2023), stratified by the
    group's label (its maximum).
    """
    if fraction >= 1.0:
        return list(items)
    rng = np.random.default_rng([int(seed), 7919])
    if by_group and items and isinstance(items[0], ClsSample):
        group_label: dict[str, int] = {}
        for s in items:
            group_label[s.group] = max(group_label.get(s.group, 0), int(s.label))
        names = sorted(group_label)
        keep: set[str] = set()
        for value in sorted(set(group_label.values())):
            members = [g for g in names if group_label[g] == value]
            k = max(1, int(round(fraction * len(members))))
            keep.update(rng.choice(members, size=k, replace=False).tolist())
        return [s for s in items if s.group in keep]
    if by_group and items and isinstance(items[0], SegCase) and any(c.group for c in items):
        groups = sorted({c.group for c in items})
        k = max(1, int(round(fraction * len(groups))))
        keep_groups = set(rng.choice(groups, size=k, replace=False).tolist())
        return [c for c in items if c.group in keep_groups]
    if items and isinstance(items[0], ClsSample):
        chosen: list[int] = []
        labels = np.array([s.label for s in items])
        for value in np.unique(labels):
            idx = np.flatnonzero(labels == value)
            k = max(1, int(round(fraction * idx.size)))
            chosen.extend(rng.choice(idx, size=k, replace=False).tolist())
        return [items[i] for i in sorted(chosen)]
    k = max(1, int(round(fraction * len(items))))
    return [items[i] for i in sorted(rng.choice(len(items), size=k, replace=False).tolist())]


def split_of(key: str, fractions: tuple[float, float] = (0.7, 0.15)) -> str:
    """Deterministic train/val/test assignment of a patient/study id (hash-based, order-free).

    Used for real datasets without an official split, so the split never depends on the order
    files are listed in and a patient never lands in two splits.
    """
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < fractions[0]:
        return "train"
    if h < fractions[0] + fractions[1]:
        return "val"
    return "test"


def assign_splits(keys: Sequence[str], fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, str]:
    """Train/val/test for each patient/study key: :func:`split_of`, then no split left empty.

    With three or more keys, an empty split takes a key from the largest split (the key with the
    highest hash there), so small datasets still get a validation and a test case.
    """
    keys = sorted(set(keys))
    out = {k: split_of(k, fractions) for k in keys}
    if len(keys) >= 3:
        for split in ("test", "val", "train"):
            if split not in out.values():
                members: dict[str, list[str]] = {}
                for k, v in out.items():
                    members.setdefault(v, []).append(k)
                donor = max(members.values(), key=len)
                key = max(donor, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
                out[key] = split
    return out


def clipped_box(shape: Sequence[int], center: Sequence[float], size: Sequence[int]) -> tuple[slice, slice, slice]:
    """The ``size`` box around ``center`` shifted/clipped to lie inside ``shape`` (no padding).

    Used for evaluation regions: the model sees only real voxels and sliding-window inference
    covers the region whatever its size.
    """
    out = []
    for c, s, n in zip(center, size, shape):
        s = min(int(s), int(n))
        lo = int(round(float(c))) - s // 2
        lo = min(max(lo, 0), int(n) - s)
        out.append(slice(lo, lo + s))
    return tuple(out)  # type: ignore[return-value]
