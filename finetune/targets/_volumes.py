"""Whole-volume segmentation cases (LCS, BMS): the case is the volume, crops are drawn inside."""

from __future__ import annotations

import numpy as np

from finetune.data import SegCase
from genesis.rng import numpy_generator


def volume_case(image01: np.ndarray, mask: np.ndarray, name: str, seed: int, n_centers: int = 32) -> SegCase:
    """A whole-volume case whose crop centres are ``n_centers`` random foreground voxels.

    Training crops land on the organ/lesion part of the time (see :func:`finetune.data.random_crop`)
    and anywhere otherwise; evaluation runs sliding-window inference over the whole volume.
    """
    fg = np.argwhere(mask > 0)
    centers: list[tuple[int, int, int]] = []
    if len(fg):
        rng = numpy_generator(seed, len(fg))
        pick = rng.choice(len(fg), size=min(n_centers, len(fg)), replace=False)
        centers = [tuple(int(v) for v in fg[p]) for p in pick]
    return SegCase(np.ascontiguousarray(image01, dtype=np.float32), np.ascontiguousarray(mask, dtype=np.uint8), name, centers)
