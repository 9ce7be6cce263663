"""A folder search for scans skips label maps (masks/ folders, *_seg files) but a manifest can list anything."""

from __future__ import annotations

import numpy as np

from genesis.data.public.folder import find_volumes, is_label_file
from genesis.data.public.manifest import read_manifest
from genesis.io import Volume, save_volume


def _write(path, value=0.0):
    rng = np.random.default_rng(0)
    save_volume(Volume(array=(rng.normal(-500, 200, (4, 8, 8)) + value).astype(np.float32), spacing=(1.0, 1.0, 1.0)), path)


def test_label_maps_are_skipped_in_folder_search(tmp_path):
    _write(tmp_path / "images" / "case1.nii.gz")
    _write(tmp_path / "masks" / "case1" / "lungs.nii.gz")
    _write(tmp_path / "labelsTr" / "case1.nii.gz")
    _write(tmp_path / "lits" / "volume-0.nii")
    _write(tmp_path / "lits" / "segmentation-0.nii")
    _write(tmp_path / "brats" / "x_flair.nii.gz")
    _write(tmp_path / "brats" / "x_seg.nii.gz")
    found = sorted(r.path.relative_to(tmp_path).as_posix() for r in find_volumes(tmp_path))
    assert found == ["brats/x_flair.nii.gz", "images/case1.nii.gz", "lits/volume-0.nii"]
    # a manifest is the explicit override
    (tmp_path / "m.csv").write_text("path\nmasks/case1/lungs.nii.gz\n")
    assert [r.path.name for r in read_manifest(tmp_path / "m.csv")] == ["lungs.nii.gz"]


def test_label_file_names():
    assert is_label_file("case_seg.nii.gz") and is_label_file("segmentation-12.nii")
    assert is_label_file("lung_mask.nrrd") and is_label_file("labels.mha")
    assert not any(is_label_file(n) for n in ("ct.nii.gz", "sequence.nii", "segment_brain.nii", "volume-3.nii"))


def test_loading_a_label_map_warns(tmp_path):
    import pytest

    from genesis.errors import GenesisWarning
    from genesis.io import load_volume

    labels = np.zeros((8, 16, 16), dtype=np.float32)
    labels[2:6, 4:12, 4:12] = 1
    labels[3:5, 6:10, 6:10] = 2
    save_volume(Volume(array=labels, spacing=(1.0, 1.0, 1.0)), tmp_path / "lungs.nrrd")
    with pytest.warns(GenesisWarning, match="3 distinct integer values: a label map"):
        load_volume(tmp_path / "lungs.nrrd")
