"""The data a recipe names, made ready for training and evaluation (shared by both, below both).

A :class:`SubsetSource` is the training or validation side of the split by patient;
:func:`prepare_volumes` fills or verifies the volume cache (split among DDP ranks);
:func:`validation_cubes` cuts the fixed validation cubes; :func:`report_acceptance` says how
often the Models Genesis cube rule accepts a position.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.training.config import PretrainConfig
from genesis.training.ddp import DistInfo
from genesis.training.recipe import split_by_group


class SubsetSource:
    """Some volumes of a volume source (train/validation split by patient, never by cube)."""

    def __init__(self, source: Any, indices: list[int]) -> None:
        self.source = source
        self.indices = list(indices)
        self.is_synthetic = bool(getattr(source, "is_synthetic", False))
        self.memory_mapped = bool(getattr(source, "memory_mapped", False))

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> np.ndarray:
        return self.source.load(self.indices[i])

    def name(self, i: int) -> str:
        return self.source.name(self.indices[i])

    def load_acceptance(self, i: int, sampler: Any, reader: Any = None) -> Any:
        """The stored acceptance map of volume ``i`` (None when the source stores none); ``reader``
        as in :meth:`~genesis.data.sources._CachedLoading.load_acceptance`."""
        load = getattr(self.source, "load_acceptance", None)
        return load(self.indices[i], sampler, reader=reader) if load is not None else None


def split_volumes(n: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Split ``n`` volumes that are each their own patient (see :func:`~genesis.training.recipe.split_by_group`)."""
    return split_by_group([str(i) for i in range(n)], val_fraction)


def build_source(cfg: PretrainConfig) -> Any:
    """The volume source ``cfg.data`` describes, from the data kind that claims it."""
    from genesis.data.kinds import resolve_data
    from genesis.training.recipe import data_request

    return resolve_data(data_request(cfg)).source


def sampler_config(cfg: PretrainConfig, crop: tuple[int, ...] | None = None) -> Any:
    """How cubes are cut: the Models Genesis rule or uniform, at ``crop`` (default ``data.crop``)."""
    from genesis.data.sampler import SamplerConfig

    crop = tuple(int(c) for c in (crop if crop is not None else cfg.data.crop))
    return SamplerConfig.models_genesis(crop=crop) if cfg.data.models_genesis_sampler else SamplerConfig(crop=crop)


def prepare_volumes(source: Any, cfg: PretrainConfig, dist: DistInfo, workers: int | None = None,
                    crop: tuple[int, ...] | None = None) -> None:
    """Build or verify every cache entry before training; loader workers then only memory-map
    verified entries, and no whole volume is held in memory.

    Under DDP the ranks of a node split the entries (each verifies or builds its share, the
    file locks keep an entry from being built twice), wait for each other, and take over the
    rest unverified-by-them: a node reads its cache once, not once per rank. Per-volume sampler
    warnings (no cube position passes the Models Genesis rule) are summed up in one line.
    """
    import os

    from genesis.data.prepare import prepare_source
    from genesis.data.sampler import SubVolumeSampler
    from genesis.errors import GenesisWarning
    from genesis.training.ddp import barrier

    if getattr(source, "cache", None) is None:
        return
    n = len(source)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)) if dist.distributed else 1
    local_rank = dist.local_rank if dist.distributed else 0
    mine = [i for i in range(n) if i % local_world == local_rank]
    log = (lambda line: print(line, file=sys.stderr)) if dist.is_main else None
    if log is not None:
        log(f"volume cache: {source.cache.root}")
    sampler = SubVolumeSampler(sampler_config(cfg, crop)) if cfg.data.models_genesis_sampler else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GenesisWarning)
        prepare_source(source, workers=cfg.data.workers if workers is None else workers,
                       progress=cfg.log.progress and dist.is_main, order=mine, log=log, sampler=sampler)
    _summarise_warnings(caught, dist.is_main)
    if local_world > 1:
        barrier(dist)
        for i in range(n):
            if i % local_world != local_rank:
                source.adopt(i, source.entry_path(i))


def _summarise_warnings(caught: list[Any], verbose: bool) -> None:
    """Re-issue caught warnings, with the per-volume "no cube position passes" ones as one line."""
    rule = [w for w in caught if "no cube position passes" in str(w.message)]
    for w in caught:
        if w not in rule:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if rule and verbose:
        first = str(rule[0].message)
        tail = first.split("; ", 1)[1] if "; " in first else ""
        print(f"sampler: {len(rule)} volume(s) have no cube position that passes the Models Genesis rule"
              + (f" ({tail})" if tail else "") + f", e.g. {first.split(':', 1)[0]}", file=sys.stderr)


def validation_cubes(source: Any, cfg: PretrainConfig, n: int, crop: tuple[int, ...] | None = None) -> tuple[torch.Tensor, list[int]]:
    """``n`` fixed validation cubes (N, 1, D, H, W) from ``source`` and the source volume of each."""
    from genesis.data.datasets import CubeDataset

    ds = CubeDataset(source, sampler_config(cfg, crop), n, cfg.seed + 1_000_003)
    cubes = torch.stack([torch.as_tensor(ds[k]) for k in range(n)]).float()
    return cubes, [ds.volume_index(k) for k in range(n)]


def load_val_cubes(source: Any, cfg: PretrainConfig, n: int) -> torch.Tensor:
    """``n`` fixed validation cubes (N, 1, D, H, W) from the held-out volumes."""
    return validation_cubes(source, cfg, n)[0]


def build_model(name: str, kwargs: dict[str, Any], seed: int) -> nn.Module:
    """Create the network with weights initialised from ``seed`` (global RNG left untouched)."""
    from genesis.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return create_model(name, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {name!r} with {kwargs}: {exc}") from None


def report_acceptance(train_ds: Any, train_src: Any, verbose: bool) -> dict[str, Any]:
    """Acceptance rate of the Models Genesis cube rule on the training volumes.

    With the volume cache (default) it reads every training volume's stored acceptance map
    (built by :func:`prepare_volumes`: no pass over the volumes here). Without it, it computes
    the maps of the first ``lru_volumes`` volumes, which also fills the sampler's in-process
    LRU that forked DataLoader workers inherit. Printed to the run log (stderr) and stored in
    the checkpoints; empty when the sampler does not reject.
    """
    sampler = train_ds.sampler
    if not sampler.cfg.rejects:
        return {}
    stored = train_ds.acceptance(0) is not None
    n = len(train_src) if stored else min(len(train_src), train_ds.lru_volumes)
    rates = [(train_ds.acceptance(i) if stored else sampler.acceptance(train_ds.volume(i), train_src.name(i))).rate
             for i in range(n)]
    report = {"volumes": n, "mean": float(np.mean(rates)), "min": float(min(rates)), "max": float(max(rates)),
              "without_acceptable_cube": int(sum(r == 0 for r in rates))}
    if verbose:
        none = report["without_acceptable_cube"]
        tail = f"; {none} volume(s) without an acceptable cube (best of random positions used)" if none else ""
        print(f"sampler: the Models Genesis rule accepts {report['mean']:.1%} of cube positions on average "
              f"(min {report['min']:.1%}, max {report['max']:.1%}, {n} training volumes){tail}", file=sys.stderr)
    return report


