"""What a target hands to the engine: cases for segmentation, cubes for classification.

Targets turn their dataset (real layout or synthetic) into a :class:`TargetData` of three splits.
Arrays are (z, y, x), intensities already windowed to [0, 1], masks uint8. Everything here is
plain numpy so targets, the engine and the tests share it without touching torch.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar, Union

import numpy as np


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
    #: what a test group is: ``patients`` (or studies: the data said which samples belong
    #: together), or ``samples`` when the data did not say (every sample its own group)
    test_unit: str = "patients"


def extract_patch(
    array: np.ndarray, center: Sequence[float], size: Sequence[int], fill: float = 0.0
) -> np.ndarray:
    """The ``size`` (z, y, x) box of ``array`` centred at ``center``, padded with ``fill`` outside.

    Padding lets cubes near the volume border keep the crop size (LUNA16 candidates can sit at
    the edge of the scan); the work is :func:`genesis.data.public.luna16.extract_cube`'s.
    """
    from genesis.data.public.luna16 import extract_cube  # here: that module imports torch (2 s)

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


def unit_group(sample: Sample) -> str:
    """The patient (group) of a sample: its ``group``, else the part of its name before the first
    ``/`` (``LIDC-IDRI-0001/nodule-2`` -> ``LIDC-IDRI-0001``: the nodules of one scan)."""
    return sample.group or sample.name.split("/")[0]


def _strata(items: list[S], by_group: bool) -> tuple[list[list], Callable[[int], Any]]:
    """The strata a label fraction draws from (lists of units: groups or item indices) and the
    unit of item ``i``. Classification is stratified by label (a group's label is its maximum)."""
    if by_group and items and isinstance(items[0], ClsSample):
        group_label: dict[str, int] = {}
        for s in items:
            group_label[s.group] = max(group_label.get(s.group, 0), int(s.label))
        names = sorted(group_label)
        strata = [[g for g in names if group_label[g] == v] for v in sorted(set(group_label.values()))]
        return strata, lambda i: items[i].group
    if by_group and items and isinstance(items[0], SegCase) and any(c.group for c in items):
        return [sorted({c.group for c in items})], lambda i: items[i].group
    if items and isinstance(items[0], ClsSample):
        labels = np.array([s.label for s in items])
        return [np.flatnonzero(labels == v).tolist() for v in np.unique(labels)], lambda i: i
    return [list(range(len(items)))], lambda i: i


def _draw_size(n: int, fraction: float) -> int:
    return max(1, int(round(fraction * n)))


def subset_fraction(items: list[S], fraction: float, seed: int, by_group: bool = False, attempt: int = 0) -> list[S]:
    """A seeded random subset with ``round(fraction * n)`` items (at least one).

    Classification samples are stratified by label, so a small fraction of a rare positive class
    still keeps at least one positive (and one negative) when there is one. With ``by_group`` the
    unit is the group (a patient or study: PE fractions count studies, as Ke et al. 2023),
    stratified by the group's label (its maximum). ``attempt`` > 0 draws again from another
    stream of the same seed (:func:`draw_subsets` uses it to avoid repeating a subset).
    """
    if fraction >= 1.0:
        return list(items)
    rng = np.random.default_rng([int(seed), 7919] if attempt == 0 else [int(seed), 7919, int(attempt)])
    strata, unit_of = _strata(items, by_group)
    keep: set = set()
    for units in strata:
        keep.update(rng.choice(units, size=_draw_size(len(units), fraction), replace=False).tolist())
    return [items[i] for i in range(len(items)) if unit_of(i) in keep]


def n_subsets(items: list, fraction: float, by_group: bool = False) -> int:
    """How many distinct subsets :func:`subset_fraction` can draw (1 at fraction 1)."""
    if fraction >= 1.0:
        return 1
    strata, _ = _strata(items, by_group)
    return math.prod(math.comb(len(u), _draw_size(len(u), fraction)) for u in strata)


@dataclass
class SubsetDraws:
    """The training subsets of the repeats of one label fraction, and how distinct they are."""

    subsets: list[list]
    n_possible: int
    n_distinct: int

    @property
    def note(self) -> str | None:
        """A warning when repeats had to reuse subsets (fewer distinct subsets than repeats)."""
        if self.n_possible >= len(self.subsets):
            return None
        return (f"only {self.n_possible} distinct labelled subset(s) exist for {len(self.subsets)} repeats: "
                f"repeats reuse subsets ({self.n_distinct} distinct drawn); they differ in initialisation, "
                "augmentation and batch order only")


def draw_subsets(items: list[S], fraction: float, seeds: Sequence[int], by_group: bool = False) -> SubsetDraws:
    """One :func:`subset_fraction` per seed, distinct while distinct subsets exist.

    Repeat ``k`` draws with its seed; a subset an earlier repeat already drew is drawn again from
    the next stream of that seed (``attempt`` 1, 2, ...) until it is new, so the draws are seeded
    and a resumed or extended experiment draws the same subsets for the same seeds. Once every
    possible subset has been drawn, later repeats take their first draw (and :attr:`SubsetDraws.note`
    says so).
    """
    possible = n_subsets(items, fraction, by_group)
    position = {id(item): i for i, item in enumerate(items)}
    seen: set[tuple[int, ...]] = set()
    subsets = []
    for seed in seeds:
        attempt = 0
        while True:
            subset = subset_fraction(items, fraction, seed, by_group, attempt)
            key = tuple(position[id(item)] for item in subset)
            # every draw has at least a 1/possible chance of being new: this ends (expected
            # possible / (possible - len(seen)) tries)
            if key not in seen or len(seen) >= possible:
                break
            attempt += 1
        seen.add(key)
        subsets.append(subset)
    return SubsetDraws(subsets, possible, len(seen))


def without_foreground(cases: list) -> list[str]:
    """Names of the segmentation cases whose mask has no foreground (classification: none)."""
    return [c.name for c in cases if isinstance(c, SegCase) and not np.any(c.mask)]


def fingerprint(samples: list) -> str:
    """SHA-256 of a split as the network sees it: every sample's name, group, image and label/mask
    (shape, dtype and bytes), in order. Two runs with the same fingerprint were scored on the same cases."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.name}\0{s.group}\0".encode())
        for array in (s.image, s.mask if isinstance(s, SegCase) else np.asarray(s.label)):
            a = np.ascontiguousarray(array)
            h.update(f"{a.shape}{a.dtype.str}".encode())
            h.update(a.tobytes())
    return h.hexdigest()


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
