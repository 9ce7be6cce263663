"""Preprocessed-volume cache: content keys, cheap hits (no re-read of DICOM), atomic writes."""

from __future__ import annotations

import os

import numpy as np
import pydicom
import pytest

import genesis.data.sources as sources_module
from genesis.data.cache import VolumeCache, volume_files
from genesis.data.preprocess import PreprocessConfig
from genesis.data.sources import FileVolumeSource
from genesis.io import Volume, save_volume, write_dicom_series


def _ct(seed=0) -> Volume:
    array = np.random.default_rng(seed).uniform(-1000, 500, (5, 10, 12)).astype(np.float32)
    return Volume(array, (2.0, 1.0, 1.0))


def test_get_or_compute_computes_once(tmp_path) -> None:
    cache = VolumeCache(tmp_path / "cache")
    calls = []

    def compute():
        calls.append(1)
        return np.arange(24, dtype=np.float32).reshape(2, 3, 4)

    first = cache.get_or_compute({"a": 1, "b": (1, 2)}, compute)
    second = cache.get_or_compute({"b": [1, 2], "a": 1}, compute)  # same key: order and tuple/list
    assert len(calls) == 1
    assert isinstance(second, np.memmap) and not second.flags.writeable
    np.testing.assert_array_equal(first, second)
    cache.get_or_compute({"a": 2, "b": (1, 2)}, compute)
    assert len(calls) == 2
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_damaged_entry_is_recomputed(tmp_path) -> None:
    cache = VolumeCache(tmp_path)
    cache.get_or_compute("k", lambda: np.ones(3, np.float32))
    cache.path_for("k").write_bytes(b"broken")
    np.testing.assert_array_equal(cache.get_or_compute("k", lambda: np.zeros(3, np.float32)), 0)


def test_fingerprint_follows_content_and_companion_files(tmp_path) -> None:
    cache = VolumeCache(tmp_path / "cache")
    header = save_volume(_ct(), tmp_path / "ct.mhd")
    assert [p.name for p in volume_files(header)] == ["ct.mhd", "ct.raw"]
    before = cache.fingerprint(header)
    assert cache.fingerprint(header) == before
    raw = tmp_path / "ct.raw"
    data = bytearray(raw.read_bytes())
    data[10] ^= 0xFF
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(1, 1))  # even with an unusual mtime the size+mtime stamp changed
    assert cache.fingerprint(header) != before


def test_hits_only_stat_the_files(tmp_path) -> None:
    save_volume(_ct(), tmp_path / "ct.nrrd")
    cache = VolumeCache(tmp_path / "cache")
    cache.fingerprint(tmp_path / "ct.nrrd")
    assert cache.hash_calls == 1
    again = VolumeCache(tmp_path / "cache")  # a new process: the index is on disk
    again.fingerprint(tmp_path / "ct.nrrd")
    assert again.hash_calls == 0


def test_second_run_does_not_read_dicom(tmp_path, monkeypatch) -> None:
    series = tmp_path / "series"
    write_dicom_series(_ct(), series)
    cfg = PreprocessConfig(window=(-1000.0, 500.0))
    first = FileVolumeSource([series], cfg, cache_dir=tmp_path / "cache").load(0)

    def forbidden(*args, **kwargs):
        raise AssertionError("the cache should have served this volume")

    monkeypatch.setattr(sources_module, "load_volume", forbidden)
    source = FileVolumeSource([series], cfg, cache_dir=tmp_path / "cache")
    second = source.load(0)
    np.testing.assert_array_equal(first, second)
    assert source.cache.hash_calls == 0  # no DICOM byte was read again
    # other preprocessing parameters are another key: they must be computed
    with pytest.raises(AssertionError, match="cache should have served"):
        FileVolumeSource([series], PreprocessConfig(), cache_dir=tmp_path / "cache").load(0)


def test_changed_dicom_slice_invalidates(tmp_path) -> None:
    series = tmp_path / "series"
    write_dicom_series(_ct(0), series)
    source = FileVolumeSource([series], cache_dir=tmp_path / "cache")
    before = np.array(source.load(0))
    ds = pydicom.dcmread(series / "slice0002.dcm")
    ds.PixelData = (ds.pixel_array + 100).astype(ds.pixel_array.dtype).tobytes()  # edit one slice in place
    ds.save_as(series / "slice0002.dcm")
    after = FileVolumeSource([series], cache_dir=tmp_path / "cache").load(0)
    assert not np.array_equal(before, after)
