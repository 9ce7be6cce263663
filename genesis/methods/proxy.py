"""What the restoration and label methods share: a proxy task of :mod:`proxy_tasks` makes the pairs.

``build_proxy_task(name, params, dims)`` instantiates the task (tasks that can make 2D or 3D
pairs follow ``dims``); ``prepare_pair`` applies it to a batch of cubes (axial slices of them
for ``dims == 2``); ``probe_pairs`` learns the channels of its pairs from one random batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.methods.base import Method, NetworkRequest, NetworkSpec, Parts
from genesis.models import ModelOutput, create_model, unpack_output


def build_proxy_task(name: str, params: dict[str, Any], dims: int) -> Any:
    """The proxy task (or scheme) ``name`` with ``params``.

    Tasks that produce 2D or 3D pairs from sub-volumes (``spatial_dims_out``) follow ``dims``
    unless the parameter is given.

    Raises:
        ConfigError: invalid parameters, or a 2D-only task with ``dims`` 3.
    """
    import proxy_tasks

    cls = proxy_tasks.TASKS.get(name)
    params = dict(params)
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    if "spatial_dims_out" in accepted and "spatial_dims_out" not in params:
        params["spatial_dims_out"] = dims
        if dims == 3 and "slab" in accepted and "slab" not in params:
            # a 3D network needs slabs whose depth survives its 2x poolings
            params["slab"] = 8
    try:
        task = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"task {name!r}: invalid parameters {params}: {exc}") from None
    if getattr(task, "spatial_dims", None) == 2 and dims == 3:
        raise ConfigError(f"task {name!r} works on 2D slices; add --dims 2")
    return task


def task_input_dims(task: Any) -> int | None:
    """Spatial dims a task consumes (None: 2D or 3D)."""
    return getattr(task, "spatial_dims", None)


def prepare_pair(task: Any, cubes: torch.Tensor, generator: torch.Generator, dims: int) -> Any:
    """Apply ``task`` to a batch of cubes (B, 1, D, H, W), as slices when ``dims == 2``.

    2D training (Tariq et al.) uses one random axial slice per cube; tasks that consume whole
    sub-volumes (``spatial_dims == 3``, e.g. next-slice prediction) get the cubes themselves.
    """
    if dims == 2 and task_input_dims(task) != 3:
        b, _, d = cubes.shape[:3]
        index = torch.randint(0, d, (b,), generator=generator, device=cubes.device)
        cubes = cubes[torch.arange(b, device=cubes.device), :, index]  # (B, 1, H, W)
    return task(cubes, generator=generator)


@dataclass(frozen=True)
class PairShape:
    """What a task's pairs look like (probed on a random batch)."""

    spatial_dims: int
    in_channels: int
    out_channels: int


def probe_pairs(task: Any, name: str, crop: tuple[int, ...], dims: int, seed: int = 0) -> PairShape:
    """Run the task once on random cubes to learn the network's dims and channels.

    Raises:
        ConfigError: the task cannot make pairs from such inputs, or makes pairs of other dims
            than ``dims`` (``--dims`` is never ignored).
    """
    gen = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
    cubes = torch.rand((2, 1, *crop), generator=gen)
    try:
        pair = prepare_pair(task, cubes, torch.Generator().manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF), dims)
    except Exception as exc:  # noqa: BLE001
        if getattr(task, "consumes_metadata", False) or type(task).on_epoch_start is not _base_hook():
            # DeepCluster has no labels before its first epoch hook; the metadata task needs the
            # labels that travel with real radiographs: both take one channel in and out
            return PairShape(dims, 1, 1)
        raise ConfigError(f"task {name!r} cannot make training pairs from --dims {dims} inputs of crop "
                          f"{tuple(crop)}: {exc}") from None
    out_channels = int(pair.target.shape[1]) if pair.target is not None else 1
    made = pair.input.dim() - 2
    if made != dims:
        raise ConfigError(f"task {name!r} makes {made}D training pairs, not the --dims {dims} asked for: "
                          f"use --dims {made}, or a task that works on {dims}D inputs")
    return PairShape(made, int(pair.input.shape[1]), out_channels)


def _base_hook() -> Any:
    from proxy_tasks.base import ProxyTask

    return ProxyTask.on_epoch_start


