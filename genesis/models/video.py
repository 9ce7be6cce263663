"""Kinetics-400-pretrained video ResNets (baselines of Ke et al., 2023), without torchvision.

``r3d_18``, ``mc3_18`` and ``r2plus1d_18`` (Tran et al., CVPR 2018) are rebuilt here because
torchvision is not a dependency; their parameter names and shapes are torchvision's
(``stem.0.weight``, ``layer1.0.conv1.0.0.weight``, ``fc.weight`` ...), so the Kinetics-400
checkpoints load with ``load_state_dict``. The ImageNet 2D ResNets live in
:mod:`genesis.models.resnet2d`; the shared input/head API in :mod:`genesis.models._pretrained`.

CT is grey: with ``in_channels=1`` the input is repeated to three channels (Ke et al.) so the
pretrained first convolution is used as released. ``normalize=True`` applies the Kinetics
mean/std to inputs in [0, 1]; the statistics are non-persistent buffers, so state dicts stay
torchvision-compatible. Video inputs are (B, C, T, H, W), T = slices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from genesis.models._pretrained import (  # noqa: F401  (constants re-exported for older imports)
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    PretrainedBackbone,
)
from genesis.models.base import register_model

_PretrainedResNetBase = PretrainedBackbone  # former name of the shared base


# ---------------------------------------------------------------------------------- video blocks
def _conv3d_simple(in_planes: int, out_planes: int, midplanes: int, stride: int = 1) -> nn.Module:
    """Full 3x3x3 convolution (R3D)."""
    return nn.Conv3d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv2plus1d(in_planes: int, out_planes: int, midplanes: int, stride: int = 1) -> nn.Module:
    """(2+1)D factorisation: 1x3x3 spatial conv, BN, ReLU, 3x1x1 temporal conv (R(2+1)D)."""
    return nn.Sequential(
        nn.Conv3d(
            in_planes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        ),
        nn.BatchNorm3d(midplanes),
        nn.ReLU(inplace=True),
        nn.Conv3d(midplanes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
    )


def _conv3d_no_temporal(in_planes: int, out_planes: int, midplanes: int, stride: int = 1) -> nn.Module:
    """Spatial-only 1x3x3 convolution (the 2D stages of the mixed-convolution MC3)."""
    return nn.Conv3d(
        in_planes, out_planes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
    )


ConvBuilder = Callable[[int, int, int, int], nn.Module]

# convolution of each of the four stages: MC3 keeps 3D convolutions in the first stage only
_STAGE_BUILDERS: dict[str, tuple[ConvBuilder, ...]] = {
    "r3d": (_conv3d_simple,) * 4,
    "mc3": (_conv3d_simple,) + (_conv3d_no_temporal,) * 3,
    "r2plus1d": (_conv2plus1d,) * 4,
}


def _downsample_stride(builder: ConvBuilder, stride: int) -> tuple[int, int, int]:
    # the shortcut must downsample like the block's convolutions: never in time for 1x3x3 stages
    return (1, stride, stride) if builder is _conv3d_no_temporal else (stride, stride, stride)


class VideoBasicBlock(nn.Module):
    """Residual block of the video ResNets (torchvision layout: ``conv1``/``conv2`` Sequentials)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, builder: ConvBuilder, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        # mid-channels chosen so a (2+1)D block has about the parameters of a 3D one (Tran et al.);
        # the same value serves both convolutions, as in the released models.
        midplanes = (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)
        self.conv1 = nn.Sequential(
            builder(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(builder(planes, planes, midplanes, 1), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + identity)


def _r3d_stem() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(3, 64, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(64),
        nn.ReLU(inplace=True),
    )


def _r2plus1d_stem() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(3, 45, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(45),
        nn.ReLU(inplace=True),
        nn.Conv3d(45, 64, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(64),
        nn.ReLU(inplace=True),
    )


# ---------------------------------------------------------------------------------- video ResNet
class VideoResNet18(PretrainedBackbone):
    """18-layer video ResNet (R3D, MC3 or R(2+1)D) with torchvision's parameter names.

    Args:
        kind: ``"r3d"``, ``"mc3"`` or ``"r2plus1d"``.
        num_classes: output logits (400 = the Kinetics-400 checkpoint's head).
        in_channels: 1 (grey CT, repeated to RGB) or 3.
        normalize: subtract/divide the Kinetics mean/std (inputs in [0, 1]).
    """

    spatial_dims = 3
    encoder_state_prefixes = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self, kind: str = "r2plus1d", num_classes: int = 400, in_channels: int = 1, normalize: bool = True
    ) -> None:
        super().__init__()
        if kind not in _STAGE_BUILDERS:
            raise ValueError(f"kind must be one of {sorted(_STAGE_BUILDERS)}, got {kind!r}")
        self._init_input(in_channels, normalize, KINETICS_MEAN, KINETICS_STD)
        builders = _STAGE_BUILDERS[kind]
        self.kind = kind
        self.num_classes = num_classes
        self.stem = _r2plus1d_stem() if kind == "r2plus1d" else _r3d_stem()
        self._inplanes = 64
        self.layer1 = self._make_layer(builders[0], 64, stride=1)
        self.layer2 = self._make_layer(builders[1], 128, stride=2)
        self.layer3 = self._make_layer(builders[2], 256, stride=2)
        self.layer4 = self._make_layer(builders[3], 512, stride=2)
        self.fc: nn.Module | None = nn.Linear(512, num_classes)
        self._init_weights()

    def _make_layer(self, builder: ConvBuilder, planes: int, stride: int, blocks: int = 2) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes:
            ds_stride = _downsample_stride(builder, stride)
            downsample = nn.Sequential(
                nn.Conv3d(self._inplanes, planes, kernel_size=1, stride=ds_stride, bias=False), nn.BatchNorm3d(planes)
            )
        layers = [VideoBasicBlock(self._inplanes, planes, builder, stride, downsample)]
        self._inplanes = planes
        layers += [VideoBasicBlock(planes, planes, builder) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features (B, 512, T', H/16, W/16) (rounded up); T' = T/8, or T for ``mc3``."""
        x = self.stem(self._prepare(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ---------------------------------------------------------------------------------- registry
@register_model("r3d_18")
def r3d_18(**kwargs: object) -> VideoResNet18:
    """R3D-18 (Kinetics-400 checkpoints of torchvision load); arguments of :class:`VideoResNet18`."""
    return VideoResNet18(kind="r3d", **kwargs)  # type: ignore[arg-type]


@register_model("mc3_18")
def mc3_18(**kwargs: object) -> VideoResNet18:
    """MC3-18, 3D first stage then 2D stages (Kinetics-400 checkpoints of torchvision load)."""
    return VideoResNet18(kind="mc3", **kwargs)  # type: ignore[arg-type]


@register_model("r2plus1d_18")
def r2plus1d_18(**kwargs: object) -> VideoResNet18:
    """R(2+1)D-18 (Kinetics-400 checkpoints of torchvision load); arguments of :class:`VideoResNet18`."""
    return VideoResNet18(kind="r2plus1d", **kwargs)  # type: ignore[arg-type]
