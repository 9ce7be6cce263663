"""Preprocessed-volume cache: content keys, cheap hits (no re-read of DICOM), atomic writes."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pydicom
import pytest

import genesis.data.cache as cache_module
import genesis.data.sources as sources_module
from genesis.data.cache import VolumeCache, volume_files
from genesis.data.preprocess import PreprocessConfig
from genesis.data.sources import FileVolumeSource
from genesis.errors import GenesisWarning
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
    with pytest.warns(GenesisWarning, match="damaged cache entry"):
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


# ---- integrity: checksums, damaged entries rebuilt -------------------------------------------
def _entry(tmp_path, seed=0):
    """A cache with two entries; returns (cache root, the first key's array, compute log)."""
    arrays = {k: np.random.default_rng([ord(k), seed]).random((6, 8, 10), dtype=np.float32) for k in ("a", "b")}
    calls: list[str] = []
    cache = VolumeCache(tmp_path)
    for k, arr in arrays.items():
        cache.get_or_compute(k, lambda arr=arr, k=k: calls.append(k) or arr)
    return arrays, calls


def _rewrite_same_size(path, mutate) -> None:
    array = np.load(path)
    size = path.stat().st_size
    with open(path, "wb") as handle:
        np.save(handle, mutate(array))
    assert path.stat().st_size == size


@pytest.mark.parametrize("damage", ["huge", "nan", "swapped_shape", "other_array", "empty", "truncated", "record"])
def test_damaged_entries_are_detected_and_rebuilt(tmp_path, damage) -> None:
    arrays, calls = _entry(tmp_path)
    path = VolumeCache(tmp_path).path_for("a")
    if damage == "huge":  # one bit-flipped float of the same file size
        _rewrite_same_size(path, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, -1.7e38, a).astype(a.dtype))
    elif damage == "nan":
        _rewrite_same_size(path, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a).astype(a.dtype))
    elif damage == "swapped_shape":
        _rewrite_same_size(path, lambda a: np.ascontiguousarray(a).reshape(a.shape[::-1]))
    elif damage == "other_array":
        path.write_bytes(VolumeCache(tmp_path).path_for("b").read_bytes())
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "record":  # the other entry's record copied over: its key does not match
        path.with_suffix(".json").write_text(VolumeCache(tmp_path).path_for("b").with_suffix(".json").read_text())
    fresh = VolumeCache(tmp_path)  # a new process: verifies on first open
    with pytest.warns(GenesisWarning, match="damaged cache entry"):
        out = fresh.get_or_compute("a", lambda: calls.append("a") or arrays["a"])
    assert calls == ["a", "b", "a"]  # rebuilt
    np.testing.assert_array_equal(out, arrays["a"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt entry is valid: no warning, no recompute
        np.testing.assert_array_equal(VolumeCache(tmp_path).get("a"), arrays["a"])


def test_verification_happens_once_per_process(tmp_path, monkeypatch) -> None:
    arrays, _ = _entry(tmp_path)
    cache = VolumeCache(tmp_path)
    seen: list = []
    real = cache_module.checksums_of
    monkeypatch.setattr(cache_module, "checksums_of", lambda *a, **k: seen.append(a[0]) or real(*a, **k))
    for _ in range(3):
        np.testing.assert_array_equal(cache.get("b"), arrays["b"])
    assert len(seen) == 1
    record = json.loads(cache.path_for("b").with_suffix(".json").read_text())
    assert record["shape"] == [6, 8, 10] and record["dtype"] == "<f4" and "sha256" in record["checksums"]


def test_concurrent_builders_compute_an_entry_once(tmp_path) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.map(_slow_build, [str(tmp_path)] * 4)
    assert sum(results) == 1  # one process computed, the others found it built


def _slow_build(root: str) -> int:
    import time

    cache = VolumeCache(root)

    def compute():
        time.sleep(0.2)
        return np.ones((2, 3, 4), np.float32)

    cache.get_or_compute("shared", compute)
    return cache.builds


# ---- prepare: parallel, resumable ---------------------------------------------------------------
def test_prepare_source_parallel_resumable_and_adopted(tmp_path, monkeypatch) -> None:
    from genesis.data.prepare import prepare_source

    files = [save_volume(_ct(i), tmp_path / f"ct{i}.nii.gz") for i in range(3)]
    root = tmp_path / "cache"
    first = prepare_source(FileVolumeSource(files, cache_dir=root), workers=2, progress=False)
    assert (first.volumes, first.built, first.valid) == (3, 3, 0)
    source = FileVolumeSource(files, cache_dir=root)
    again = prepare_source(source, workers=2, progress=False)
    assert (again.built, again.valid) == (0, 3)
    # the pool's verified entries are adopted: loads only map them (no fingerprint, no read)
    monkeypatch.setattr(source.cache, "fingerprint", lambda *a: (_ for _ in ()).throw(AssertionError("re-keyed")))
    expected = FileVolumeSource(files).load(1)
    loaded = source.load(1)
    assert isinstance(loaded, np.memmap)
    np.testing.assert_array_equal(loaded, expected)
    # a damaged entry is the only one rebuilt on the next pass
    entry = VolumeCache(root).path_for(FileVolumeSource(files, cache_dir=root)._key(2))
    entry.write_bytes(b"")
    with pytest.warns(GenesisWarning, match="damaged cache entry"):
        third = prepare_source(FileVolumeSource(files, cache_dir=root), workers=0, progress=False)
    assert (third.built, third.valid) == (1, 2)


def test_default_cache_dir_rule(tmp_path) -> None:
    from genesis.data.cache import default_cache_dir

    assert default_cache_dir({"GENESIS_CACHE": str(tmp_path)}) == tmp_path / "volumes"
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "genesis" / "volumes"
    assert default_cache_dir({}).parts[-3:] == (".cache", "genesis", "volumes")


# ---- the key and the voxels come from the same bytes ---------------------------------------------
def test_a_scan_changed_while_read_is_read_again_never_stored_under_the_old_key(tmp_path, monkeypatch) -> None:
    path = save_volume(_ct(0), tmp_path / "ct.nii.gz")
    content_a = path.read_bytes()
    other = save_volume(_ct(1), tmp_path / "other" / "ct.nii.gz").read_bytes()
    real = sources_module.load_volume
    changes = []

    def changing(p, *args, **kwargs):  # a copy finishing while the first read runs
        if not changes:
            changes.append(1)
            path.write_bytes(other)
        return real(p, *args, **kwargs)

    monkeypatch.setattr(sources_module, "load_volume", changing)
    root = tmp_path / "cache"
    FileVolumeSource([path], cache_dir=root).prepare(0)  # e.g. --prepare-only
    assert changes == [1]
    np.testing.assert_array_equal(FileVolumeSource([path], cache_dir=root).load(0),
                                  FileVolumeSource([tmp_path / "other" / "ct.nii.gz"]).load(0))
    # content A comes back (another mtime): its entry was never written with B's voxels
    path.write_bytes(content_a)
    os.utime(path, ns=(10**18, 10**18))
    monkeypatch.setattr(sources_module, "load_volume", real)
    again = FileVolumeSource([path], cache_dir=root).load(0)
    np.testing.assert_array_equal(again, FileVolumeSource([path]).load(0))


def test_a_scan_that_keeps_changing_is_an_error(tmp_path, monkeypatch) -> None:
    from genesis.errors import InputFileError

    path = save_volume(_ct(0), tmp_path / "ct.nii.gz")
    real = sources_module.load_volume
    seeds = iter(range(1, 100))

    def always_changing(p, *args, **kwargs):
        save_volume(_ct(next(seeds)), path)
        return real(p, *args, **kwargs)

    monkeypatch.setattr(sources_module, "load_volume", always_changing)
    source = FileVolumeSource([path], cache_dir=tmp_path / "cache")
    with pytest.raises(InputFileError, match="changed while it was read"):
        source.load(0)
    assert list((tmp_path / "cache").glob("arrays/*/*.npy")) == []  # nothing stored


@pytest.mark.parametrize("damage", ["volume_index_copied", "volume_fingerprint_edited", "file_index_copied"])
def test_damaged_index_entries_are_detected(tmp_path, damage) -> None:
    from genesis.data.cache import file_stamp, volume_stamp

    a, b = (save_volume(_ct(i), tmp_path / f"ct{i}.mhd") for i in (0, 1))
    root = tmp_path / "cache"
    expected = FileVolumeSource([a]).load(0)
    for p in (a, b):
        FileVolumeSource([p], cache_dir=root).load(0)
    cache = VolumeCache(root)
    if damage == "volume_index_copied":  # A's index entry now points at B's cache entry
        target = cache.index_path("volumes", volume_stamp(a))
        target.write_text(cache.index_path("volumes", volume_stamp(b)).read_text())
    elif damage == "volume_fingerprint_edited":
        target = cache.index_path("volumes", volume_stamp(a))
        entry = json.loads(target.read_text())
        entry["value"]["fingerprint"] = json.loads(cache.index_path("volumes", volume_stamp(b)).read_text())["value"]["fingerprint"]
        target.write_text(json.dumps(entry))
    else:  # A's raw file index entry copied from B's, and A's volume entry gone: A is re-fingerprinted
        cache.index_path("volumes", volume_stamp(a)).unlink()
        target = cache.index_path("files", file_stamp((tmp_path / "ct0.raw").resolve()))
        target.write_text(cache.index_path("files", file_stamp((tmp_path / "ct1.raw").resolve())).read_text())
    with pytest.warns(GenesisWarning, match="damaged cache index entry"):
        loaded = FileVolumeSource([a], cache_dir=root).load(0)
    np.testing.assert_array_equal(loaded, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: valid again
        np.testing.assert_array_equal(FileVolumeSource([a], cache_dir=root).load(0), expected)


def test_checksum_records_carry_crc32_and_verification_uses_it(tmp_path, monkeypatch) -> None:
    arrays, _ = _entry(tmp_path)
    record = json.loads(VolumeCache(tmp_path).path_for("a").with_suffix(".json").read_text())
    assert {"sha256", "crc32"} <= set(record["checksums"])
    used: list = []
    real = cache_module.checksums_of
    monkeypatch.setattr(cache_module, "checksums_of", lambda p, algorithms=None: used.append(algorithms) or real(p, algorithms))
    monkeypatch.setattr(cache_module, "_xxhash", lambda: None)
    np.testing.assert_array_equal(VolumeCache(tmp_path).get("a"), arrays["a"])
    assert used == [("crc32",)]
