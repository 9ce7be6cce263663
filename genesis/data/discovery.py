"""Which scans a run really uses: folder discovery with content checks, a summary table, ``data.csv``.

:func:`discover_scans` walks a folder (:func:`genesis.data.public.folder.walk_volumes`: symlinks
followed, DICOM found by content), reads every candidate once and sorts it into *used* or
*skipped* with a reason a person can act on. Given the volume cache, what a read found (shape,
spacing, HU range, the intensity verdict, reader warnings) is stored in its ``scans/`` index
under the scan's stamp (:func:`genesis.data.cache.volume_stamp`: size, mtime and edges hash of
every file), so a later run reads only stamps for unchanged scans and makes the same decisions;
a changed file is read again. Nothing that is not a regular file is ever opened.

* ``label map``: a handful of integer values (a mask, an annotation), or a label-map file/folder name;
* ``not HU``: no negative values (8-bit images, [0, 1] images, raw values without rescale intercept);
* ``too small``: some axis shorter than half the training crop (padding would be mostly air);
* ``unreadable``: the reader refused it (the message says why).

Reader warnings are collected per scan and summarised once (:meth:`DataReport.table`), never
printed in the middle of training. :meth:`DataReport.write_csv` writes ``OUT/data.csv`` with one
row per scan: path, shape, spacing, HU range, split and status.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from genesis.data.cache import VolumeCache, volume_stamp, volume_state
from genesis.data.public.folder import VolumeRecord, walk_volumes
from genesis.errors import DatasetLayoutError, GenesisError, GenesisWarning
from genesis.fileio import atomic_write_text

#: Skip reasons, in the order the table lists them.
LABEL_MAP, NOT_HU, TOO_SMALL, UNREADABLE = "label map", "not HU", "too small", "unreadable"
REASONS = (LABEL_MAP, NOT_HU, TOO_SMALL, UNREADABLE)
#: A volume with at most this many distinct integer values is a label map, not an image.
MAX_LABEL_VALUES = 64
CSV_COLUMNS = ("path", "status", "reason", "split", "group", "shape", "spacing", "hu_min", "hu_max", "notes")
#: Version of the facts stored per scan in the cache's ``scans/`` index (part of their key).
SCAN_FACTS_FORMAT = 1
_FACT_KEYS = ("shape", "spacing", "hu_range", "verdict", "seen_warnings")


@dataclass
class ScanInfo:
    """One candidate scan and what discovery decided about it."""

    record: VolumeRecord
    status: str = "used"  # "used" or "skipped"
    reason: str = ""  # one of REASONS (+ detail) when skipped, or a note on a kept scan
    shape: tuple[int, ...] | None = None
    spacing: tuple[float, ...] | None = None
    hu_range: tuple[float, float] | None = None
    split: str = ""
    group: str = ""  # the patient (genesis.data.groups): the split never cuts one
    warnings: list[str] = field(default_factory=list)
    #: every reader warning met, including those the status already says (not repeated in training)
    seen_warnings: list[str] = field(default_factory=list)

    @property
    def used(self) -> bool:
        return self.status == "used"

    @property
    def kind(self) -> str:
        """The skip reason without its detail (``"label map"`` of ``"label map (3 values)"``)."""
        return next((r for r in REASONS if self.reason.startswith(r)), self.reason.split(" (")[0])


@dataclass
class DataReport:
    """Every scan found, used or skipped, and the warnings met while reading them."""

    source: str
    scans: list[ScanInfo]

    @property
    def used(self) -> list[ScanInfo]:
        return [s for s in self.scans if s.used]

    @property
    def records(self) -> list[VolumeRecord]:
        return [s.record for s in self.used]

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.scans for w in s.warnings]

    def set_split(self, train: Iterable[int], val: Iterable[int], groups: Sequence[str] | None = None) -> None:
        """Mark used scans (indices into :attr:`used`) as train / val (a scan in both is train+val)
        and, with ``groups``, the patient of each."""
        used = self.used
        for scan, group in zip(used, groups or ()):
            scan.group = str(group)
        for i in train:
            used[i].split = "train"
        for i in val:
            used[i].split = "train+val" if used[i].split == "train" else "val"

    def skipped_counts(self) -> Counter:
        return Counter(s.kind for s in self.scans if not s.used)

    def table(self, csv_path: str | Path | None = None) -> str:
        """A short summary: found/used/skipped by reason, the split, warnings (once)."""
        skipped = self.skipped_counts()
        splits = Counter(s.split for s in self.used)
        lines = [f"data: {self.source}",
                 f"  {'found':>8} {'used':>6} {'skipped':>8}   " + "  ".join(f"{r}" for r in REASONS),
                 f"  {len(self.scans):>8} {len(self.used):>6} {sum(skipped.values()):>8}   "
                 + "  ".join(f"{skipped.get(r, 0):>{len(r)}}" for r in REASONS)]
        if splits:
            both = f", {splits['train+val']} in both (single scan)" if splits.get("train+val") else ""
            lines.append(f"  split: {splits.get('train', 0)} train, {splits.get('val', 0)} validation scans{both}")
        kept = Counter(s.kind for s in self.used if s.reason)
        if kept:
            lines.append("  kept although flagged: " + ", ".join(f"{n} {k}" for k, n in sorted(kept.items())))
        warned = self.warnings
        if warned:
            kinds = Counter(_warning_kind(w) for w in warned)
            lines.append(f"  {len(warned)} reader warnings: " + "; ".join(f"{n}x {k}" for k, n in kinds.most_common(4)))
        if skipped.get(LABEL_MAP) or skipped.get(NOT_HU):
            lines.append("  (keep them with --keep-labels / --keep-non-hu)")
        if csv_path is not None:
            lines.append(f"  per-scan details: {csv_path}")
        return "\n".join(lines)

    def write_csv(self, path: str | Path) -> Path:
        """``path, status, reason, split, group, shape, spacing, hu_min, hu_max, notes``, one row per scan."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for s in self.scans:
            hu = s.hu_range or (None, None)
            writer.writerow([
                s.record.name, s.status, s.reason, s.split, s.group,
                "x".join(str(n) for n in s.shape) if s.shape else "",
                "x".join(f"{v:.4g}" for v in s.spacing) if s.spacing else "",
                "" if hu[0] is None else f"{hu[0]:.6g}", "" if hu[1] is None else f"{hu[1]:.6g}",
                " | ".join(s.warnings),
            ])
        path = Path(path)
        atomic_write_text(path, buffer.getvalue())
        return path


