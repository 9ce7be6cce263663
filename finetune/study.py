"""Study-level inputs of Ke et al. (2023): resized slices, random (training) or centre (evaluation) crops.

Ke et al. resize every 512 x 512 slice to 256 x 256 and train on random 224 x 224 crops (rotated up
to 20 degrees); evaluation takes the centre crop. Here the stored windows are resized to
``stored_side(crop side)`` = crop side x 256 / 224 (256 for the published 224 crop; smaller crops,
e.g. ``--preset quick``, keep the ratio) and :func:`fit_in_plane` cuts the crop the network sees.
Windows whose in-plane size already equals the crop (the cube targets) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESIZE_RATIO = 256 / 224  # Ke et al.: resize to 256, crop 224


def stored_side(crop_side: int) -> int:
    """In-plane side the windows are stored at for a training crop side (224 -> 256)."""
    return int(round(crop_side * RESIZE_RATIO))


def fit_in_plane(image: np.ndarray, hw: Sequence[int], rng: np.random.Generator | None = None) -> np.ndarray:
    """The (D, h, w) crop of a (D, H, W) window: random with ``rng`` (training), centred without.

    Windows smaller than ``hw`` are zero-padded (air after windowing) symmetrically.
    """
    out = image
    for axis, size in ((1, int(hw[0])), (2, int(hw[1]))):
        have = out.shape[axis]
        if have < size:
            before = (size - have) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, size - have - before)
            out = np.pad(out, pad)
        elif have > size:
            start = int(rng.integers(0, have - size + 1)) if rng is not None else (have - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
    return out
