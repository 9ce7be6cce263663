"""The sampler's acceptance maps stored in the volume cache: same cubes, verified, rebuilt."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from genesis.data.cache import VolumeCache
from genesis.data.datasets import CubeDataset
from genesis.data.prepare import prepare_source
from genesis.data.sampler import SamplerConfig, SubVolumeSampler, decode_acceptance, encode_acceptance
from genesis.data.sources import _CachedLoading
from genesis.errors import GenesisWarning

SAMPLER = SamplerConfig.models_genesis(crop=(8, 16, 16))
#: Tissue starts at these x columns: 351 and 702 of 2,925 positions pass, and none for 14.
EDGES = (27, 30, 14)


class EdgeSource(_CachedLoading):
    """Volumes of air up to a column of x, tissue beyond (a few positions pass the rule)."""

    is_synthetic = True

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache = VolumeCache(cache_dir) if cache_dir is not None else None
        self._entries, self._layouts, self._acceptance = {}, {}, {}
        self.computed = 0

    def __len__(self) -> int:
        return len(EDGES)

    def name(self, i: int) -> str:
        return f"edge{EDGES[i]}"

    def _key(self, i: int) -> dict:
        return {"kind": "edge-test", "edge": EDGES[i]}

    def _compute(self, i: int) -> np.ndarray:
        self.computed += 1
        z, y, x = np.indices((24, 40, 64))
        noise = np.random.default_rng(i).random((24, 40, 64), dtype=np.float32) * 0.3
        return ((x > EDGES[i]) * np.float32(0.8) + noise).astype(np.float32)


def _cubes(source, keys=range(40)) -> np.ndarray:
    ds = CubeDataset(source, SAMPLER, cubes_per_epoch=len(keys), seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenesisWarning)  # the volume where nothing passes
        return np.stack([ds[k].numpy() for k in keys])


def test_stored_acceptance_gives_the_cubes_of_the_direct_computation(tmp_path: Path) -> None:
    direct = _cubes(EdgeSource(None))  # no cache: the sampler's in-process LRU
    source = EdgeSource(tmp_path)
    with pytest.warns(GenesisWarning, match="edge14: no cube position passes"):
        prepare_source(source, progress=False, sampler=SAMPLER)
    assert len(list(tmp_path.glob("acceptance/*/*.npy"))) == 2 * len(EDGES)
    assert all(p.with_suffix(".json").is_file() for p in tmp_path.glob("acceptance/*/*.npy"))
    ds = CubeDataset(source, SAMPLER, cubes_per_epoch=1, seed=0)
    stored = [ds.acceptance(i) for i in range(len(EDGES))]
    assert [a.n_accepted for a in stored] == [351, 702, 0]
    maps = [a.score if a.n_accepted == 0 else a.packed for a in stored]
    assert all(not m.flags.writeable and not m.flags.owndata for m in maps)  # read-only maps of the files
    np.testing.assert_array_equal(_cubes(source), direct)

    # both stored forms (bit-packed planes, flat indices) draw what the in-memory map draws
    sampler = SubVolumeSampler(SAMPLER)
    acc = sampler.compute_acceptance(source.load(1))
    for form in ("packed", "flat"):
        meta, data = encode_acceptance(acc, form)
        back = decode_acceptance(meta, data)
        assert (back.flat is not None) == (form == "flat")
        a, b = np.random.default_rng(1), np.random.default_rng(1)
        assert [back.draw(a) for _ in range(50)] == [acc.draw(b) for _ in range(50)]


def test_damaged_acceptance_entry_is_detected_and_rebuilt(tmp_path: Path) -> None:
    first = EdgeSource(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenesisWarning)
        prepare_source(first, progress=False, sampler=SamplerConfig.models_genesis(crop=(8, 16, 16)))
    direct = _cubes(EdgeSource(None))
    data = Path(first._acceptance[1][1][1][0])  # the bit-packed map of volume 1
    raw = bytearray(data.read_bytes())
    raw[-3] ^= 0xFF  # a bit flip in the map: the draws would silently change
    data.write_bytes(bytes(raw))

    source = EdgeSource(tmp_path)  # a new process: nothing verified yet
    with pytest.warns(GenesisWarning, match=f"{data}: damaged cache entry .*checksum mismatch"):
        prepare_source(source, progress=False, sampler=SAMPLER)
    # only the damaged map is rewritten, from the volume's cache entry (no volume rebuilt)
    assert source.cache.builds == 1 and source.computed == 0
    assert bytes(raw) != data.read_bytes()
    assert VolumeCache(tmp_path).get({"group": {"kind": "acceptance"}, "part": "x"}) is None  # absent stays absent
    np.testing.assert_array_equal(_cubes(source), direct)


def test_report_uses_stored_maps_without_passes_over_volumes(tmp_path: Path, monkeypatch) -> None:
    from genesis.training.pretrain import SubsetSource, report_acceptance

    source = EdgeSource(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenesisWarning)
        prepare_source(source, progress=False, sampler=SAMPLER)
    train = SubsetSource(source, [0, 1, 2])
    ds = CubeDataset(train, SAMPLER, cubes_per_epoch=4, seed=0, lru_volumes=1)

    def no_pass(*args, **kwargs):
        raise AssertionError("a full-volume pass although the maps are stored")

    monkeypatch.setattr(SubVolumeSampler, "_compute_acceptance", no_pass)
    report = report_acceptance(ds, train, verbose=False)
    assert report["volumes"] == 3 and report["without_acceptable_cube"] == 1  # all, not only lru_volumes
    assert report["max"] == pytest.approx(702 / 2925)
    ds[0], ds[1], ds[2]  # training cubes only memory-map the stored maps too
