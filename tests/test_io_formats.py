"""Reading and writing every supported format; real CT files from ../shared and tests/data."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from genesis.errors import GenesisWarning
from genesis.io import Volume, list_dicom_series, load_volume, save_volume

FORMATS = [".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".nhdr"]


@pytest.fixture()
def volume() -> Volume:
    array = np.random.default_rng(0).normal(-500.0, 300.0, (5, 12, 14)).astype(np.float32)
    return Volume(array, spacing=(2.5, 0.8, 0.7), origin=(1.0, -2.0, 3.5))


@pytest.mark.parametrize("ext", FORMATS)
def test_round_trip_every_file_format(tmp_path, volume: Volume, ext: str) -> None:
    path = save_volume(volume, tmp_path / f"ct{ext}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenesisWarning)  # real HU data: no warning expected
        back = load_volume(path)
    assert back.array.dtype == np.float32 and back.array.shape == (5, 12, 14)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-6)
    np.testing.assert_allclose(back.origin, volume.origin, rtol=1e-6)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    assert back.path == path and back.metadata["format"] == ext
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_mhd_writes_header_and_raw(tmp_path, volume: Volume) -> None:
    save_volume(volume, tmp_path / "ct.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.mhd", "ct.raw"]


def test_dicom_round_trip_applies_rescale(tmp_path, volume: Volume) -> None:
    save_volume(volume, tmp_path / "series")  # no extension: a DICOM series folder
    back = load_volume(tmp_path / "series")
    np.testing.assert_array_equal(back.array, np.rint(volume.array))
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=1e-5)
    np.testing.assert_allclose(back.origin, volume.origin, atol=1e-5)
    assert back.modality == "CT" and back.metadata["n_slices"] == 5


def test_world_point_survives_nifti_lps_ras_conversion(tmp_path) -> None:
    array = np.zeros((4, 6, 8), np.float32) - 1000
    array[2, 3, 5] = 500
    direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)  # typical of NIfTI files in RAS
    volume = Volume(array, (3.0, 1.5, 1.0), origin=(20.0, 30.0, -40.0), direction=direction)
    back = load_volume(save_volume(volume, tmp_path / "ras.nii.gz"))
    world = volume.index_to_world((2, 3, 5))
    np.testing.assert_allclose(back.world_to_index(world), (2, 3, 5), atol=1e-4)
    assert back.array[2, 3, 5] == 500


def test_committed_nifti(test_data) -> None:
    volume = load_volume(test_data / "totalsegmentator" / "example_ct_sm.nii.gz")
    assert volume.shape == (30, 101, 122)  # NIfTI (x, y, z) = (122, 101, 30)
    assert volume.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert (volume.array.min(), volume.array.max()) == (-1100.0, 1207.0)
    assert volume.array.mean() == pytest.approx(-354.1, abs=0.5)


def test_committed_dicom_slices(test_data) -> None:
    directory = test_data / "lungmask_lidc_slice"
    volume = load_volume(directory)
    assert volume.shape == (2, 512, 512)
    assert volume.spacing == pytest.approx((1.0, 0.625, 0.625))
    assert (volume.array.min(), volume.array.max()) == (-2048.0, 1502.0)
    np.testing.assert_array_equal(volume.array[0], volume.array[1])  # identical pixel data
    assert volume.modality is None  # the tag is missing
    assert np.mean(volume.array < -500) == pytest.approx(0.486, abs=0.005)
    # a single file reads its whole series
    assert load_volume(directory / "1.dcm").shape == (2, 512, 512)


def test_real_shared_files(real_data) -> None:
    ct = load_volume(real_data / "totalsegmentator" / "example_ct.nii.gz")
    assert ct.shape == (112, 101, 122) and ct.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert (ct.array.min(), ct.array.max()) == (-1207.0, 3382.0)
    assert ct.array.mean() == pytest.approx(-360.0, abs=0.5)

    copd = load_volume(real_data / "cip_copdgene" / "ct-64.nrrd")
    assert copd.shape == (79, 64, 64)
    assert copd.spacing == pytest.approx((3.99, 4.17, 4.17), abs=0.01)
    assert (copd.array.min(), copd.array.max()) == (-1007.0, 1095.0)
    assert copd.array.mean() == pytest.approx(-466, abs=1)

    series_dir = real_data / "cip_copdgene" / "simple_dicom"
    dicom = load_volume(series_dir)
    assert dicom.shape == (2, 512, 512) and dicom.modality == "CT"
    assert dicom.spacing == pytest.approx((0.625, 0.703125, 0.703125))
    assert (dicom.array.min(), dicom.array.max()) == (-3024.0, 1219.0)  # rescale intercept -1024 applied
    [info] = list_dicom_series(series_dir)
    assert info.n_slices == 2 and info.description == "INSPIRATION" and info.modality == "CT"
    np.testing.assert_allclose(dicom.origin, (-176.9, -158.8, -286.75))


def test_real_dicom_and_nrrd_agree_on_world_geometry(real_data) -> None:
    cta = load_volume(real_data / "totalsegmentator" / "pulmonary_report" / "ct_cropped.nii.gz")
    assert cta.shape == (112, 102, 122) and cta.spacing == pytest.approx((1.5, 1.5, 1.5))
    # the first voxel maps to the origin and back
    np.testing.assert_allclose(cta.world_to_index(cta.index_to_world((0, 0, 0))), (0, 0, 0), atol=1e-9)
