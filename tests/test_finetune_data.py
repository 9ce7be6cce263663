"""Crops, regions, label-fraction subsets of finetune.data."""

from __future__ import annotations

import numpy as np

from finetune.data import ClsSample, SegCase, clipped_box, extract_patch, random_crop, subset_fraction


def test_extract_patch_pads_outside_and_centres():
    a = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    p = extract_patch(a, (2, 3, 3), (3, 3, 3))
    assert np.array_equal(p, a[1:4, 2:5, 2:5])
    edge = extract_patch(a, (0, 0, 0), (4, 4, 4), fill=-1.0)
    assert edge.shape == (4, 4, 4) and edge[0, 0, 0] == -1.0 and edge[2, 2, 2] == a[0, 0, 0]


def test_clipped_box_stays_inside_without_padding():
    box = clipped_box((10, 20, 30), (0, 19, 15), (6, 8, 40))
    assert [(b.start, b.stop) for b in box] == [(0, 6), (12, 20), (0, 30)]


def test_random_crop_shape_and_lesion_inside():
    mask = np.zeros((20, 40, 40), np.uint8)
    mask[9:12, 19:22, 19:22] = 1
    case = SegCase(mask.astype(np.float32), mask, "c", centers=[(10, 20, 20)])
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, m = random_crop(case, (8, 16, 16), rng, center_prob=1.0)
        assert image.shape == m.shape == (8, 16, 16) and m.any()



def test_random_crop_puts_the_lesion_off_centre_too():
    # A lesion always near the crop centre teaches the U-Net a position shortcut that fails under
    # sliding-window inference; centred crops must place it across most of the crop.
    mask = np.zeros((40, 80, 80), np.uint8)
    mask[20, 40, 40] = 1
    case = SegCase(mask.astype(np.float32), mask, "c", centers=[(20, 40, 40)])
    rng = np.random.default_rng(1)
    offsets = []
    for _ in range(200):
        _, m = random_crop(case, (8, 16, 16), rng, center_prob=1.0)
        if m.any():
            offsets.append(np.abs(np.argwhere(m)[0] - np.array([4, 8, 8])))
    offsets = np.array(offsets)
    assert len(offsets) >= 150  # the lesion stays inside the crop nearly always
    assert (offsets[:, 1:] >= 6).any(axis=1).mean() > 0.2  # often beyond a quarter of the crop from the middle

def test_subset_fraction_is_seeded_stratified_and_groupwise():
    items = [ClsSample(np.zeros(1), int(i % 10 == 0), f"g{i // 5}", str(i)) for i in range(100)]
    sub = subset_fraction(items, 0.05, seed=3)
    assert len(sub) == 5 and {s.label for s in sub} == {0, 1}  # round(.05*90)=4 negatives, at least 1 positive
    assert [s.name for s in sub] == [s.name for s in subset_fraction(items, 0.05, seed=3)]
    assert subset_fraction(items, 1.0, seed=0) == items
    groups = subset_fraction(items, 0.25, seed=1, by_group=True)
    kept = {s.group for s in groups}
    assert all(sum(s.group == g for s in groups) == 5 for g in kept)  # whole studies only
    assert len(kept) == 4  # 10 positive groups -> 2, 10 negative groups -> 2
