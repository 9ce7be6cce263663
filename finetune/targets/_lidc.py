"""LIDC-IDRI series -> (volume, nodule mask, nodule centres) for NCS, via genesis.data.public.lidc."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from finetune.data import assign_splits


def lidc_nodule_volumes(root: Path) -> Iterator[tuple[str, str, object, np.ndarray, list[tuple[float, float, float]]]]:
    """Yield ``(patient_id, split, volume, mask, centres)`` for every LIDC series with nodules.

    The mask of a nodule is the voxels marked by at least two readers when two or more readers
    marked it (the usual 50 % agreement), else the single reader's filled contours; nodules < 3 mm
    (single points in the XML) have no contour and are skipped. Patients are split by a hash of
    the patient id (70/15/15), so one patient never lands in two splits.
    """
    from genesis.data.public.lidc import consensus, find_lidc_series, group_annotations, load_lidc_annotations

    all_series = find_lidc_series(root)
    assignment = assign_splits([s.patient_id for s in all_series])
    for series in all_series:
        volume, annotations = load_lidc_annotations(series)
        nodules = []
        for group in group_annotations(annotations, volume.spacing):
            c = consensus(group, volume.spacing, k=2 if len(group) >= 2 else 1)
            if c is not None:
                nodules.append(c)
        if not nodules:
            continue
        mask = np.zeros(volume.shape, dtype=np.uint8)
        for c in nodules:
            mask[c.mask] = 1
        yield series.patient_id, assignment[series.patient_id], volume, mask, [c.center_zyx for c in nodules]
