"""Cubes for pretraining: a map-style dataset deterministic in (seed, key), and its loader.

``CubeDataset[k]`` draws everything (which volume, where the cube is) from a numpy Generator seeded
with ``(seed, k)``, for any ``k >= 0``. Epoch ``e`` uses keys ``e * len(ds) + i``: the same epoch
gives the same cubes whatever the number of workers or processes, which is what exact resume and
DDP sharding need (:func:`epoch_keys`, :func:`make_loader`).

The volume is drawn uniformly per key, so consecutive keys rarely share a volume. With a cached
source (the default in ``genesis-pretrain``) ``source.load`` returns a read-only memory map of a
verified ``.npy``: a miss costs one ``np.load(mmap_mode="r")`` (tens of microseconds), a cube is a
slice of the map, and worker processes share the pages through the page cache. Each process keeps
an LRU of these maps (handles, not data). The sampler's acceptance map of each volume is
stored next to its entry (:meth:`~genesis.data.sources._CachedLoading.load_acceptance`) and
memory-mapped the same way, so a cube never needs a pass over its whole volume. Workers
receive keys, never arrays: the pickled dataset carries no volume.

Pages of a memory map that a cube touched stay mapped into the process, and count as its
(file-backed) RSS, until the map is closed: with every volume's map kept open, the RSS grew with
the data set (1,255 MB at 300 scans of 64x128x128 against 386 MB at 10, all of it ``RssFile``).
So each process keeps at most ``resident_mb`` of volumes mapped (:class:`_Residency`): the first
volumes it reads that fit stay memory maps (with their acceptance maps), and every other
volume and its acceptance map is read with ``pread`` (:class:`~genesis.data.pread.PreadArray`),
which maps nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from genesis.data.pread import PreadArray
from genesis.data.sampler import SamplerConfig, SubVolumeSampler
from genesis.data.sources import VolumeSource
from genesis.errors import ConfigError
from genesis.rng import numpy_generator

#: Stream tags mixed into the seed so the dataset and the shuffle never share random numbers.
_CUBE_STREAM, _SHUFFLE_STREAM = 0xC0BE, 0x5F1E

#: Most memory maps of volumes kept open per process (each holds two file descriptors: the
#: volume's and its acceptance map's). 4,096: 3,000 scans load cubes without re-opening maps.
MAX_MAPPED_VOLUMES = 4096

#: Default megabytes of volume data a process keeps mapped (see :class:`_Residency`): 10 scans
#: of 64x128x128 fit (so small data sets read every cube from a map), and the RSS of a run stays
#: within 20% of that of a 10-scan run, however many scans there are (``bench_data_pipeline --scans``).
DEFAULT_RESIDENT_MB = 64


def default_lru_volumes(memory_mapped: bool) -> int:
    """Volumes a :class:`CubeDataset` keeps loaded per process by default.

    In-memory volumes (no cache) are whole arrays: 8. Memory maps are handles, not data (their
    pages are bounded separately, see :class:`_Residency`), but each volume holds two file
    descriptors (volume, acceptance map): keep as many as use half of this process's descriptor
    limit, at most :data:`MAX_MAPPED_VOLUMES`. With every volume's map kept open, 200 volumes
    load cubes as fast as 10 (``bench_acceptance_scale``); with 32 kept (an earlier default)
    nearly every cube re-opened two maps (x0.48).
    """
    if not memory_mapped:
        return 8
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no POSIX limits (Windows): stay modest
        return 32
    if soft == resource.RLIM_INFINITY:
        return MAX_MAPPED_VOLUMES
    return int(min(MAX_MAPPED_VOLUMES, max(8, soft // 4)))


class _Residency:
    """Which cached volumes this process keeps memory-mapped: the first ones read that fit in
    ``budget`` bytes, with their acceptance maps (about 2% more).

    Every other volume, and its acceptance map, is read with ``pread`` (:class:`PreadArray`: the
    same bytes, no page mapped). Volumes are drawn uniformly, so an LRU of maps would hit no more
    often, and it paid for each miss by mapping the cube's pages in and giving them back, which
    costs more than ``pread`` (see :mod:`genesis.data.pread`). Without ``os.preadv`` (Windows)
    every volume stays a map.
    """

    def __init__(self, budget: int) -> None:
        self.budget = int(budget)
        self.mapped_bytes = 0
        self._mapped: set[int] = set()
        self._read: set[int] = set()

    def volume(self, index: int, array: np.ndarray) -> Any:
        """``array`` (volume ``index`` as the source loaded it) or, beyond the budget, the same
        data read with ``pread``."""
        if index in self._mapped or not isinstance(array, np.memmap):
            return array
        if index not in self._read and self.mapped_bytes + array.nbytes <= self.budget:
            self._mapped.add(index)
            self.mapped_bytes += array.nbytes
            return array
        read = PreadArray.of_memmap(array)
        if read is None:
            return array
        self._read.add(index)
        return read

    def reads(self, index: int) -> bool:
        """Whether volume ``index`` (and its acceptance map) is read with ``pread``."""
        return index in self._read

    def stats(self) -> dict:
        """Volumes kept mapped (count, MB) and volumes read with ``pread``."""
        return {"mapped_volumes": len(self._mapped), "mapped_mb": self.mapped_bytes / 2**20,
                "read_volumes": len(self._read)}


class CubeDataset(Dataset):
    """Map-style dataset of cubes (1, D, H, W) float32 in [0, 1].

    Args:
        source: where the volumes come from.
        sampler_cfg: crop size and rejection rule (default :class:`SamplerConfig`).
        cubes_per_epoch: ``len(ds)``; keys of epoch e are ``e * len(ds) .. (e + 1) * len(ds) - 1``.
        seed: base seed; ``ds[k]`` depends only on (source, sampler_cfg, seed, k).
        lru_volumes: loaded volumes (memory maps with a cached source) kept per worker process.
        resident_mb: megabytes of cached volumes kept mapped per process; cubes of the others
            are read with ``pread`` (see :class:`_Residency`; None: every volume stays mapped).
            Cubes do not depend on it.
    """

    def __init__(
        self,
        source: VolumeSource,
        sampler_cfg: SamplerConfig | None = None,
        cubes_per_epoch: int = 1024,
        seed: int = 0,
        lru_volumes: int = 8,
        resident_mb: float | None = DEFAULT_RESIDENT_MB,
    ) -> None:
        if cubes_per_epoch < 1:
            raise ConfigError(f"cubes_per_epoch must be >= 1, got {cubes_per_epoch}")
        self.source = source
        self.sampler = SubVolumeSampler(sampler_cfg)
        self.cubes_per_epoch = int(cubes_per_epoch)
        self.seed = int(seed)
        self.lru_volumes = max(1, int(lru_volumes))
        if resident_mb is not None and resident_mb < 0:
            raise ConfigError(f"resident_mb must be >= 0 or None, got {resident_mb}")
        self.resident_mb = resident_mb
        self._lru: OrderedDict[int, np.ndarray] = OrderedDict()
        self._acceptance_lru: OrderedDict[int, Any] = OrderedDict()
        self._resident = _Residency(int(resident_mb * 2**20)) if resident_mb is not None else None

    def __getstate__(self) -> dict:
        # Worker processes started with "spawn" get a pickled copy: send no loaded volumes.
        state = self.__dict__.copy()
        state["_lru"] = OrderedDict()
        state["_acceptance_lru"] = OrderedDict()
        state["_resident"] = _Residency(self._resident.budget) if self._resident is not None else None
        return state

    @property
    def is_synthetic(self) -> bool:
        return bool(getattr(self.source, "is_synthetic", False))

    @property
    def memory_mapped(self) -> bool:
        """Whether the source's volumes are memory maps (a cache): any process can copy a cube cheaply."""
        return bool(getattr(self.source, "memory_mapped", False))

    def __len__(self) -> int:
        return self.cubes_per_epoch

    def volume(self, index: int) -> Any:
        """Volume ``index`` of the source, through the per-process LRU: an array, a memory map,
        or beyond ``resident_mb`` a :class:`PreadArray` (sliced like an array)."""
        if index in self._lru:
            self._lru.move_to_end(index)
            return self._lru[index]
        array = self.source.load(index)
        if self._resident is not None:
            array = self._resident.volume(index, array)
        self._lru[index] = array
        while len(self._lru) > self.lru_volumes:
            self._lru.popitem(last=False)
        return array

    def acceptance(self, index: int) -> Any:
        """The stored acceptance map of volume ``index`` (memory maps, through a per-process LRU
        of ``lru_volumes`` handles), or None when the source stores none (no cache, no rejection
        rule): the sampler then computes it in process and keeps its own LRU."""
        load = getattr(self.source, "load_acceptance", None)
        if load is None or not self.sampler.cfg.rejects:
            return None
        if index in self._acceptance_lru:
            self._acceptance_lru.move_to_end(index)
            return self._acceptance_lru[index]
        if self._resident is not None:
            self.volume(index)  # decides whether this volume stays mapped
            acc = load(index, self.sampler, reader=PreadArray if self._resident.reads(index) else None)
        else:
            acc = load(index, self.sampler)
        if acc is not None:
            self._acceptance_lru[index] = acc
            while len(self._acceptance_lru) > self.lru_volumes:
                self._acceptance_lru.popitem(last=False)
        return acc

    def open_all(self) -> None:
        """Open every volume (and its stored acceptance map) now, as a run's first epoch does;
        with as many volumes kept as there are, later cubes never re-open a map."""
        for i in range(len(self.source)):
            self.volume(i)
            self.acceptance(i)

    def volume_index(self, key: int) -> int:
        """Which source volume key ``key`` samples from."""
        return self._volume_of(key)[1]

    def _rng(self, key: int) -> np.random.Generator:
        return numpy_generator(_CUBE_STREAM, self.seed, key)

    def _volume_of(self, key: int) -> tuple[np.random.Generator, int]:
        """Key ``key``'s generator, after it drew the volume, and that volume's index."""
        key = int(key)
        if key < 0:
            raise IndexError(f"CubeDataset keys are >= 0, got {key}")
        rng = self._rng(key)
        return rng, int(rng.integers(len(self.source)))

    def locate(self, key: int) -> tuple[int, np.ndarray]:
        """Where cube ``key`` is: its volume and the (3,) corner of the cube in it (see
        :meth:`SubVolumeSampler.positions`); ``self[key]`` is the cube there."""
        rng, index = self._volume_of(key)
        volume, acceptance = self.volume(index), self.acceptance(index)
        corners = self.sampler.positions(volume, 1, rng, name=self.source.name(index), acceptance=acceptance)
        return index, corners[0]

    def cubes_at(self, where: np.ndarray, pin_memory: bool = False) -> torch.Tensor:
        """(B, 1, D, H, W) float32 cubes at ``where`` (B, 4): volume index and corner, from :meth:`locate`.

        ``pin_memory``: copy them straight into page-locked memory (for fast copies to a GPU).
        """
        where = np.asarray(where, dtype=np.int64).reshape(-1, 4)
        batch = torch.empty((len(where), 1, *self.sampler.cfg.crop), dtype=torch.float32, pin_memory=pin_memory)
        out = batch.numpy()
        for i, (index, *corner) in enumerate(where.tolist()):
            volume = self.volume(index)
            self.sampler.crop_at(volume, np.asarray([corner]), self.source.name(index), out=out[i])
        return batch

    def __getitem__(self, key: int) -> torch.Tensor:
        rng, index = self._volume_of(key)
        volume, acceptance = self.volume(index), self.acceptance(index)
        cube = self.sampler.sample(volume, 1, rng, name=self.source.name(index), acceptance=acceptance)
        return torch.from_numpy(cube)  # (1, D, H, W); the same as cubes_at(locate(key))


