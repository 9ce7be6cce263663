"""Video- and ImageNet-pretrained baselines of Ke et al. (2023), without torchvision.

``r3d_18`` and ``r2plus1d_18`` (Tran et al., CVPR 2018) and the 2D ``resnet18`` (He et al., 2016) are
rebuilt here because torchvision is not a dependency; their parameter names and shapes are
torchvision's (``stem.0.weight``, ``layer1.0.conv1.0.0.weight``, ``fc.weight`` ...; ``conv1.weight``,
``layer2.0.downsample.0.weight`` ... for ResNet-18), so the Kinetics-400 / ImageNet checkpoints load
with ``load_state_dict``.

CT is grey: with ``in_channels=1`` the input is repeated to three channels (Ke et al.) so the
pretrained first convolution is used as released. ``normalize=True`` applies the checkpoint's
mean/std (Kinetics or ImageNet) to inputs in [0, 1]; the statistics are non-persistent buffers, so
state dicts stay torchvision-compatible. Video inputs are (B, C, T, H, W), T = slices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from genesis.models._blocks import InputShapeError
from genesis.models.base import register_model

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


ConvBuilder = Callable[[int, int, int, int], nn.Module]


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


# ---------------------------------------------------------------------------------- shared base
class _PretrainedResNetBase(nn.Module):
    """Grey-to-RGB input handling, normalisation, features/head API shared by the baselines."""

    spatial_dims: int
    feature_dim: int = 512
    encoder_state_prefixes: tuple[str, ...]

    def _init_input(self, in_channels: int, normalize: bool, mean: Sequence[float], std: Sequence[float]) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey, repeated to RGB) or 3, got {in_channels}")
        self.in_channels = in_channels
        self.normalize = normalize
        view = (1, 3) + (1,) * self.spatial_dims
        self.register_buffer("input_mean", torch.tensor(mean).view(view), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(view), persistent=False)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            axes = "(B, C, T, H, W)" if self.spatial_dims == 3 else "(B, C, H, W)"
            raise InputShapeError(
                f"{type(self).__name__} expects {axes} with C={self.in_channels}, got shape {tuple(x.shape)}"
            )
        if self.in_channels == 1:
            x = x.expand(-1, 3, *x.shape[2:])
        if self.normalize:
            x = (x - self.input_mean) / self.input_std
        return x

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a model trained from scratch matches the baseline
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        fc = getattr(self, "fc", None)
        if fc is None:
            raise RuntimeError(f"{type(self).__name__} was made encoder-only; it has no classifier")
        return fc(self.forward_features(x).flatten(2).mean(2))

    def replace_head(self, num_classes: int) -> _PretrainedResNetBase:
        """New (freshly initialised) final linear layer, e.g. 1 logit for PE vs no PE."""
        device = next(self.parameters()).device
        self.fc = nn.Linear(self.feature_dim, num_classes).to(device)
        self.num_classes = num_classes
        return self

    def encoder_only(self) -> _PretrainedResNetBase:
        """Drop ``fc`` (the network then serves as the backbone of ``encoder_classifier``)."""
        del self.fc  # deleted, not set to None, so loading a full checkpoint reports fc.* as unexpected
        return self


# ---------------------------------------------------------------------------------- video ResNet
class VideoResNet18(_PretrainedResNetBase):
    """18-layer video ResNet (R3D or R(2+1)D) with torchvision's parameter names.

    Args:
        kind: ``"r3d"`` or ``"r2plus1d"``.
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
        if kind not in ("r3d", "r2plus1d"):
            raise ValueError(f"kind must be 'r3d' or 'r2plus1d', got {kind!r}")
        self._init_input(in_channels, normalize, KINETICS_MEAN, KINETICS_STD)
        builder: ConvBuilder = _conv3d_simple if kind == "r3d" else _conv2plus1d
        self.kind = kind
        self.num_classes = num_classes
        self.stem = _r3d_stem() if kind == "r3d" else _r2plus1d_stem()
        self._inplanes = 64
        self.layer1 = self._make_layer(builder, 64, stride=1)
        self.layer2 = self._make_layer(builder, 128, stride=2)
        self.layer3 = self._make_layer(builder, 256, stride=2)
        self.layer4 = self._make_layer(builder, 512, stride=2)
        self.fc: nn.Module | None = nn.Linear(512, num_classes)
        self._init_weights()

    def _make_layer(self, builder: ConvBuilder, planes: int, stride: int, blocks: int = 2) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv3d(self._inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(planes)
            )
        layers = [VideoBasicBlock(self._inplanes, planes, builder, stride, downsample)]
        self._inplanes = planes
        layers += [VideoBasicBlock(planes, planes, builder) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features (B, 512, T/8, H/16, W/16) (rounded up)."""
        x = self.stem(self._prepare(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ---------------------------------------------------------------------------------- 2D ResNet-18
class BasicBlock2d(nn.Module):
    """ResNet basic block with torchvision's names (conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(_PretrainedResNetBase):
    """2D ResNet-18 with torchvision's parameter names (ImageNet baseline of Ke et al.).

    Args:
        num_classes: output logits (1000 = the ImageNet checkpoint's head).
        in_channels: 1 (grey slice, repeated to RGB) or 3.
        normalize: subtract/divide the ImageNet mean/std (inputs in [0, 1]).
    """

    spatial_dims = 2
    encoder_state_prefixes = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, num_classes: int = 1000, in_channels: int = 1, normalize: bool = True) -> None:
        super().__init__()
        self._init_input(in_channels, normalize, IMAGENET_MEAN, IMAGENET_STD)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.fc: nn.Module | None = nn.Linear(512, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, stride: int, blocks: int = 2) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock2d(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes
        layers += [BasicBlock2d(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features (B, 512, H/32, W/32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(self._prepare(x)))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


# ---------------------------------------------------------------------------------- registry
@register_model("r3d_18")
def r3d_18(**kwargs: object) -> VideoResNet18:
    """R3D-18 (Kinetics-400 checkpoints of torchvision load); arguments of :class:`VideoResNet18`."""
    return VideoResNet18(kind="r3d", **kwargs)  # type: ignore[arg-type]


@register_model("r2plus1d_18")
def r2plus1d_18(**kwargs: object) -> VideoResNet18:
    """R(2+1)D-18 (Kinetics-400 checkpoints of torchvision load); arguments of :class:`VideoResNet18`."""
    return VideoResNet18(kind="r2plus1d", **kwargs)  # type: ignore[arg-type]


@register_model("resnet18")
def resnet18(**kwargs: object) -> ResNet18:
    """2D ResNet-18 (ImageNet checkpoints of torchvision load); arguments of :class:`ResNet18`."""
    return ResNet18(**kwargs)  # type: ignore[arg-type]
