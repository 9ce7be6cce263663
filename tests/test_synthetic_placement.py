"""Nodules stay whole inside a field of view smaller than the chest (segmentation targets crop around them)."""

from __future__ import annotations

import numpy as np

from genesis.data.synthetic import generate_chest_ct


def test_nodules_are_whole_in_a_small_field_of_view():
    shape, whole, total = np.array((48, 112, 112)), 0, 0
    for seed in range(4):
        ct = generate_chest_ct(seed, shape=tuple(shape), spacing=(1.0, 1.0, 1.0), n_candidates=0)
        for f in ct.findings:
            if f.kind != "nodule":
                continue
            total += 1
            r = f.diameter_mm / 2.0
            c = np.asarray(f.center_zyx)
            whole += bool(np.all(c - r >= 0) and np.all(c + r <= shape - 1))
    assert total >= 4 and whole / total >= 0.9