def is_pretrained_backbone(name: str) -> bool:
    """A registered network rebuilt in torchvision's layout (densenet121, resnet50...)."""
    from genesis.models._pretrained import PretrainedBackbone

    try:
        with torch.device("meta"):
            return isinstance(create_model(name), PretrainedBackbone)
    except Exception:  # noqa: BLE001 - unknown names and networks needing arguments are not
        return False


def network_kwargs(name: str, dims: int, in_channels: int, width: int) -> dict[str, Any]:
    """Constructor arguments of a network of base width ``width`` (torchvision-layout nets: none)."""
    if is_pretrained_backbone(name):
        return {"in_channels": in_channels}
    if name == "vqvae":
        # the reference VQ-VAE's (64, 128) strided widths at the paper's base width 32
        return {"spatial_dims": dims, "in_channels": in_channels, "channels": [2 * width, 4 * width]}
    return {"in_channels": in_channels, "base_width": width}


def provider_kwargs(name: str, request: NetworkRequest, in_channels: int, out_channels: int) -> dict[str, Any] | None:
    """Constructor arguments from the network's own pretraining hook (e.g. nnU-Net's plans fix
    the architecture), or None when the network has no hook."""
    from genesis.models.base import MODELS

    hook = getattr(MODELS.get(name), "pretraining_kwargs", None)
    return None if hook is None else dict(hook(request, in_channels, out_channels))


class ProxyTaskMethod(Method):
    """A method whose views are the pairs of a proxy task.

    Args:
        task_name: the registered proxy task.
        task: the task instance (:func:`build_proxy_task`).
        loss: ``--loss`` (``auto`` lets the method choose).
        seed: seeds the probe of the task's pairs.
    """

    def __init__(self, task_name: str, task: Any, loss: str = "auto", seed: int = 0) -> None:
        self.name = task_name  # type: ignore[misc]
        self.task = task
        self.requested_loss = loss
        self.seed = int(seed)
        self.loss_name = loss

    @property
    def paper(self) -> str:  # type: ignore[override]
        return str(getattr(self.task, "paper", ""))

    @property
    def region(self) -> str:
        return getattr(self.task, "loss_region", "all")

    def stages(self) -> list["ProxyTaskMethod"]:
        """One method per stage of a staged scheme (the masked-region curriculum), else ``[self]``."""
        stages = getattr(self.task, "stages", None)
        if not stages:
            return [self]
        out = []
        for stage in stages:
            m = type(self)(self.name, stage, self.requested_loss, self.seed)
            m.loss_name = self.loss_name
            out.append(m)
        return out

    def probe(self, request: NetworkRequest) -> PairShape:
        first = self.stages()[0].task
        return probe_pairs(first, self.name, tuple(request.crop), request.dims, self.seed)

    def build_model(self, spec: NetworkSpec) -> nn.Module:
        try:
            return create_model(spec.name, **dict(spec.kwargs))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {spec.name!r} with {dict(spec.kwargs)}: {exc}") from None

    def views(self, cubes: torch.Tensor, generator: torch.Generator, dims: int) -> Any:
        return prepare_pair(self.task, cubes, generator, dims)

    def forward(self, model: nn.Module, views: Any) -> ModelOutput:
        return unpack_output(model(views.input))

    def on_epoch_start(self, context: Any) -> None:
        hook = getattr(type(self.task), "on_epoch_start", None)
        if hook is not None and hook is not _base_hook():
            self.task.on_epoch_start(context)

    @property
    def adapts_each_epoch(self) -> bool:
        hook = getattr(type(self.task), "on_epoch_start", None)
        return hook is not None and hook is not _base_hook()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "loss": self.loss_name, "task": repr(self.task)}


def middle_slice(x: torch.Tensor) -> np.ndarray:
    """The middle axial slice of the last channel (the newest slice of a slab input)."""
    img = x.detach().float().cpu()[-1]
    if img.dim() == 3:
        img = img[img.shape[0] // 2]
    return img.numpy()


__all__ = ["build_proxy_task", "prepare_pair", "probe_pairs", "PairShape", "ProxyTaskMethod", "network_kwargs",
           "is_pretrained_backbone", "provider_kwargs", "middle_slice", "task_input_dims", "Parts"]
