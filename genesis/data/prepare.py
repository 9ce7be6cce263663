"""Preprocess a whole volume source into its cache once, in parallel, resumably.

``genesis-pretrain --prepare-only`` and the start of every cached pretraining run call
:func:`prepare_source`: each volume's cache entry (and, given the sampler, its acceptance map)
is built when missing or damaged and verified when present, in a pool of processes.
Interrupting it loses at most the entries in flight (entries are written atomically); running
it again skips every entry that is already valid.
The source then knows each entry's file, so training only memory-maps them.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from genesis.errors import ConfigError

#: The source (and sampler) a pool process works on (set once per process by the pool
#: initializer, so they are pickled once per process, not once per volume).
_POOL_SOURCE: Any = None
_POOL_SAMPLER: Any = None


@dataclass
class PrepareReport:
    """What :func:`prepare_source` did.

    Attributes:
        volumes: volumes in the source.
        built: entries computed in this call (missing or damaged before).
        seconds: wall time.
        cache_dir: the cache folder.
    """

    volumes: int
    built: int
    seconds: float
    cache_dir: str

    @property
    def valid(self) -> int:
        """Entries that were already valid (only verified)."""
        return self.volumes - self.built


def _init_pool(source: Any, sampler: Any = None) -> None:
    global _POOL_SOURCE, _POOL_SAMPLER
    _POOL_SOURCE, _POOL_SAMPLER = source, sampler
    try:
        import torch

        torch.set_num_threads(1)  # one process per core: no oversubscription
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _prepare_one(i: int) -> tuple[int, str, bool, Any, Any]:
    return _prepare_in(_POOL_SOURCE, i, _POOL_SAMPLER)


def _prepare_in(source: Any, i: int, sampler: Any = None) -> tuple[int, str, bool, Any, Any]:
    builds = source.cache.builds
    entry = source.prepare(i)
    built = source.cache.builds > builds
    # the sampler's acceptance map, stored next to the entry (read back as memory maps)
    stored = None
    if sampler is not None and hasattr(source, "prepare_acceptance"):
        stored = source.prepare_acceptance(i, sampler)
    return i, entry, built, getattr(source, "_layouts", {}).get(i), stored


def prepare_source(
    source: Any,
    workers: int = 0,
    progress: bool = True,
    order: Sequence[int] | None = None,
    log: Callable[[str], None] | None = None,
    sampler: Any = None,
) -> PrepareReport:
    """Build or verify the cache entry of every volume of ``source``.

    Args:
        source: a cached :class:`~genesis.data.sources.FileVolumeSource` or
            :class:`~genesis.data.sources.SyntheticVolumeSource`.
        workers: pool processes (0 or 1: in this process).
        progress: show a progress bar (tqdm) on stderr.
        order: the volume indices in the order to visit (default 0..n-1); DDP ranks start at
            different offsets, so they build different entries while the file locks keep any
            entry from being built twice.
        log: called with a one-line summary.
        sampler: a :class:`~genesis.data.sampler.SubVolumeSampler` (or its ``SamplerConfig``):
            with a rejection rule, each volume's acceptance map for it is also built (or
            verified) and stored in the cache, so that training memory-maps it.
    Returns:
        A :class:`PrepareReport`.
    Raises:
        ConfigError: the source has no cache.
        GenesisError: a volume cannot be read (the message names its file).
    """
    cache = getattr(source, "cache", None)
    if cache is None:
        raise ConfigError("this volume source has no cache to prepare (caching was turned off)")
    indices = list(range(len(source))) if order is None else [int(i) for i in order]
    if sampler is not None and not hasattr(sampler, "acceptance_settings"):
        from genesis.data.sampler import SubVolumeSampler

        sampler = SubVolumeSampler(sampler)
    if sampler is not None and not sampler.cfg.rejects:
        sampler = None
    start = time.perf_counter()
    bar = _bar(len(indices), progress, str(cache.root))
    built = 0
    try:
        if workers <= 1 or len(indices) <= 1:
            for i in indices:
                _, entry, was_built, _, _ = _prepare_in(source, i, sampler)
                built += was_built
                bar.update(1)
        else:
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with ProcessPoolExecutor(min(workers, len(indices)), mp_context=context, initializer=_init_pool,
                                     initargs=(source, sampler)) as pool:
                for i, entry, was_built, layout, stored in pool.map(_prepare_one, indices, chunksize=1):
                    source.adopt(i, entry, layout)  # verified by the pool process
                    if stored is not None:
                        source.adopt_acceptance(i, stored)
                    built += was_built
                    bar.update(1)
    finally:
        bar.close()
    report = PrepareReport(len(indices), built, time.perf_counter() - start, str(cache.root))
    if log is not None:
        log(f"volume cache {report.cache_dir}: {report.volumes} volumes ready ({report.built} built, "
            f"{report.valid} already valid) in {report.seconds:.1f} s")
    return report


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool, where: str) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return _NoBar()
    return tqdm(total=total, desc=f"preparing volumes in {where}", unit="vol", dynamic_ncols=True, mininterval=0.5)
