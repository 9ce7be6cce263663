"""The contract every self-supervised method fits: views in, modules, a loss, what to watch.

A *method* turns a batch of sub-volumes into what its network sees (:meth:`Method.views`), runs
the trained module on them (:meth:`Method.forward`), and scores the outputs (:meth:`Method.loss`,
:meth:`Method.validation`). It builds the module it trains (:meth:`Method.build_model`: a backbone
plus heads, and optionally an EMA teacher) and says which part of that module is the pretrained
*backbone* that fine-tuning and the exports take (:class:`Parts`). The training loop
(:mod:`genesis.training.engine`) knows nothing else about a method.

Families (``Method.family``):

* ``restoration``: corrupt, then restore (Models Genesis, Tariq et al.); the proxy transforms of
  :mod:`proxy_tasks` make the pairs;
* ``label``: predict a label of the transformed input (rotation, jigsaw, Rubik's cube, DeepCluster,
  metadata);
* ``contrastive``: compare two or more views (Barlow Twins, SimCLR, VoCo);
* ``masked image modelling``: reconstruct what a mask hid (MAE, SimMIM, SparK);
* ``teacher-student``: a student matches an EMA teacher (BYOL-style).

One method = one module in this package with one class decorated by ``@register_method(name)``.
Methods that wrap a proxy task of :mod:`proxy_tasks` (every restoration and label task) are
found by :func:`genesis.methods.resolve_method` without a registration of their own.

Randomness: ``views`` draws only from the ``generator`` it is given (seeded per step by the
loop from (seed, stage, epoch, step, rank)), so a resumed run and any number of loader workers
give the same views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from genesis.registry import Registry

METHODS: Registry = Registry("pretraining method")


register_method = METHODS.register_named  # the class also gets its registered name

#: Method families, in the order ``genesis-pretrain --list-tasks`` shows them.
FAMILIES: tuple[str, ...] = ("restoration", "label", "contrastive", "masked image modelling", "teacher-student")


@dataclass(frozen=True)
class NetworkRequest:
    """What the resolved configuration asks of the network (before the method adapts it).

    Attributes:
        model: ``--model`` (``auto`` lets the method choose).
        dims: 2 or 3.
        width: base width (``--width``).
        in_channels / out_channels: channels of the method's network input and target.
        model_kwargs: extra constructor arguments given by the user.
        crop: the sub-volumes' size (D, H, W) (D = 1 for 2D images).
        plans / configuration: an nnU-Net plans file and configuration (networks built from plans).
    """

    model: str
    dims: int
    width: int
    in_channels: int = 1
    out_channels: int = 1
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    crop: tuple[int, ...] = (32, 64, 64)
    plans: str | None = None
    configuration: str = "3d_fullres"


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network and its constructor arguments (``create_model(name, **kwargs)``)."""

    name: str
    kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class Parts:
    """Where the parts of a method's trained module are, by state-dict key prefix.

    Attributes:
        backbone: prefix of the pretrained network's keys in the module's state dict (``""``: the
            module *is* the network, as for the Models Genesis U-Net).
        network: the backbone's own registered name and arguments (rebuilds it alone).
        heads: prefixes of keys that belong to the method only (projectors, decoders of MIM,
            classification heads); dropped when the backbone is exported or fine-tuned.
        teacher: prefix of an EMA teacher's keys, or None.
    """

    backbone: str
    network: NetworkSpec
    heads: tuple[str, ...] = ()
    teacher: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "model_name": self.network.name,
                "model_kwargs": dict(self.network.kwargs), "heads": list(self.heads), "teacher": self.teacher}