def _warning_kind(message: str) -> str:
    """A warning without its file name, so equal problems of many scans count as one kind."""
    head, sep, tail = message.partition(": ")
    text = tail if sep and ("/" in head or "\\" in head or "." in head) else message
    return text.split(";")[0][:80]


def classify_intensities(array: np.ndarray) -> str:
    """``""`` for a CT image in HU, else ``"label map (...)"`` or ``"not HU (...)"``.

    The same rule as the reader's warning (:func:`genesis.io.readers.check_volume`): CT in HU
    has air below zero and thousands of values; a label map has a few integer values.
    """
    lo, hi = float(array.min()), float(array.max())
    sample = array[::4, ::4, ::4] if array.ndim == 3 and min(array.shape) >= 8 else array
    values = np.unique(sample)
    if values.size <= MAX_LABEL_VALUES and np.all(values == np.round(values)):
        return f"{LABEL_MAP} ({values.size} integer values)"
    if lo >= 0.0:
        if hi <= 1.0:
            return f"{NOT_HU} (values in [0, 1])"
        if hi <= 255.0:
            return f"{NOT_HU} (values in 0..255, an 8-bit image)"
        return f"{NOT_HU} (no negative values, range {lo:g}..{hi:g})"
    return ""


def _estimated_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float] | None) -> tuple[int, ...]:
    if not target:
        return tuple(int(n) for n in shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def _assume_spacing_now() -> float | None:
    """The ``--assume-spacing`` in effect (:func:`genesis.io.readers.assumed_spacing`): it changes
    what a read finds for scans without a valid spacing, so it is part of the facts' key."""
    from genesis.io.readers import current_assumed_spacing

    return current_assumed_spacing()


def read_scan_facts(record: VolumeRecord) -> dict:
    """Read a scan once: shape, spacing, HU range, intensity verdict (:func:`classify_intensities`)
    and the reader's warnings, as JSON-able values.

    Raises:
        GenesisError / OSError / ValueError / RuntimeError: the reader refused it.
    """
    from genesis.io.readers import load_volume

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GenesisWarning)
        volume = load_volume(record.path, series_uid=record.series_uid)
    array = volume.array
    return {"shape": [int(n) for n in array.shape], "spacing": [float(v) for v in volume.spacing],
            "hu_range": [float(array.min()), float(array.max())], "verdict": classify_intensities(array),
            "seen_warnings": [str(w.message) for w in caught if issubclass(w.category, GenesisWarning)]}


def scan_facts(record: VolumeRecord, cache: VolumeCache | None = None) -> dict:
    """:func:`read_scan_facts`, from the cache's ``scans/`` index when the scan is unchanged.

    The files are stamped before anything is opened (a FIFO or device is refused there), and
    facts are stored only when no file changed while it was read.

    Raises:
        GenesisError / OSError / ValueError / RuntimeError: the scan cannot be read.
    """
    before = volume_state(record.path)  # stat only: refuses what is not a regular file
    if cache is None:
        return read_scan_facts(record)
    from genesis import __version__

    parts = {"v": SCAN_FACTS_FORMAT, "genesis": __version__, "scan": volume_stamp(record.path),
             "series_uid": record.series_uid, "assume_spacing": _assume_spacing_now()}
    known = cache.index_get("scans", parts)
    if isinstance(known, dict) and all(k in known for k in _FACT_KEYS):
        return known
    facts = read_scan_facts(record)
    if volume_state(record.path) == before:
        cache.index_put("scans", parts, facts)
    return facts


