"""CubeDataset determinism in (seed, key), worker processes, epoch keys and DDP sharding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genesis.data.datasets import CubeDataset, epoch_keys, make_loader
from genesis.data.sampler import SamplerConfig
from genesis.errors import ConfigError


class ArraySource:
    """In-memory source of random [0, 1] volumes that counts its loads."""

    is_synthetic = False

    def __init__(self, n: int = 3) -> None:
        rng = np.random.default_rng(0)
        self.arrays = [rng.random((12 + i, 20, 22), dtype=np.float32) for i in range(n)]
        self.loads = 0

    def __len__(self) -> int:
        return len(self.arrays)

    def load(self, i: int) -> np.ndarray:
        self.loads += 1
        return self.arrays[i]

    def name(self, i: int) -> str:
        return f"array{i}"


CFG = SamplerConfig(crop=(4, 8, 8), reject_threshold=0.5, max_fraction_above=0.6, max_tries=5)


def _ds(seed=0, n=16, **kw) -> CubeDataset:
    return CubeDataset(ArraySource(), CFG, cubes_per_epoch=n, seed=seed, **kw)


def test_items_deterministic_in_seed_and_key() -> None:
    a, b = _ds(), _ds()
    for key in [0, 5, 16, 17, 123_456_789_012]:
        item = a[key]
        assert item.shape == (1, 4, 8, 8) and item.dtype == torch.float32
        torch.testing.assert_close(item, b[key], rtol=0, atol=0)
    # order of access does not matter, other keys and seeds differ
    torch.testing.assert_close(b[5], a[5], rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], _ds(seed=1)[0])
    with pytest.raises(IndexError):
        a[-1]


def test_keys_spread_over_volumes_and_lru_bounds_loads() -> None:
    ds = _ds(lru_volumes=3)
    assert {ds.volume_index(k) for k in range(30)} == {0, 1, 2}
    for k in range(30):
        ds[k]
    assert ds.source.loads == 3  # every volume loaded once, then served from the LRU
    small = _ds(lru_volumes=1)
    for k in range(30):
        small[k]
    assert small.source.loads > 3


def test_epoch_keys_partition_and_shuffle() -> None:
    keys = epoch_keys(10, epoch=2, shuffle_seed=1)
    assert sorted(keys) == list(range(20, 30)) and keys != sorted(keys)
    assert keys == epoch_keys(10, epoch=2, shuffle_seed=1)
    assert keys != epoch_keys(10, epoch=2, shuffle_seed=2)
    assert epoch_keys(10, 0, shuffle=False) == list(range(10))

    shards = [epoch_keys(10, 2, 1, rank=r, world_size=3, drop_last=True) for r in range(3)]
    assert all(len(s) == 3 for s in shards)
    flat = [k for s in shards for k in s]
    assert len(set(flat)) == 9 and set(flat) <= set(keys)  # disjoint, one key dropped

    padded = [epoch_keys(10, 2, 1, rank=r, world_size=3, drop_last=False) for r in range(3)]
    assert all(len(s) == 4 for s in padded)
    assert set(k for s in padded for k in s) == set(keys)  # every key served
    with pytest.raises(ConfigError):
        epoch_keys(10, 0, rank=3, world_size=3)


def _batches(loader) -> list[torch.Tensor]:
    return [batch.clone() for batch in loader]


def test_loader_shapes_epochs_and_workers_agree() -> None:
    ds = _ds(n=12)
    serial = _batches(make_loader(ds, batch_size=4, epoch=1, workers=0, shuffle_seed=3))
    assert [b.shape for b in serial] == [torch.Size([4, 1, 4, 8, 8])] * 3
    expected = torch.stack([ds[k] for k in epoch_keys(12, 1, 3)])
    torch.testing.assert_close(torch.cat(serial), expected, rtol=0, atol=0)
    parallel = _batches(make_loader(_ds(n=12), batch_size=4, epoch=1, workers=2, shuffle_seed=3))
    for s, p in zip(serial, parallel, strict=True):
        torch.testing.assert_close(s, p, rtol=0, atol=0)
    other_epoch = _batches(make_loader(ds, batch_size=4, epoch=2, workers=0, shuffle_seed=3))
    assert not torch.equal(torch.cat(serial), torch.cat(other_epoch))


def test_sharded_loaders_cover_the_epoch_once() -> None:
    ds = _ds(n=12)
    shards = [torch.cat(_batches(make_loader(ds, 2, epoch=0, rank=r, world_size=2))) for r in range(2)]
    whole = torch.cat(_batches(make_loader(ds, 2, epoch=0)))
    assert sum(len(s) for s in shards) == len(whole) == 12
    as_set = lambda t: {x.numpy().tobytes() for x in t}  # noqa: E731
    assert as_set(shards[0]) | as_set(shards[1]) == as_set(whole)
    assert not as_set(shards[0]) & as_set(shards[1])


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        CubeDataset(ArraySource(), CFG, cubes_per_epoch=0)
    with pytest.raises(ConfigError):
        make_loader(_ds(), batch_size=0, epoch=0)


def test_real_nifti_end_to_end(test_data, tmp_path) -> None:
    from genesis.data.preprocess import PreprocessConfig
    from genesis.data.sources import volume_source_from_arg

    source = volume_source_from_arg(test_data / "totalsegmentator", PreprocessConfig(), cache_dir=tmp_path)
    ds = CubeDataset(source, SamplerConfig.models_genesis(crop=(16, 32, 32)), cubes_per_epoch=4, seed=0)
    batch = next(iter(make_loader(ds, batch_size=4, epoch=0)))
    assert batch.shape == (4, 1, 16, 32, 32) and 0 <= batch.min() and batch.max() <= 1


def test_pickled_dataset_drops_loaded_volumes_and_matches() -> None:
    import pickle

    ds = _ds()
    expected = ds[3]
    assert len(ds._lru) == 1
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone._lru) == 0
    torch.testing.assert_close(clone[3], expected, rtol=0, atol=0)


# ---- the memory-mapped path ---------------------------------------------------------------------
def _nifti_files(tmp_path, n=3):
    from genesis.io import Volume, save_volume

    rng = np.random.default_rng(5)
    return [save_volume(Volume(rng.uniform(-1000, 1000, (14 + i, 20, 22)).astype(np.float32), (1.0, 1.0, 1.0)),
                        tmp_path / f"v{i}.nii.gz") for i in range(n)]


def test_memmap_source_matches_in_memory_loading(tmp_path) -> None:
    import pickle

    from genesis.data.prepare import prepare_source
    from genesis.data.sources import FileVolumeSource

    files = _nifti_files(tmp_path)
    in_memory = CubeDataset(FileVolumeSource(files), CFG, cubes_per_epoch=24, seed=3)
    source = FileVolumeSource(files, cache_dir=tmp_path / "cache")
    prepare_source(source, progress=False)
    mapped = CubeDataset(source, CFG, cubes_per_epoch=24, seed=3)
    for i in range(len(files)):
        volume = mapped.volume(i)
        assert isinstance(volume, np.memmap) and not volume.flags.writeable
        np.testing.assert_array_equal(volume, in_memory.volume(i))
    for key in range(0, 60, 7):  # the same cubes for the same keys
        torch.testing.assert_close(mapped[key], in_memory[key], rtol=0, atol=0)
    # what a worker receives: keys and entry paths, no array (a few kB at most)
    assert len(pickle.dumps(mapped)) < 5000


def test_memmap_loader_workers_give_identical_batches(tmp_path) -> None:
    from genesis.data.prepare import prepare_source
    from genesis.data.sources import FileVolumeSource

    source = FileVolumeSource(_nifti_files(tmp_path), cache_dir=tmp_path / "cache")
    prepare_source(source, progress=False)
    ds = CubeDataset(source, CFG, cubes_per_epoch=16, seed=1)
    plain = [b for b in make_loader(ds, 4, epoch=1, workers=0)]
    loader = make_loader(ds, 4, epoch=1, workers=2)
    # memory-mapped volumes: workers send where the cubes are (4 integers each), not the cubes
    assert not isinstance(loader, torch.utils.data.DataLoader) and len(loader) == 4
    assert loader.loader.dataset[5].shape == (4,) and loader.loader.dataset[5].dtype == torch.int64
    forked = [b for b in loader]
    assert len(plain) == len(forked) == 4
    for a, b in zip(plain, forked):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ds.open_all()  # every volume's map, kept (lru_volumes is larger than the source)
    assert sorted(ds._lru) == list(range(len(source)))
    for key in (0, 9, 31):  # a cube is the one at the position located for its key
        index, corner = ds.locate(key)
        torch.testing.assert_close(ds.cubes_at(np.asarray([[index, *corner]]))[0], ds[key], rtol=0, atol=0)
    mg = CubeDataset(source, SamplerConfig.models_genesis(crop=(8, 12, 12)), cubes_per_epoch=8, seed=2)  # the MG rule
    pairs = zip(make_loader(mg, 4, 0, workers=0), make_loader(mg, 4, 0, workers=1))
    assert [torch.equal(a, b) for a, b in pairs] == [True, True]
    # beyond resident_mb, volumes and acceptance maps are read with pread, in workers and here
    read = CubeDataset(source, SamplerConfig.models_genesis(crop=(8, 12, 12)), cubes_per_epoch=8, seed=2,
                       resident_mb=0)
    for workers in (0, 2):
        pairs = zip(make_loader(mg, 4, 0, workers=0), make_loader(read, 4, 0, workers=workers))
        assert [torch.equal(a, b) for a, b in pairs] == [True, True]
    assert read._resident.stats()["read_volumes"] == len(source) and read._resident.stats()["mapped_volumes"] == 0


def test_default_lru_keeps_many_memory_maps_within_the_descriptor_limit(monkeypatch) -> None:
    import resource

    from genesis.data.datasets import MAX_MAPPED_VOLUMES, default_lru_volumes

    assert default_lru_volumes(memory_mapped=False) == 8  # whole volumes in memory: few
    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    assert default_lru_volumes(memory_mapped=True) == 256  # two descriptors a volume, half of 1024
    monkeypatch.setattr(resource, "getrlimit", lambda _: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert default_lru_volumes(memory_mapped=True) == MAX_MAPPED_VOLUMES
    monkeypatch.setattr(resource, "getrlimit", lambda _: (20, 20))
    assert default_lru_volumes(memory_mapped=True) == 8


def test_open_file_limit_is_raised_towards_the_hard_limit() -> None:
    import resource

    from genesis.cli._preflight import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))  # lowering is always allowed
        raise_open_file_limit(target=300)
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert now == (300 if hard == resource.RLIM_INFINITY else min(hard, 300))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _rss_file_kb() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("RssFile:"))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="needs Linux /proc")
@pytest.mark.parametrize("models_genesis", [False, True], ids=["uniform", "stored-acceptance"])
def test_mapped_pages_stay_under_resident_mb_and_cubes_do_not_change(tmp_path, models_genesis) -> None:
    from genesis.data.pread import AVAILABLE, PreadArray
    from genesis.data.sources import FileVolumeSource
    from genesis.io import Volume, save_volume

    if not AVAILABLE:
        pytest.skip("no os.preadv on this platform")
    rng = np.random.default_rng(0)
    files = [save_volume(Volume(rng.uniform(-1000, 500, (16, 128, 128)).astype(np.float32), (1.0, 1.0, 1.0)),
                         tmp_path / f"v{i}.nii") for i in range(12)]
    source = FileVolumeSource(files, cache_dir=tmp_path / "cache")  # 1 MB entries
    for i in range(len(files)):
        source.prepare(i)
    # uniform: a cube is its whole volume, every page is read; Models Genesis: cubes drawn from
    # the stored acceptance maps, which are read like their volumes
    cfg = (SamplerConfig.models_genesis(crop=(8, 64, 64), margin=(0, 0, 0)) if models_genesis
           else SamplerConfig(crop=(16, 128, 128)))

    def growth(resident_mb):
        ds = CubeDataset(source, cfg, cubes_per_epoch=48, seed=0, lru_volumes=64, resident_mb=resident_mb)
        ds.open_all()
        before = _rss_file_kb()
        cubes = torch.cat([batch for batch in make_loader(ds, 8, epoch=0)])
        return _rss_file_kb() - before, cubes, ds

    growth(2)  # warm-up: whatever the loader maps in once (libraries, modules) is not counted
    bounded_kb, bounded, ds = growth(2)
    unbounded_kb, unbounded, _ = growth(None)
    torch.testing.assert_close(bounded, unbounded, rtol=0, atol=0)
    stats = ds._resident.stats()
    assert stats["mapped_volumes"] == 2 and stats["mapped_mb"] <= 2 and stats["read_volumes"] == 10
    assert sum(isinstance(ds.volume(i), PreadArray) for i in range(len(files))) == 10
    if models_genesis:
        read = [i for i in range(len(files)) if ds._resident.reads(i)]
        assert all(isinstance(a, PreadArray) for i in read for a in (ds.acceptance(i).packed, ds.acceptance(i).flat,
                                                                       ds.acceptance(i).score) if a is not None)
    else:
        assert unbounded_kb > 8 * 1024  # without the bound every volume's pages stay mapped
    assert bounded_kb < 4 * 1024
