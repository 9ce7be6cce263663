"""Hardened readers: DICOM found by content, every damaged slice reported, no silent wrong data."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from genesis.errors import DicomSeriesError, GenesisWarning, VolumeReadError
from genesis.io import Volume, is_dicom_file, load_volume, write_dicom_series

SIEMENS = "CT.1.3.12.2.1107.5.1.4.60064.300000221208081134280000165"


def _ct(shape=(6, 10, 12), seed=0) -> Volume:
    array = np.random.default_rng(seed).uniform(-1000, 400, shape).astype(np.float32)
    return Volume(array, spacing=(2.0, 0.8, 0.8), origin=(0.0, 0.0, -50.0))


def _siemens_series(folder: Path) -> list[Path]:
    """A series named like Siemens exports: no extension, dots in the name."""
    paths = write_dicom_series(_ct(), folder, series_uid="1.2.826.0.1.3680043.8.498.7")
    renamed = []
    for k, path in enumerate(paths):
        renamed.append(path.rename(folder / f"{SIEMENS}{k:02d}"))
    return renamed


def test_is_dicom_file_by_content_not_name(tmp_path) -> None:
    files = _siemens_series(tmp_path / "s")
    assert is_dicom_file(files[0])
    bare = tmp_path / "bare"  # no preamble, no 'DICM': starts with the file meta group
    bare.write_bytes(files[0].read_bytes()[132:])
    assert is_dicom_file(bare)
    text = tmp_path / "notes.dcm"
    text.write_text("not dicom at all, despite the name\n" * 10)
    assert not is_dicom_file(text)
    (tmp_path / "empty").write_bytes(b"")
    assert not is_dicom_file(tmp_path / "empty")
    assert not is_dicom_file(tmp_path / "s")  # a directory
    assert not is_dicom_file(tmp_path / "missing")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert not is_dicom_file(fifo)  # returns at once instead of blocking on open


def test_siemens_named_series_reads_and_keeps_completeness_check(tmp_path) -> None:
    files = _siemens_series(tmp_path / "s")
    assert load_volume(tmp_path / "s").shape == (6, 10, 12)
    assert load_volume(files[3]).shape == (6, 10, 12)  # one file: its whole series
    files[-1].write_bytes(files[-1].read_bytes()[:600])  # the last slice, truncated: no gap to see
    with pytest.raises(DicomSeriesError, match=files[-1].name):
        load_volume(tmp_path / "s")


@pytest.mark.parametrize("index", [0, 2, 5])
@pytest.mark.parametrize("keep", [100, 300, 1000])
def test_truncated_slice_anywhere_is_an_error_naming_it(tmp_path, index, keep) -> None:
    paths = write_dicom_series(_ct(), tmp_path / "s")
    paths[index].write_bytes(paths[index].read_bytes()[:keep])
    with pytest.raises(DicomSeriesError) as info:
        load_volume(tmp_path / "s")
    assert paths[index].name in str(info.value)


def test_fifo_and_unreadable_file_are_refused(tmp_path, monkeypatch) -> None:
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(VolumeReadError, match="not a regular file"):
        load_volume(fifo)  # would block forever inside the reader
    paths = write_dicom_series(_ct(), tmp_path / "s")
    locked = paths[5]
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw))
    with pytest.raises(DicomSeriesError, match="permission denied") as info:
        load_volume(tmp_path / "s")
    assert locked.name in str(info.value)


def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path) -> None:
    import pydicom

    n, shift = 8, 1.0  # each slice 1 mm (one pixel) further along the column direction
    array = np.full((n, 24, 16), -1000.0, np.float32)
    for k in range(n):
        array[k, 12 - k, 5] = 500.0  # a rod that is straight in the patient: it moves in the raw slices
    paths = write_dicom_series(Volume(array, spacing=(2.0, 1.0, 1.0)), tmp_path / "tilted")
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, k * shift, k * 2.0]
        ds.save_as(path)
    with pytest.warns(GenesisWarning, match="gantry tilt of 26.6 degrees"):
        volume = load_volume(tmp_path / "tilted")
    rod = [np.unravel_index(np.argmax(volume.array[k]), volume.array[k].shape) for k in range(n)]
    assert rod == [(12, 5)] * n  # one straight line on the orthogonal grid
    assert volume.spacing == pytest.approx((2.0, 1.0, 1.0))
    assert np.allclose(volume.direction_matrix, np.eye(3))
    assert volume.metadata["gantry_tilt_deg"] == pytest.approx(26.565, abs=1e-3)
    straight = write_dicom_series(Volume(array, spacing=(2.0, 1.0, 1.0)), tmp_path / "straight")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenesisWarning)
        assert "gantry_tilt_deg" not in load_volume(straight[0].parent).metadata


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) - 64])
    elif how == "crc":  # the gzip trailer (CRC-32, length) or the zlib Adler-32 at the very end
        path.write_bytes(data[:-6] + bytes([data[-6] ^ 0xFF]) + data[-5:])


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
@pytest.mark.parametrize("how", ["truncate", "crc"])
def test_compressed_stream_is_verified_before_it_is_trusted(tmp_path, ext, how) -> None:
    from genesis.io import save_volume

    path = save_volume(_ct(shape=(12, 48, 48)), tmp_path / f"scan{ext}")
    _damage(path, how)
    with pytest.raises(VolumeReadError, match="truncated|corrupt") as info:
        load_volume(path)
    assert "scan" in str(info.value)


def _nifti(path: Path, pixdim=(0.8, 0.8, 2.0), shape=(12, 10, 6)) -> Path:
    import nibabel as nib

    data = np.random.default_rng(0).uniform(-1000, 400, shape).astype(np.float32)
    image = nib.Nifti1Image(data, None)  # no sform, no qform: pixdim alone gives the spacing
    image.header["pixdim"][1:4] = pixdim
    nib.save(image, str(path))
    return path


@pytest.mark.parametrize("pixdim", [(0.0, 0.8, 2.0), (0.8, -0.8, 2.0), (0.8, 0.8, float("nan"))])
def test_invalid_spacing_is_an_error_unless_assumed(tmp_path, pixdim) -> None:
    path = _nifti(tmp_path / "scan.nii", pixdim)
    with pytest.raises(VolumeReadError, match="--assume-spacing") as info:
        load_volume(path)
    assert "scan.nii" in str(info.value)
    with pytest.warns(GenesisWarning, match="assuming 1.5 mm"):
        volume = load_volume(path, assume_spacing=1.5)
    assert all(s > 0 for s in volume.spacing) and 1.5 in volume.spacing


def test_dicom_without_pixel_spacing(tmp_path) -> None:
    import pydicom

    paths = write_dicom_series(_ct(), tmp_path / "s")
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing
        ds.save_as(path)
    with pytest.raises(VolumeReadError, match="PixelSpacing missing"):
        load_volume(tmp_path / "s")
    with pytest.warns(GenesisWarning):
        assert load_volume(tmp_path / "s", assume_spacing=0.7).spacing == pytest.approx((2.0, 0.7, 0.7))


def test_huge_header_is_refused_before_allocating(tmp_path) -> None:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 2000))  # 6.5 TiB as float32, in a file of a few bytes
    path = tmp_path / "claims.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\1\0" * 64)
    with pytest.raises(VolumeReadError, match="GiB") as info:
        load_volume(path)
    assert "claims.nii" in str(info.value)
