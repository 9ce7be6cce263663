"""Bad input never escapes as a raw library traceback: each case raises a GenesisError naming the file."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from genesis.errors import DicomSeriesError, GenesisError, GenesisWarning, VolumeReadError
from genesis.io import Volume, list_dicom_series, load_volume, save_volume, write_dicom_series


def _ct(shape=(6, 10, 12), seed=0) -> Volume:
    array = np.random.default_rng(seed).uniform(-1000, 400, shape).astype(np.float32)
    return Volume(array, spacing=(2.0, 0.8, 0.8), origin=(0.0, 0.0, -50.0))


def _raises(path, cls=VolumeReadError, match=None, **kw) -> GenesisError:
    with pytest.raises(cls) as info:
        load_volume(path, **kw)
    message = str(info.value)
    assert Path(path).name in message, message  # the message names the file
    if match:
        assert match in message, message
    return info.value


def test_missing_path(tmp_path) -> None:
    _raises(tmp_path / "nope.nii.gz", match="no such file")


def test_unknown_extension_and_text_file(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    _raises(tmp_path / "notes.txt", match="unknown volume format")
    (tmp_path / "fake.nii.gz").write_text("not an image")
    _raises(tmp_path / "fake.nii.gz", match="not a readable image")
    (tmp_path / "fake.nrrd").write_text("hello")
    _raises(tmp_path / "fake.nrrd")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".mha", ".nrrd"])
def test_truncated_single_file(tmp_path, ext) -> None:
    good = save_volume(_ct(), tmp_path / f"good{ext}")
    data = good.read_bytes()
    bad = tmp_path / f"bad{ext}"
    bad.write_bytes(data[: len(data) * 2 // 3])
    _raises(bad, match="truncated or corrupt")


def test_mhd_with_truncated_or_missing_raw(tmp_path) -> None:
    header = save_volume(_ct(), tmp_path / "ct.mhd")
    raw = tmp_path / "ct.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    _raises(header, match="truncated or corrupt")
    raw.unlink()
    _raises(header)


def test_2d_image_rejected(tmp_path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 12), np.float32)), str(tmp_path / "slice.nii.gz"))
    _raises(tmp_path / "slice.nii.gz", match="3D volume is needed")
    save_volume(_ct(shape=(1, 10, 12)), tmp_path / "one.nrrd")  # 3D file with a single slice
    _raises(tmp_path / "one.nrrd", match="2D image")


@pytest.mark.parametrize("ext,bad", [(".nii.gz", np.nan), (".nrrd", np.inf), (".mha", -np.inf)])
def test_nan_and_inf_rejected(tmp_path, ext, bad) -> None:
    volume = _ct()
    volume.array[2, 3, 4] = bad
    _raises(save_volume(volume, tmp_path / f"v{ext}"), match="NaN or infinite")


def test_constant_volume_rejected(tmp_path) -> None:
    path = save_volume(Volume(np.full((4, 5, 6), -1000, np.float32), (1, 1, 1)), tmp_path / "flat.nii")
    _raises(path, match="constant")


@pytest.mark.parametrize("high,expect", [(1.0, "[0, 1]"), (255.0, "0..255"), (3000.0, "no negative")])
def test_non_hu_intensities_warn(tmp_path, high, expect) -> None:
    array = np.random.default_rng(1).uniform(0, high, (4, 5, 6)).astype(np.float32)
    path = save_volume(Volume(array, (1, 1, 1)), tmp_path / "img.nrrd")
    with pytest.warns(GenesisWarning, match=expect.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_volume(path)


# ---- DICOM ------------------------------------------------------------------------------------
@pytest.fixture()
def series(tmp_path) -> Path:
    write_dicom_series(_ct(), tmp_path / "series", series_uid="1.2.826.0.1.3680043.8.498.1")
    return tmp_path / "series"


def test_dicom_missing_slice_is_a_gap(series) -> None:
    (series / "slice0003.dcm").unlink()
    _raises(series, DicomSeriesError, match="missing slice")


def test_dicom_corrupt_slice(series) -> None:
    path = series / "slice0002.dcm"
    path.write_bytes(path.read_bytes()[:300])
    _raises(series, DicomSeriesError, match="slice0002.dcm")
    (series / "slice0000.dcm").write_bytes(b"garbage" * 20)  # an end slice: no gap to see
    _raises(series, DicomSeriesError, match="corrupt")


def test_dicom_inconsistent_spacing(series) -> None:
    path = series / "slice0005.dcm"
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.7
    ds.save_as(path)
    _raises(series, DicomSeriesError, match="inconsistent slice spacing")


def test_dicom_duplicate_position_and_mixed_grid(series, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(series, copy)
    ds = pydicom.dcmread(series / "slice0004.dcm")
    ds5 = pydicom.dcmread(series / "slice0005.dcm")
    ds5.ImagePositionPatient = ds.ImagePositionPatient
    ds5.save_as(series / "slice0005.dcm")
    _raises(series, DicomSeriesError, match="duplicate slice position")
    ds1 = pydicom.dcmread(copy / "slice0001.dcm")
    ds1.PixelSpacing = [0.5, 0.5]
    ds1.save_as(copy / "slice0001.dcm")
    _raises(copy, DicomSeriesError, match="pixel spacing")


def test_dicom_single_slice_is_2d(tmp_path) -> None:
    write_dicom_series(_ct(shape=(1, 8, 8)), tmp_path / "one")
    _raises(tmp_path / "one", DicomSeriesError, match="2D image")


def test_dicom_empty_folder(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    _raises(tmp_path / "empty", DicomSeriesError, match="no DICOM series")
    assert list_dicom_series(tmp_path / "empty") == []


def test_dicom_several_series_need_a_uid(tmp_path) -> None:
    folder = tmp_path / "mixed"
    write_dicom_series(_ct(), folder, series_uid="1.2.3.1", description="chest", prefix="a")
    write_dicom_series(_ct(shape=(3, 10, 12), seed=1), folder, series_uid="1.2.3.2", description="scout", prefix="b")
    error = _raises(folder, DicomSeriesError, match="series_uid")
    for text in ("1.2.3.1", "6 slices", "chest", "1.2.3.2", "3 slices", "scout"):
        assert text in str(error)
    assert [(s.uid, s.n_slices) for s in list_dicom_series(folder)] == [("1.2.3.1", 6), ("1.2.3.2", 3)]
    assert load_volume(folder, series_uid="1.2.3.2").shape == (3, 10, 12)
    _raises(folder, DicomSeriesError, match="no series with uid", series_uid="9.9")


def test_dicom_non_ct_modality_warns(tmp_path) -> None:
    write_dicom_series(_ct(), tmp_path / "mr", modality="MR")
    with pytest.warns(GenesisWarning, match="modality is MR"):
        volume = load_volume(tmp_path / "mr")
    assert volume.modality == "MR"


def test_ct_dicom_does_not_warn(series) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_volume(series).modality == "CT"


def test_save_unknown_extension(tmp_path) -> None:
    with pytest.raises(VolumeReadError, match="cannot write format"):
        save_volume(_ct(), tmp_path / "ct.png")


def test_empty_file_and_empty_array(tmp_path) -> None:
    (tmp_path / "zero.nii.gz").write_bytes(b"")
    _raises(tmp_path / "zero.nii.gz")
    from genesis.io import check_volume

    with pytest.raises(VolumeReadError, match="empty"):
        check_volume(Volume(np.zeros((0, 4, 4), np.float32), (1, 1, 1), path=tmp_path / "x.nrrd"))


def test_dicomdir_next_to_a_series_is_ignored(series) -> None:
    ds = pydicom.dcmread(series / "slice0000.dcm", stop_before_pixels=True)
    del ds.SeriesInstanceUID  # a non-image DICOM object (a DICOMDIR) in the same folder
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.1.3.10"
    ds.save_as(series / "DICOMDIR")
    assert load_volume(series).shape == (6, 10, 12)


def test_multiframe_dicom_is_refused_clearly(tmp_path) -> None:
    [path] = write_dicom_series(_ct(shape=(1, 8, 8)), tmp_path / "mf")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.save_as(path)
    with pytest.raises(DicomSeriesError, match="multi-frame"):
        load_volume(tmp_path / "mf")
