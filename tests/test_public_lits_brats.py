"""LiTS (volume-N/segmentation-N) and BraTS 2018 (HGG/LGG case folders) loaders on tiny files."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from genesis.data.public.brats import (
    MODALITIES,
    enhancing_tumour,
    find_brats_cases,
    load_brats_case,
    tumour_core,
    whole_tumour,
)
from genesis.data.public.lits import find_lits_cases, load_lits_case
from genesis.errors import DatasetLayoutError, VolumeReadError


def _write(array, path, spacing=(0.8, 0.8, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))


def test_lits_cases_in_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for n, folder in ((0, "Training Batch 1"), (12, "Training Batch 2"), (3, "Test")):
        _write(rng.integers(-1000, 400, (4, 6, 5)).astype(np.int16), tmp_path / folder / f"volume-{n}.nii")
    labels = np.zeros((4, 6, 5), dtype=np.uint8)
    labels[1:3, 2:4, 1:4] = 1
    labels[2, 3, 2] = 2
    _write(labels, tmp_path / "Training Batch 1" / "segmentation-0.nii")
    _write(labels, tmp_path / "Training Batch 2" / "segmentation-12.nii.gz")
    cases = find_lits_cases(tmp_path)
    assert [c.case_id for c in cases] == [0, 3, 12]
    assert cases[1].segmentation_path is None
    volume, seg = load_lits_case(cases[2])
    assert volume.shape == (4, 6, 5) and np.allclose(volume.spacing, (2.0, 0.8, 0.8))
    assert np.array_equal(seg, labels) and seg.dtype == np.uint8
    assert load_lits_case(cases[1])[1] is None
    _write(np.zeros((3, 6, 5), np.uint8), tmp_path / "Test" / "segmentation-3.nii")
    with pytest.raises(VolumeReadError, match="differs"):
        load_lits_case(find_lits_cases(tmp_path)[1])


def test_lits_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        find_lits_cases(tmp_path / "none")
    (tmp_path / "segmentation-1.nii").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="volume-N.nii"):
        find_lits_cases(tmp_path)


def _brats_case(root, grade, case, seg=True, skip=()):
    rng = np.random.default_rng(len(case))
    for m in MODALITIES:
        if m not in skip:
            _write(rng.random((4, 5, 6)).astype(np.float32) * 100, root / grade / case / f"{case}_{m}.nii.gz", (1.0, 1.0, 1.0))
    if seg:
        labels = np.zeros((4, 5, 6), np.uint8)
        labels[1, 1:4, 1:4] = 2
        labels[1, 2, 2] = 1
        labels[2, 2, 2:4] = 4
        _write(labels, root / grade / case / f"{case}_seg.nii.gz", (1.0, 1.0, 1.0))
        return labels
    return None


def test_brats_cases_and_regions(tmp_path):
    labels = _brats_case(tmp_path, "HGG", "Brats18_2013_2_1")
    _brats_case(tmp_path, "LGG", "Brats18_TCIA10_103_1", seg=False)
    cases = find_brats_cases(tmp_path)
    assert [(c.grade, c.case_id) for c in cases] == [("HGG", "Brats18_2013_2_1"), ("LGG", "Brats18_TCIA10_103_1")]
    images, seg, spacing = load_brats_case(cases[0])
    assert images.shape == (4, 4, 5, 6) and images.dtype == np.float32 and spacing == (1.0, 1.0, 1.0)
    assert np.array_equal(seg, labels)
    assert whole_tumour(seg).sum() == 9 + 2 and tumour_core(seg).sum() == 3 and enhancing_tumour(seg).sum() == 2
    flair_only, none, _ = load_brats_case(cases[1], modalities=("flair",))
    assert flair_only.shape == (1, 4, 5, 6) and none is None
    assert find_brats_cases(tmp_path, grades=("LGG",))[0].grade == "LGG"


def test_brats_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="HGG or LGG"):
        find_brats_cases(tmp_path)
    _brats_case(tmp_path, "HGG", "Brats18_X_1", skip=("t1ce",))
    with pytest.raises(DatasetLayoutError, match="Brats18_X_1_t1ce.nii.gz"):
        find_brats_cases(tmp_path)
    (tmp_path / "HGG" / "Brats18_X_1" / "Brats18_X_1_t1ce.nii.gz").write_bytes(b"broken")
    case = find_brats_cases(tmp_path)[0]
    with pytest.raises(VolumeReadError, match="t1ce"):
        load_brats_case(case)
    bad = np.full((4, 5, 6), 3, np.uint8)
    _write(bad, tmp_path / "HGG" / "Brats18_X_1" / "Brats18_X_1_seg.nii.gz", (1.0, 1.0, 1.0))
    with pytest.raises(VolumeReadError, match="0, 1, 2, 4"):
        load_brats_case(case, modalities=("flair",))