def inspect_scan(
    record: VolumeRecord,
    *,
    crop: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    keep_labels: bool = False,
    keep_non_hu: bool = False,
    keep_small: bool = False,
    cache: VolumeCache | None = None,
) -> ScanInfo:
    """Read one scan (or its stored facts) and decide whether a run should use it (see the
    module docstring).

    Args:
        record: the scan.
        crop: the training crop (z, y, x); a scan with an axis under half of it is ``too small``.
        spacing: the resampling spacing of the run (None: native), to judge the size after it.
        keep_labels / keep_non_hu / keep_small: use such scans anyway (the reason stays as a note).
        cache: the volume cache whose ``scans/`` index keeps the facts of unchanged scans.
    """
    info = ScanInfo(record)
    try:
        facts = scan_facts(record, cache)
    except (GenesisError, OSError, ValueError, RuntimeError) as exc:
        info.status, info.reason = "skipped", f"{UNREADABLE}: {str(exc).splitlines()[0]}"
        return info
    # the reader's HU warning repeats what the status says; keep the others as notes
    info.seen_warnings = list(facts["seen_warnings"])
    info.warnings = [m for m in info.seen_warnings if "Hounsfield" not in m]
    info.shape, info.spacing = tuple(int(n) for n in facts["shape"]), tuple(float(s) for s in facts["spacing"])
    info.hu_range = (float(facts["hu_range"][0]), float(facts["hu_range"][1]))
    verdict = str(facts["verdict"])
    keep = {LABEL_MAP: keep_labels, NOT_HU: keep_non_hu}
    if not verdict and crop is not None:
        est = _estimated_shape(info.shape, info.spacing, spacing)
        size = f"{'x'.join(map(str, est))} voxels for a {'x'.join(map(str, crop))} crop"
        if any(n * 2 < c for n, c in zip(est, crop)):
            verdict = f"{TOO_SMALL} ({size})"
            keep[TOO_SMALL] = keep_small
        elif any(n < c for n, c in zip(est, crop)):
            info.reason = f"padded ({size})"  # used; the sampler pads it with air
    if verdict:
        info.reason = verdict
        if not keep.get(info.kind, False):
            info.status = "skipped"
    return info


def discover_scans(
    directory: str | Path,
    *,
    crop: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    keep_labels: bool = False,
    keep_non_hu: bool = False,
    cache: VolumeCache | None = None,
) -> DataReport:
    """Find and check every scan under ``directory``: the one folder discovery of genesis.

    Label maps recognised by name (``labelsTr/``, ``*_seg.nii.gz``) are listed as skipped without
    being read, unless ``keep_labels``. With ``cache``, unchanged scans are not read again (see
    the module docstring).

    Raises:
        DatasetLayoutError: no candidate at all, or none usable (the message counts the reasons).
    """
    entries = walk_volumes(directory)
    scans: list[ScanInfo] = []
    for entry in entries:
        if entry.skipped and not keep_labels:
            scans.append(ScanInfo(entry.record, "skipped", entry.skipped))
            continue
        info = inspect_scan(entry.record, crop=crop, spacing=spacing, keep_labels=keep_labels,
                            keep_non_hu=keep_non_hu, cache=cache)
        if entry.skipped and info.used and not info.reason:
            info.reason = entry.skipped  # kept with --keep-labels: say it was named like one
        scans.append(info)
    report = DataReport(str(directory), scans)
    if not scans:
        raise DatasetLayoutError(
            "no CT volumes found (looked for .nii/.nii.gz/.mhd/.mha/.nrrd/.nhdr files and DICOM files)", directory)
    if not report.used:
        counts = ", ".join(f"{n} {k}" for k, n in report.skipped_counts().items())
        raise DatasetLayoutError(
            f"none of the {len(scans)} scans found is usable ({counts}; first: {scans[0].record.name}: "
            f"{scans[0].reason}); keep label maps / non-HU images with --keep-labels / --keep-non-hu", directory)
    return report


def inspect_records(records: Sequence[VolumeRecord], source: str, **kwargs) -> DataReport:
    """A :class:`DataReport` of explicitly listed scans (a manifest, one file): every scan is kept,
    flagged scans carry their reason as a note (the list is the user's choice). ``cache=`` (a
    :class:`~genesis.data.cache.VolumeCache`) reads unchanged scans' facts from its index."""
    keep = dict(keep_labels=True, keep_non_hu=True, keep_small=True)
    keep.update(kwargs)
    return DataReport(source, [inspect_scan(r, **keep) for r in records])


def report_without_reading(records: Sequence[VolumeRecord], source: str) -> DataReport:
    """A report listing ``records`` as used, with no content read (e.g. synthetic volumes)."""
    return DataReport(source, [replace(ScanInfo(r)) for r in records])
