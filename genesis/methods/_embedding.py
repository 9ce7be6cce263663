"""What the contrastive and teacher-student methods share: a pooled backbone and its heads.

:func:`backbone_spec` resolves the backbone network from a :class:`NetworkRequest` (``--model auto``:
the U-Net of the method's dims; a network's own ``pretraining_kwargs`` hook where it has one, e.g.
``swinunetr``); :func:`build_backbone` builds it encoder-only (its decoder would be trained by
nothing); :class:`EmbeddingModel` is the module these methods train: ``backbone`` -> global average
pooling -> ``projector`` (-> ``predictor``). :func:`embedding_parts` says where those are.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.methods.base import NetworkRequest, NetworkSpec, Parts
from genesis.methods.proxy import network_kwargs, provider_kwargs
from genesis.models import create_model
from genesis.models._blocks import spatial_mean
from genesis.models.base import MODELS


def backbone_spec(request: NetworkRequest, method: str) -> NetworkSpec:
    """The backbone network a contrastive method trains, from the resolved request.

    Raises:
        ConfigError: an unknown ``--model``.
    """
    name = request.model
    if name == "auto":
        name = "unet3d" if request.dims == 3 else "unet2d"
    if name not in MODELS:
        raise ConfigError(f"task {method!r}: unknown model {name!r}; backbones with forward_features: "
                          "unet3d, unet2d, swinunetr, ...")
    kwargs = provider_kwargs(name, request, request.in_channels, request.out_channels)
    if kwargs is None:
        kwargs = network_kwargs(name, request.dims, request.in_channels, request.width)
    kwargs.update(request.model_kwargs)
    return NetworkSpec(name, kwargs)


def build_backbone(spec: NetworkSpec, dims: int | None, method: str) -> nn.Module:
    """The backbone of ``spec``, encoder-only where the network can drop its decoder (``dims``: the
    views' spatial dims when known, checked against the network's).

    Raises:
        ConfigError: the network cannot be built with these arguments, has no ``forward_features``
            or works on other spatial dims than ``dims``.
    """
    try:
        net = create_model(spec.name, **dict(spec.kwargs))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"task {method!r}: model {spec.name!r} with {dict(spec.kwargs)}: {exc}") from None
    if not hasattr(net, "forward_features") or not hasattr(net, "feature_dim"):
        raise ConfigError(f"task {method!r} needs a backbone with forward_features; {spec.name!r} has none")
    made = getattr(net, "spatial_dims", dims)
    if dims is not None and made != dims:
        raise ConfigError(f"task {method!r}: model {spec.name!r} is {made}D but the views are {dims}D; "
                          f"use --dims {made} or a {dims}D network")
    if hasattr(net, "encoder_only"):
        net.encoder_only()
    return net


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's features averaged over space (N, feature_dim)."""
    return spatial_mean(backbone.forward_features(x))


class EmbeddingModel(nn.Module):
    """``backbone`` (features pooled over space) -> ``projector`` [-> ``predictor``].

    ``forward`` returns the projections (N, out), or (projections, predictions) with a predictor.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> Any:
        z = self.projector(pooled_features(self.backbone, x))
        return z if self.predictor is None else (z, self.predictor(z))


def embedding_parts(spec: NetworkSpec, heads: tuple[str, ...] = ("projector.",), teacher: str | None = None) -> Parts:
    """The backbone under ``backbone.`` (encoder keys of ``spec``'s network), the method's heads."""
    return Parts(backbone="backbone.", network=spec, heads=heads, teacher=teacher)


def middle_image(x: torch.Tensor) -> np.ndarray:
    """A displayable 2D image of one sample (C, H, W) or (C, D, H, W): its first channel, middle slice."""
    img = x.detach().float().cpu()[0]
    if img.dim() == 3:
        img = img[img.shape[0] // 2]
    return img.numpy()