class Method:
    """Base class of pretraining methods; subclasses override what differs.

    Class attributes:
        name: the name ``--task`` takes (for proxy-task methods: the task's name).
        family: one of :data:`FAMILIES`.
        paper: short citation shown by ``--list-tasks`` and in the README table.
        dims: spatial dims the method supports.
        monitor_key: validation metric for early stopping and ``best.pt`` (lower is better).
        log_keys: validation metrics shown on each epoch's line (with the baselines they must beat).
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "restoration"
    paper: ClassVar[str] = ""
    dims: ClassVar[tuple[int, ...]] = (2, 3)
    monitor_key: ClassVar[str] = "val_loss"
    log_keys: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------ resolution (once)
    @classmethod
    def create(cls, params: Mapping[str, Any], dims: int, loss: str = "auto", seed: int = 0) -> "Method":
        """The method for ``--task NAME`` with ``task_params`` ``params`` (default: ``cls(**params)``).

        Raises:
            ConfigError: invalid parameters, a ``--loss`` the method does not take, or ``dims`` it
                does not support.
        """
        from genesis.errors import ConfigError

        if dims not in cls.dims:
            raise ConfigError(f"method {cls.name!r} works on {' or '.join(f'{d}D' for d in cls.dims)} inputs, "
                              f"not --dims {dims}")
        if loss not in ("auto",):
            raise ConfigError(f"method {cls.name!r} has its own loss; --loss {loss} does not apply")
        try:
            return cls(**dict(params))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"method {cls.name!r}: invalid parameters {dict(params)}: {exc}") from None

    def stages(self) -> list["Method"]:
        """The methods of a staged scheme trained in turn (each from the previous one's weights)."""
        return [self]

    def sample_crop(self, crop: tuple[int, int, int]) -> tuple[int, int, int]:
        """Size of the sub-volumes the sampler cuts for a network input of ``crop`` (default: the same;
        VoCo cuts a larger region and crops views from it)."""
        return tuple(crop)  # type: ignore[return-value]

    def network(self, request: NetworkRequest) -> NetworkSpec:  # pragma: no cover - abstract
        """The trained module's network, resolved from ``request`` (``--model auto`` picks)."""
        raise NotImplementedError

    def build_model(self, spec: NetworkSpec) -> nn.Module:  # pragma: no cover - abstract
        """The module trained: backbone plus heads (and a teacher), weights from the global RNG
        (the caller seeds it)."""
        raise NotImplementedError

    def bind(self, spec: NetworkSpec) -> None:
        """Fix the settings that depend on the resolved network (e.g. the composite loss on a VQ-VAE)."""

    def parts(self, spec: NetworkSpec) -> Parts:  # pragma: no cover - abstract
        """Where the backbone, heads and teacher are in ``build_model(spec)``'s state dict."""
        raise NotImplementedError

    # ------------------------------------------------------------------ every step
    def views(self, cubes: torch.Tensor, generator: torch.Generator, dims: int) -> Any:  # pragma: no cover
        """What the network sees for a batch of cubes (B, 1, D, H, W) in [0, 1] on the training
        device (``dims`` 2: the method takes slices of them). Vectorised over the batch."""
        raise NotImplementedError

    def forward(self, model: nn.Module, views: Any) -> Any:  # pragma: no cover - abstract
        """Run ``model`` (the module of :meth:`build_model`, possibly wrapped in DDP: call it, do not
        reach into it for trained parts) on ``views``; runs under autocast."""
        raise NotImplementedError

    def loss(self, outputs: Any, views: Any) -> tuple[torch.Tensor, dict[str, float]]:  # pragma: no cover
        """The scalar loss to back-propagate (computed in float32) and named parts to log."""
        raise NotImplementedError

    def validation(self, outputs: Any, views: Any) -> dict[str, float]:
        """Validation metrics *summed* over the :meth:`count` samples of a batch (the loop divides);
        ``val_loss`` is added by the loop. Include the trivial baseline the method must beat."""
        return {}

    def per_sample(self, outputs: Any, views: Any) -> dict[str, torch.Tensor]:
        """Per-sample errors (B,) of the model (``model``) and of trivial baselines (other keys) on
        what the loss scores; the loop keeps them per validation cube for the collapse check."""
        return {}

    def count(self, views: Any) -> int:
        """The number of samples the :meth:`validation` sums are over."""
        return int(views.input.shape[0])

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after every optimizer step with the bare module (EMA teacher updates)."""

    def on_epoch_start(self, context: Any) -> None:
        """Called before every epoch (DeepCluster refreshes its pseudo-labels)."""

    @property
    def adapts_each_epoch(self) -> bool:
        """True when :meth:`on_epoch_start` does something (the loop then builds its context)."""
        return type(self).on_epoch_start is not Method.on_epoch_start

    def grid(self, views: Any, outputs: Any, path: Path, title: str, n: int) -> None:
        """Write a PNG of ``n`` validation samples (what the network saw and what it made of it)."""

    def describe(self) -> dict[str, Any]:
        """The method's resolved settings (recorded in the recipe and the checkpoints)."""
        return {"name": self.name, "family": self.family}


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module of a DDP-wrapped one (for reading parts outside the forward pass)."""
    return getattr(model, "module", model)
