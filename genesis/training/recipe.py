"""The recipe: the effective configuration and the data, resolved once into what a run trains.

:func:`resolve_recipe` turns a :class:`~genesis.training.config.PretrainConfig` into a frozen
:class:`Recipe` (data kind, dims, crop, method, network and its arguments, loss, optimiser, steps,
precision, the split by patient) before anything trains. It runs the registries in one order:

1. the network's own pretraining hook may fix the crop (nnU-Net: the plans' patch size);
2. the data kind that claims ``--data`` (:mod:`genesis.data.kinds`) resolves dims, crop, sampling
   and normalisation, and builds the volume source;
3. the method of ``--task`` (:mod:`genesis.methods`) resolves its network and loss;
4. the scans are split by patient (:mod:`genesis.data.groups`); steps and the optimiser follow.

Nothing downstream reshapes the configuration: the run's ``config.yaml`` is
:attr:`ResolvedRun.config` and its checkpoints record :meth:`Recipe.to_dict`. Resuming compares
the recipe of the run with the one resolved now (:func:`recipe_differences`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import torch

from genesis.config import config_to_dict
from genesis.data.kinds import DataPlan, DataRequest, resolve_data
from genesis.errors import ConfigError
from genesis.methods import Method, NetworkRequest, NetworkSpec, Parts, needs_radiograph_metadata, resolve_method
from genesis.training.config import PretrainConfig, resolve_optim
from genesis.training.rundir import plain

#: Recipe format (recorded in checkpoints).
RECIPE_FORMAT = 1


@dataclass(frozen=True)
class Recipe:
    """Everything a pretraining run trains with, resolved (see the module docstring)."""

    task: str
    method: Mapping[str, Any]
    family: str
    data: DataPlan
    dims: int
    crop: tuple[int, int, int]
    sample_crop: tuple[int, int, int]
    model_name: str
    model_kwargs: Mapping[str, Any]
    parts: Parts
    loss: str
    optim: Mapping[str, Any]
    batch_size: int
    steps_per_epoch: int
    precision: str
    monitor_key: str
    split: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (YAML/JSON/``torch.load(weights_only=True)`` safe)."""
        return {
            "format": RECIPE_FORMAT, "task": self.task, "method": dict(self.method), "family": self.family,
            "data": self.data.to_dict(), "dims": self.dims, "crop": list(self.crop),
            "sample_crop": list(self.sample_crop), "model_name": self.model_name,
            "model_kwargs": config_to_dict(dict(self.model_kwargs)), "parts": self.parts.to_dict(), "loss": self.loss,
            "optim": dict(self.optim), "batch_size": self.batch_size, "steps_per_epoch": self.steps_per_epoch,
            "precision": self.precision, "monitor_key": self.monitor_key, "split": dict(self.split),
        }


@dataclass
class ResolvedRun:
    """A resolved recipe and what it was resolved from (live objects, not recorded)."""

    recipe: Recipe
    config: PretrainConfig  # the effective configuration (config.yaml)
    method: Method
    source: Any
    train_idx: list[int]
    val_idx: list[int]
    groups: list[str]
    notes: tuple[str, ...] = ()

    @property
    def synthetic(self) -> bool:
        return bool(self.recipe.data.synthetic or getattr(self.source, "is_synthetic", False))


def network_crop_hook(cfg: PretrainConfig) -> tuple[int, int, int] | None:
    """The crop a network with a pretraining hook fixes (nnU-Net: patch size), else None."""
    from genesis.models.base import MODELS

    if cfg.model == "auto" or cfg.model not in MODELS:
        return None
    hook = getattr(MODELS.get(cfg.model), "pretraining_crop", None)
    if hook is None:
        return None
    defaults = PretrainConfig()
    return tuple(hook(tuple(cfg.data.crop), tuple(defaults.data.crop), cfg.width, defaults.width,  # type: ignore[return-value]
                      cfg.plans, cfg.configuration))


def data_request(cfg: PretrainConfig) -> DataRequest:
    """What the data kinds see of ``cfg`` (after the network's crop hook)."""
    data = cfg.data
    crop = network_crop_hook(cfg)
    if crop is not None:
        data = replace(data, crop=crop)
    return DataRequest(data=data, dims=cfg.dims, seed=cfg.seed, plans=cfg.plans, configuration=cfg.configuration,
                       with_metadata=needs_radiograph_metadata(cfg.task), method=cfg.task)


def split_by_group(groups: list[str], val_fraction: float) -> tuple[list[int], list[int]]:
    """Train/validation indices with whole groups (patients) on each side.

    The last ``round(G * val_fraction)`` groups in order of first appearance are held out (at
    least one when there are two or more); with a single group both splits use every volume
    (validation cubes then come from other positions, and the run log says so).
    """
    order = list(dict.fromkeys(groups))
    n = len(order)
    if n < 2 or val_fraction <= 0:
        every = list(range(len(groups)))
        return every, every
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    held = set(order[n - n_val:])
    train = [i for i, g in enumerate(groups) if g not in held]
    val = [i for i, g in enumerate(groups) if g in held]
    return train, val


