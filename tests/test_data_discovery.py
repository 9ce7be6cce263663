"""Data discovery over a volume cache: a second run reads stamps, not scans; no path blocks."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings

import numpy as np
import pytest

import genesis.data.sources as sources_module
import genesis.io.readers as readers_module
from genesis.cli.pretrain import main as pretrain_main
from genesis.data.prepare import prepare_source
from genesis.data.sources import volume_source_from_arg
from genesis.errors import GenesisWarning, InputFileError
from genesis.io import Volume, save_volume

CROP = (6, 8, 8)


def _ct(seed: int = 0, shape=(6, 12, 12)) -> Volume:
    array = np.random.default_rng(seed).uniform(-1000, 500, shape).astype(np.float32)
    return Volume(array, (2.0, 1.0, 1.0))


def _label_map(shape=(6, 12, 12)) -> Volume:
    return Volume((np.arange(np.prod(shape)).reshape(shape) % 3).astype(np.float32), (2.0, 1.0, 1.0))


@pytest.fixture()
def folder(tmp_path):
    """A good scan, a label map and a non-HU image (both by content), and a too-small scan."""
    root = tmp_path / "data"
    save_volume(_ct(0), root / "a.nii.gz")
    save_volume(_ct(1), root / "b.mhd")  # + b.raw: an uncompressed data file
    save_volume(_label_map(), root / "c.nii.gz")
    save_volume(Volume(np.random.default_rng(2).uniform(0, 1, (6, 12, 12)).astype(np.float32), (2.0, 1.0, 1.0)),
                root / "d.nii.gz")
    save_volume(Volume(_ct(3, (2, 12, 12)).array, (1.0, 1.0, 1.0)), root / "e.nii.gz")
    return root


def _decisions(source) -> list[tuple[str, str, str]]:
    return [(s.record.path.name, s.status, s.reason) for s in source.data_report.scans]


class _Reads:
    """Counts the scans read by discovery and by cache builds (the readers' entry point)."""

    def __init__(self, monkeypatch) -> None:
        self.paths: list[str] = []
        real = readers_module.load_volume

        def counted(path, *args, **kwargs):
            self.paths.append(os.path.basename(str(path)))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(readers_module, "load_volume", counted)  # discovery imports it per call
        monkeypatch.setattr(sources_module, "load_volume", counted)  # cache builds


def _source(folder, cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenesisWarning)
        return volume_source_from_arg(folder, cache_dir=cache, crop=CROP)


def test_second_run_reads_no_scan_and_decides_the_same(folder, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = _source(folder, cache)
    assert [(n, st) for n, st, _ in _decisions(first)] == [
        ("a.nii.gz", "used"), ("b.mhd", "used"), ("c.nii.gz", "skipped"), ("d.nii.gz", "skipped"),
        ("e.nii.gz", "skipped")]
    prepare_source(first, progress=False)
    reads = _Reads(monkeypatch)
    second = _source(folder, cache)
    report = prepare_source(second, progress=False)
    assert reads.paths == []  # neither discovery nor the cache read a scan again
    assert report.built == 0
    assert _decisions(second) == _decisions(first)
    assert [s.shape for s in second.data_report.scans] == [s.shape for s in first.data_report.scans]
    assert [s.hu_range for s in second.data_report.scans] == [s.hu_range for s in first.data_report.scans]
    # the too-small decision follows this run's crop, not the crop of the run that stored the facts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenesisWarning)
        other = volume_source_from_arg(folder, cache_dir=cache, crop=(2, 8, 8))
    assert reads.paths == []
    assert dict((n, st) for n, st, _ in _decisions(other))["e.nii.gz"] == "used"


def test_a_changed_file_is_read_and_rebuilt(folder, tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    prepare_source(_source(folder, cache), progress=False)
    reads = _Reads(monkeypatch)
    # a.nii.gz becomes a label map: discovery must see it (and skip it)
    save_volume(_label_map(), folder / "a.nii.gz")
    # b.raw: one voxel changed in place, size and mtime restored: the edges hash still catches it
    raw = folder / "b.raw"
    st = raw.stat()
    data = bytearray(raw.read_bytes())
    data[-4:] = np.float32(123.0).tobytes()
    raw.write_bytes(bytes(data))
    os.utime(raw, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (raw.stat().st_size, raw.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    source = _source(folder, cache)
    assert sorted(reads.paths) == ["a.nii.gz", "b.mhd"]
    decisions = dict((n, st) for n, st, _ in _decisions(source))
    assert decisions["a.nii.gz"] == "skipped" and decisions["b.mhd"] == "used"
    report = prepare_source(source, progress=False)
    assert report.built == 1  # b.mhd's entry, from its new bytes
    loaded = np.asarray(source.load(0))
    assert source.name(0).endswith("b.mhd") and loaded.flat[-1] == pytest.approx((123.0 + 1000.0) / 2000.0)


@contextlib.contextmanager
def _within(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a blocked open() of a FIFO."""
    def expired(signum, frame):
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_no_path_into_discovery_blocks(tmp_path, capsys) -> None:
    root = tmp_path / "data"
    save_volume(_ct(0), root / "a.nii.gz")
    os.mkfifo(root / "pipe.nii.gz")  # a FIFO named like a scan, inside the folder
    save_volume(_ct(1), root / "m" / "b.mhd")
    (root / "m" / "b.raw").unlink()
    os.mkfifo(root / "m" / "b.raw")  # the data file of a header is a FIFO
    for name in ("direct.nii.gz", "list.csv", "datalist.json"):
        os.mkfifo(tmp_path / name)
    with _within(20):
        source = _source(root, tmp_path / "cache")
        assert [s.record.path.name for s in source.data_report.used] == ["a.nii.gz"]
        skipped = {s.record.path.name: s.reason for s in source.data_report.scans if not s.used}
        assert "not a regular file" in skipped["b.mhd"]
        for name in ("direct.nii.gz", "list.csv", "datalist.json"):
            with pytest.raises(InputFileError, match="not a regular file"):
                volume_source_from_arg(tmp_path / name, cache_dir=tmp_path / "cache")
        code = pretrain_main(["--no-progress", "--crop", "16", "32", "32", "--prepare-only",
                              "--data", str(tmp_path / "direct.nii.gz"), "--cache-dir", str(tmp_path / "cache")])
    assert code == 2 and "not a regular file" in capsys.readouterr().err