def epoch_keys(
    n: int,
    epoch: int,
    shuffle_seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = True,
    shuffle: bool = True,
) -> list[int]:
    """Keys of ``epoch`` for process ``rank`` of ``world_size``.

    The ``n`` keys ``epoch * n + i`` are permuted with a generator seeded by (shuffle_seed, epoch),
    then dealt round-robin to ranks. With ``drop_last`` the tail that does not divide evenly is
    dropped; otherwise the list is padded by wrapping around (like ``DistributedSampler``), so every
    rank gets the same number of keys.

    Raises:
        ConfigError: bad rank/world_size/epoch.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    if epoch < 0 or n < 1:
        raise ConfigError(f"need epoch >= 0 and n >= 1, got epoch={epoch}, n={n}")
    order = np.arange(n, dtype=np.int64)
    if shuffle:
        order = numpy_generator(_SHUFFLE_STREAM, shuffle_seed, epoch).permutation(n)
    keys = epoch * n + order
    if drop_last:
        keys = keys[: (n // world_size) * world_size]
    elif n % world_size:
        keys = np.concatenate([keys, keys[: world_size - n % world_size]])
    return [int(k) for k in keys[rank::world_size]]


class KeySampler(Sampler[int]):
    """Yields a fixed list of dataset keys (one epoch's share of one rank)."""

    def __init__(self, keys: Sequence[int]) -> None:
        self.keys = list(keys)

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def collate_cubes(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack (1, D, H, W) items into (B, 1, D, H, W) with numpy.

    ``torch.stack`` (the default collate) runs on torch's intra-op thread pool, which on small,
    busy machines was measured 30x slower than one ``np.stack`` (4 MB batch: 148 ms vs 5 ms).
    """
    return torch.from_numpy(np.stack([item.numpy() for item in items]))


def make_loader(
    ds: CubeDataset,
    batch_size: int,
    epoch: int,
    workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle_seed: int = 0,
    drop_last: bool = True,
    pin_memory: bool = False,
    multiprocessing_context: str | None = None,
) -> DataLoader:
    """A DataLoader over the keys of ``epoch`` for ``rank`` (see :func:`epoch_keys`).

    Batches are (B, 1, D, H, W) float32. Results do not depend on ``workers``: every item is a
    pure function of its key. Workers are not persistent; build one loader per epoch. With
    workers and a memory-mapped source, workers draw the cubes' positions and this process copies
    the cubes (an iterable of batches, not a ``DataLoader``, is returned then).

    Args:
        ds: the dataset.
        batch_size: items per batch.
        epoch: epoch number (>= 0).
        workers: DataLoader worker processes (0: load in this process).
        rank / world_size: this process's share in distributed training.
        shuffle_seed: seed of the per-epoch key permutation.
        drop_last: drop the incomplete last batch (and the keys that do not split evenly by rank).
        pin_memory: pin batches (useful with CUDA).
        multiprocessing_context: e.g. "spawn" or "forkserver" (None: the platform default).
    Returns:
        A ``torch.utils.data.DataLoader``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    keys = epoch_keys(len(ds), epoch, shuffle_seed, rank, world_size, drop_last)
    # With memory-mapped volumes, workers only decide where each cube is (the sampler's draws)
    # and send 4 integers; this process copies the cubes from the shared maps. Sending the cubes
    # themselves through shared memory cost more than copying them: 1,319-1,394 against 657-764
    # cubes/s with 1-2 workers, 32x64x64 cubes (``benchmarks/bench_loader_workers.py``).
    copy_here = workers > 0 and getattr(ds, "memory_mapped", False)
    loader = DataLoader(
        _CubeCorners(ds) if copy_here else ds,
        batch_size=batch_size,
        sampler=KeySampler(keys),
        num_workers=int(workers),
        drop_last=drop_last,
        pin_memory=pin_memory and not copy_here,
        persistent_workers=False,
        collate_fn=None if copy_here else collate_cubes,
        multiprocessing_context=multiprocessing_context if workers > 0 else None,
    )
    return _CopyingLoader(loader, ds, pin_memory) if copy_here else loader


class _CubeCorners(Dataset):
    """Where the cubes of a :class:`CubeDataset` are, (4,) int64: volume index and corner."""

    def __init__(self, ds: CubeDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: int) -> torch.Tensor:
        index, corner = self.ds.locate(key)
        return torch.tensor([index, *corner.tolist()], dtype=torch.int64)


class _CopyingLoader:
    """Batches of cubes copied in this process from the positions that ``loader``'s workers drew."""

    def __init__(self, loader: DataLoader, ds: CubeDataset, pin_memory: bool) -> None:
        self.loader, self.dataset, self.pin_memory = loader, ds, pin_memory

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for where in self.loader:
            yield self.dataset.cubes_at(where.numpy(), self.pin_memory)
