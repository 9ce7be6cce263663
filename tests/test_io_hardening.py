"""Hardened readers: DICOM found by content, every damaged slice reported, no silent wrong data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from genesis.errors import DicomSeriesError, VolumeReadError
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