def effective_steps(cfg: PretrainConfig, n_train_volumes: int, world_size: int) -> int:
    """Optimizer steps per epoch: ``steps_per_epoch``, else ``cubes_per_volume`` x scans / global batch."""
    if cfg.steps_per_epoch is not None:
        return int(cfg.steps_per_epoch)
    return max(1, math.ceil(n_train_volumes * cfg.data.cubes_per_volume / (cfg.batch_size * world_size)))


def check_network_dims(spec: NetworkSpec, dims: int, cfg: PretrainConfig) -> None:
    """A network built for other spatial dims than the pairs is a :class:`ConfigError`."""
    from genesis.models import create_model

    try:
        with torch.device("meta"):
            net = create_model(spec.name, **dict(spec.kwargs))
    except Exception:  # noqa: BLE001 - the build reports construction errors with context
        return
    built = getattr(getattr(net, "backbone", net), "spatial_dims", None)
    if built is not None and built != dims:
        raise ConfigError(f"--model {cfg.model} is a {built}D network, but --dims {cfg.dims} with task {cfg.task!r} "
                          f"makes {dims}D pairs: use --model auto or a {dims}D network")


def resolve_method_and_network(cfg: PretrainConfig, plan: DataPlan) -> tuple[Method, NetworkSpec, Parts]:
    """The method of ``cfg.task`` for the data plan, its network and where its backbone is.

    Needs no data (only the plan): :mod:`genesis.training.evaluate` rebuilds a checkpoint's method
    with it.
    """
    method = resolve_method(cfg.task, cfg.task_params, plan.dims, cfg.loss, cfg.seed)
    if plan.crop[0] <= 2 and plan.dims == 2 and plan.kind.endswith("radiographs") \
            and getattr(getattr(method, "task", None), "spatial_dims", None) == 3 \
            and not needs_radiograph_metadata(cfg.task):
        raise ConfigError(f"task {cfg.task!r} works on 3D sub-volumes; radiographs are 2D images "
                          "(use a 2D task: barlow_twins, metadata, rotation, masked_region...)")
    request = NetworkRequest(model=cfg.model, dims=plan.dims, width=cfg.width, model_kwargs=dict(cfg.model_kwargs),
                             crop=tuple(method.sample_crop(plan.crop)), plans=cfg.plans,
                             configuration=cfg.configuration)
    spec = method.network(request)
    check_network_dims(spec, plan.dims, cfg)
    method.bind(spec)
    return method, spec, method.parts(spec)


def resolve_recipe(cfg: PretrainConfig, world_size: int = 1, prepare: Any = None) -> ResolvedRun:
    """Resolve ``cfg`` and its data into a :class:`ResolvedRun` (see the module docstring).

    Args:
        cfg: the configuration (validated).
        world_size: DDP processes (steps per epoch count the global batch).
        prepare: called with the source before it is split (fills the volume cache), or None.
    Raises:
        ConfigError, InputFileError, DatasetLayoutError: settings or data that cannot work.
    """
    from genesis.data.groups import volume_groups
    from genesis.device import resolve_precision, resolve_device

    resolved = resolve_data(data_request(cfg))
    plan, source = resolved.plan, resolved.source
    method, spec, parts = resolve_method_and_network(cfg, plan)
    sample_crop = tuple(int(c) for c in method.sample_crop(plan.crop))
    if prepare is not None:
        prepare(source, plan, sample_crop)
    groups = volume_groups(source)
    train_idx, val_idx = split_by_group(groups, cfg.data.val_fraction)
    optim = resolve_optim(cfg.optim, cfg.task, method.family, spec.name, plan.dims)
    effective = replace(cfg, dims=plan.dims,
                        data=replace(cfg.data, crop=plan.crop, models_genesis_sampler=plan.models_genesis_sampler),
                        optim=optim)
    steps = effective_steps(effective, len(train_idx), world_size)
    effective = replace(effective, steps_per_epoch=steps)
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device), cfg.amp)
    split = {"train_groups": len({groups[i] for i in train_idx}), "val_groups": len({groups[i] for i in val_idx}),
             "train_volumes": len(train_idx), "val_volumes": len(val_idx),
             "overlap": bool(set(train_idx) & set(val_idx))}
    recipe = Recipe(task=cfg.task, method=method.describe(), family=method.family, data=plan, dims=plan.dims,
                    crop=plan.crop, sample_crop=sample_crop, model_name=spec.name,  # type: ignore[arg-type]
                    model_kwargs=dict(spec.kwargs), parts=parts, loss=getattr(method, "loss_name", "auto"),
                    optim=config_to_dict(optim), batch_size=cfg.batch_size, steps_per_epoch=steps,
                    precision=precision, monitor_key=method.monitor_key, split=split)
    return ResolvedRun(recipe, effective, method, source, train_idx, val_idx, groups, plan.notes)


#: Recipe entries a resumed run may change.
RESUMABLE_RECIPE = ("precision",)


def recipe_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"crop (run: [16, 32, 32], now: [32, 64, 64])"`` for every recipe entry that differs."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_RECIPE or key == "format":
            continue
        a, b = saved.get(key), current.get(key)
        if plain(a) != plain(b):
            diffs.append(f"{key} (run: {_short(a)}, now: {_short(b)})")
    return diffs


def _short(value: Any, limit: int = 80) -> str:
    text = repr(plain(value))
    return text if len(text) <= limit else text[:limit - 3] + "..."
