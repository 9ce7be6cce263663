"""Building blocks shared by the networks of this package (dimension-agnostic via ``spatial_dims``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genesis.errors import GenesisError


class InputShapeError(GenesisError, ValueError):
    """A tensor given to a network has the wrong rank, channel count or spatial size."""


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def check_input(
    x: torch.Tensor, *, spatial_dims: int, in_channels: int, multiple: int, model: str
) -> None:
    """Raise :class:`InputShapeError` unless ``x`` is (B, in_channels, *sides) with sides divisible by ``multiple``.

    Raises:
        InputShapeError: naming the model, the received shape and what it needs.
    """
    shape = tuple(x.shape)
    if x.dim() != spatial_dims + 2:
        axes = "(B, C, D, H, W)" if spatial_dims == 3 else "(B, C, H, W)"
        raise InputShapeError(f"{model} expects a {spatial_dims + 2}D tensor {axes}, got shape {shape}")
    if shape[1] != in_channels:
        raise InputShapeError(f"{model} expects {in_channels} input channel(s), got shape {shape}")
    bad = [s for s in shape[2:] if s % multiple]
    if bad:
        raise InputShapeError(
            f"{model} needs spatial sides divisible by {multiple}, got shape {shape} "
            f"(crop or pad the input, e.g. the Models Genesis cube (32, 64, 64))"
        )


# The layer of each kind per spatial dims, as MONAI's layer factories (monai.networks.layers.factories)
# give them: those factories import all of MONAI (1.6 s of the 2.3 s of `import genesis.models` on a
# quiet machine, 5.6 of 7-8 s on a busy one) for these six classes.
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAX_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


def conv(spatial_dims: int, *args: object, **kwargs: object) -> nn.Module:
    """``nn.Conv2d``/``nn.Conv3d`` chosen by ``spatial_dims``."""
    return _CONV[check_spatial_dims(spatial_dims)](*args, **kwargs)


def conv_transpose(spatial_dims: int, *args: object, **kwargs: object) -> nn.Module:
    return _CONV_TRANSPOSE[check_spatial_dims(spatial_dims)](*args, **kwargs)


def batch_norm(spatial_dims: int, channels: int) -> nn.Module:
    return _BATCH_NORM[check_spatial_dims(spatial_dims)](channels)


def max_pool(spatial_dims: int, kernel_size: int = 2) -> nn.Module:
    return _MAX_POOL[check_spatial_dims(spatial_dims)](kernel_size)


class ConvBNReLU(nn.Module):
    """Conv (k3, p1) -> BatchNorm -> ReLU, the ``LUConv`` unit of the Models Genesis U-Net.

    Attribute names (``conv1``, ``bn1``) match the official release so its state dict loads.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channel counts.
        bn_batch_stats_in_eval: reproduce the reference ``ContBatchNorm3d`` defect: normalise with the
            statistics of the current batch even in eval mode (running statistics are left untouched
            in eval). Off by default, where eval mode uses the running statistics as it should.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, bn_batch_stats_in_eval: bool = False
    ) -> None:
        super().__init__()
        self.conv1 = conv(spatial_dims, in_channels, out_channels, kernel_size=3, padding=1)
        self.bn1 = batch_norm(spatial_dims, out_channels)
        self.activation = nn.ReLU(inplace=True)
        self.bn_batch_stats_in_eval = bn_batch_stats_in_eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.bn_batch_stats_in_eval and not self.training:
            bn = self.bn1
            x = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        else:
            x = self.bn1(x)
        return self.activation(x)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling over every spatial axis: (B, C, *sides) -> (B, C)."""
    return x.flatten(2).mean(dim=2)
