"""Dataset layouts (genesis.data.layouts): detection, parsing, and the errors that name the file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _owndata import classification_csv, ct_case, datalist, msd_folder, patches_h5, write_nifti  # noqa: E402

from genesis.data.layouts import (LayoutVolumeSource, detect_layout, intensity_mode, read_dataset,  # noqa: E402
                                  to_unit_range)
from genesis.data.sources import volume_source_from_arg  # noqa: E402
from genesis.errors import DatasetLayoutError, InputFileError  # noqa: E402


def test_msd_v2_folder_with_channels_labels_and_test_split(tmp_path):
    root = msd_folder(tmp_path / "Dataset002", n=3, channels=2)
    ds = read_dataset(root)
    assert (ds.layout, ds.task, ds.spatial_dims, ds.in_channels) == ("msd", "segmentation", 3, 2)
    assert ds.label_names == {0: "background", 1: "bright", 2: "dark"} and ds.modality == "CT"
    assert [it.split for it in ds.items] == [None, None, None, "test"]
    assert [p.name for p in ds.items[0].images] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    image, geometry, _ = ds.load_image(ds.items[0])
    assert image.shape == (2, 16, 16, 16) and np.array_equal(image[1], image[0] + 1)
    mask = ds.load_mask(ds.items[0], geometry, image.shape)
    assert set(np.unique(mask)) == {0, 1, 2}
    assert read_dataset(root / "dataset.json").layout == "msd"  # the JSON itself names the folder


def test_msd_v1_labels_and_modality(tmp_path):
    ds = read_dataset(msd_folder(tmp_path / "Task01", n=2, v2=False, with_test=False))
    assert ds.label_names == {0: "background", 1: "bright", 2: "dark"} and ds.class_values() == [0, 1, 2]


def test_datalist_csv_and_arrays_are_detected(tmp_path):
    dl = read_dataset(datalist(tmp_path / "dl"))
    assert (dl.layout, dl.task) == ("datalist", "segmentation")
    assert [it.split for it in dl.items] == [None] * 4 + ["val", "test"]
    csv = read_dataset(classification_csv(tmp_path / "csv"))
    assert (csv.layout, csv.task) == ("csv", "classification")
    assert [it.group for it in csv.items[:4]] == ["p0", "p0", "p1", "p1"] and csv.class_values() == [0, 1]
    h5 = read_dataset(patches_h5(tmp_path / "p.h5", n=8), group_size=4)
    assert (h5.layout, h5.task, h5.spatial_dims) == ("arrays", "segmentation", 2)
    assert [it.group for it in h5.items] == ["group-0000"] * 4 + ["group-0001"] * 4
    np.savez(tmp_path / "c.npz", images=np.zeros((4, 1, 8, 8, 8), np.float32), labels=np.array([0, 1, 0, 1]),
             groups=np.array(["a", "a", "b", "b"]))
    npz = read_dataset(tmp_path / "c.npz")
    assert (npz.task, npz.spatial_dims, [it.group for it in npz.items]) == ("classification", 3, ["a", "a", "b", "b"])
    assert detect_layout(tmp_path) is None  # a plain folder stays a folder of scans


def test_intensity_modes():
    hu = np.array([[-1000.0, 0.0, 1000.0]])
    assert intensity_mode(_Fake(None), hu) == "window"
    assert np.allclose(to_unit_range(hu, "window"), [[0.0, 0.5, 1.0]])
    unit = np.array([[0.0, 0.25, 1.0]])
    assert intensity_mode(_Fake("CT"), unit) == "as-is" and np.array_equal(to_unit_range(unit, "as-is"), unit)
    mri = np.arange(1, 201, dtype=np.float32)[None]
    assert intensity_mode(_Fake("MRI"), mri) == "percentile"
    out = to_unit_range(mri, "percentile")
    assert out.min() == 0.0 and out.max() == 1.0 and np.all(np.diff(out[0]) >= 0)


class _Fake:
    def __init__(self, modality):
        self.modality = modality


def test_missing_label_file_names_it(tmp_path):
    root = msd_folder(tmp_path / "d", n=2, with_test=False)
    (root / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match=r"labelsTr/case_001.nii.gz.*no label file"):
        read_dataset(root)


def test_missing_channel_file(tmp_path):
    root = msd_folder(tmp_path / "d", n=2, channels=2, with_test=False)
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(DatasetLayoutError, match="case_001_0001"):
        read_dataset(root)


def test_label_shape_and_geometry_mismatch(tmp_path):
    root = msd_folder(tmp_path / "d", n=2, with_test=False)
    label = root / "labelsTr" / "case_000.nii.gz"
    write_nifti(label, np.zeros((16, 16, 8)), dtype=np.uint8)
    ds = read_dataset(root)
    image, geometry, _ = ds.load_image(ds.items[0])
    with pytest.raises(DatasetLayoutError, match=r"case_000.nii.gz: label geometry does not match"):
        ds.load_mask(ds.items[0], geometry, image.shape)
    write_nifti(label, ct_case(0)[1], spacing=(1.0, 1.0, 1.0), dtype=np.uint8)
    with pytest.raises(DatasetLayoutError, match=r"spacing \(1.0, 1.0, 1.0\) vs \(2.0, 2.0, 2.0\)"):
        ds.load_mask(ds.items[0], geometry, image.shape)
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 1, 8, 8), np.float32), labels=np.zeros((2, 1, 8, 4)))
    with pytest.raises(DatasetLayoutError, match=r"a.npz: 'labels' has shape \(2, 1, 8, 4\)"):
        read_dataset(tmp_path / "a.npz")


def test_empty_label_set_and_value_outside_dataset_json(tmp_path):
    root = msd_folder(tmp_path / "d", n=3, with_test=False)
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0}}))
    with pytest.raises(DatasetLayoutError, match="empty label set"):
        read_dataset(root)
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "bright": 1}}))
    from finetune import run_finetune
    from finetune.config import FinetuneConfig

    cfg = FinetuneConfig(target="segmentation", data=str(root), out=str(tmp_path / "o"), device="cpu",
                         crop=(16, 16, 16), width=2, epochs=1, steps_per_epoch=1)
    with pytest.raises(DatasetLayoutError, match=r"labelsTr/case_00\d.nii.gz: label value\(s\) \[2\] are not in dataset.json"):
        run_finetune(cfg, log=lambda s: None)
    with pytest.raises(DatasetLayoutError, match="no labelled samples"):
        read_dataset(_images_only_h5(tmp_path / "u.h5"))


def _images_only_h5(path: Path) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        f["images"] = np.zeros((4, 1, 8, 8), np.float32)
    return path


def test_group_size_errors_and_unknown_inputs(tmp_path):
    h5 = patches_h5(tmp_path / "p.h5", n=10)
    with pytest.raises(DatasetLayoutError, match="--group-size 4 does not divide the 10 samples"):
        read_dataset(h5, group_size=4)
    grouped = patches_h5(tmp_path / "g.h5", n=4, groups=np.array([b"a", b"a", b"b", b"b"]))
    with pytest.raises(DatasetLayoutError, match="has 'groups'"):
        read_dataset(grouped, group_size=2)
    assert [it.group for it in read_dataset(grouped).items] == ["a", "a", "b", "b"]
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(InputFileError, match="not a dataset layout"):
        read_dataset(tmp_path / "x.txt")


def test_pretraining_source_reads_layout_images(tmp_path):
    h5 = patches_h5(tmp_path / "p.h5", n=6, side=24)
    source = volume_source_from_arg(str(h5))
    assert isinstance(source, LayoutVolumeSource) and source.spatial_dims == 2 and len(source) == 6
    assert source.load(0).shape == (1, 24, 24) and source.image_shape == (24, 24)
    msd = volume_source_from_arg(str(msd_folder(tmp_path / "m", n=2, channels=2)))
    assert len(msd) == 6  # 3 cases (2 training + 1 test image) x 2 channels, labels ignored
    volume = msd.load(0)
    assert volume.shape == (16, 16, 16) and 0.0 <= volume.min() and volume.max() <= 1.0


@pytest.mark.parametrize("suffix", [".h5", ".npz"])
def test_nan_inf_and_complex_images_are_refused_in_every_arrays_format(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    labels = (images > 0.5).astype(np.uint8)

    def arrays(name: str, imgs: np.ndarray) -> Path:
        path = tmp_path / f"{name}{suffix}"
        if suffix == ".npz":
            np.savez(path, images=imgs, labels=labels)
        else:
            import h5py

            with h5py.File(path, "w") as f:
                f["images"], f["labels"] = imgs, labels
        return path

    for name, bad in (("nan", np.nan), ("inf", -np.inf)):
        poisoned = images.copy()
        poisoned[2, 0, 3, 3] = bad
        ds = read_dataset(arrays(name, poisoned))
        ds.load_image(ds.items[0])  # the clean rows still load
        with pytest.raises(DatasetLayoutError, match=r"#2 \('images' row 2\): image holds 1 NaN or infinite"):
            ds.load_image(ds.items[2])
    ds = read_dataset(arrays("complex", images + 1j * images))
    with pytest.raises(DatasetLayoutError, match=r"complex \(complex"):
        ds.load_image(ds.items[0])  # not a dropped imaginary part
    from genesis.data.layouts import _integer_labels

    with pytest.raises(DatasetLayoutError, match="labels are complex"):
        _integer_labels(labels + 1j, ds.path, "labels")


def test_nan_in_a_file_layout_is_refused_where_images_are_read(tmp_path, monkeypatch):
    import genesis.data.layouts as layouts

    root = msd_folder(tmp_path / "Dataset001_Blobs", n=3)
    ds = read_dataset(root)
    real = layouts._read_volume

    def poisoned(path, modality):  # a reader that would let NaN through (datalist/CSV/MSD share this path)
        array, geometry, header = real(path, modality)
        array = array.copy()
        array.flat[0] = np.nan
        return array, geometry, header

    monkeypatch.setattr(layouts, "_read_volume", poisoned)
    with pytest.raises(DatasetLayoutError, match="NaN or infinite"):
        ds.load_image(ds.items[0])
