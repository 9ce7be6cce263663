"""ImageNet-pretrained 2D ResNets and ResNeXts (baselines of Ke et al., 2023), without torchvision.

One implementation for the family (He et al., CVPR 2016; ResNeXt: Xie et al., CVPR 2017): basic
blocks for ResNet-18/34, bottlenecks (stride on the 3x3 convolution, torchvision's "V1.5") with
``groups``/``width_per_group`` for ResNet-50 and ResNeXt-101 32x8d. Parameter names and shapes are
torchvision's (``conv1.weight``, ``layer2.0.downsample.0.weight``, ``layer1.0.conv3.weight``,
``fc.weight`` ...), so the IMAGENET1K checkpoints load with ``load_state_dict``.

CT input: a slice (B, 1, H, W), or a window of slices (B, 1, D, H, W) whose slices go through the
network one by one (features (B, F, D, h, w)); grey is repeated to RGB and ImageNet mean/std applied
(see :mod:`genesis.models._pretrained`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genesis.models._blocks import InputShapeError
from genesis.models._pretrained import IMAGENET_MEAN, IMAGENET_STD, PretrainedBackbone
from genesis.models.base import register_model


class BasicBlock2d(nn.Module):
    """ResNet basic block with torchvision's names (conv1, bn1, conv2, bn2, downsample)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("basic blocks support only groups=1 and width_per_group=64 (as torchvision)")
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


class Bottleneck2d(nn.Module):
    """1x1 -> grouped 3x3 (carries the stride) -> 1x1 bottleneck with torchvision's names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, width_per_group: int = 64) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups  # ResNeXt 32x8d: 32 groups of 8 per 64
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


_BLOCKS: dict[str, type[BasicBlock2d] | type[Bottleneck2d]] = {"basic": BasicBlock2d, "bottleneck": Bottleneck2d}


class ResNet2d(PretrainedBackbone):
    """2D ResNet/ResNeXt with torchvision's parameter names.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50 and deeper, ResNeXt).
        layers: blocks per stage, e.g. (3, 4, 23, 3) for 101 layers.
        groups: grouped-convolution cardinality of the bottleneck (32 for ResNeXt-101 32x8d).
        width_per_group: channels per group at the first stage's width 64 (8 for 32x8d).
        num_classes: output logits (1000 = the ImageNet checkpoint's head).
        in_channels: 1 (grey slice, repeated to RGB) or 3.
        normalize: subtract/divide the ImageNet mean/std (inputs in [0, 1]).
    """

    spatial_dims = 2
    input_ranks = (4, 5)
    encoder_state_prefixes = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        groups: int = 1,
        width_per_group: int = 64,
        num_classes: int = 1000,
        in_channels: int = 1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give the blocks of 4 stages, got {tuple(layers)}")
        self._init_input(in_channels, normalize, IMAGENET_MEAN, IMAGENET_STD)
        self._block = _BLOCKS[block]
        self._groups, self._width_per_group = groups, width_per_group
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(64, layers[0], stride=1)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.feature_dim = 512 * self._block.expansion
        self.fc: nn.Module | None = nn.Linear(self.feature_dim, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        block, out = self._block, planes * self._block.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        kw = {"groups": self._groups, "width_per_group": self._width_per_group}
        layers = [block(self._inplanes, planes, stride, downsample, **kw)]
        self._inplanes = out
        layers += [block(out, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of RGB slices (already made from grey and normalised)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features: (B, F, H/32, W/32) for slices, (B, F, D, H/32, W/32) for windows.

        A window's slices are folded into the batch, so batch norm sees them as independent images,
        exactly as when the 2D network is applied slice by slice (Ke et al.).
        """
        x = self._prepare(x)  # RGB is made before folding, so channels="neighbors" sees the adjacent slices
        if x.dim() == 4:
            return self._slice_features(x)
        b, c, d, h, w = x.shape
        feats = self._slice_features(x.transpose(1, 2).reshape(b * d, c, h, w))
        return feats.reshape(b, d, *feats.shape[1:]).transpose(1, 2)

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice logits (B, D, num_classes) of a window (B, C, D, H, W).

        ``forward`` pools the window's features first; Ke et al. score 2D models per slice and
        take the maximum over a study, which these logits allow.
        """
        fc = getattr(self, "fc", None)
        if fc is None:
            raise RuntimeError(f"{type(self).__name__} was made encoder-only; it has no classifier")
        if x.dim() != 5:
            raise InputShapeError(f"slice_logits expects a window (B, C, D, H, W), got shape {tuple(x.shape)}")
        feats = self.forward_features(x)  # (B, F, D, h, w)
        return fc(feats.flatten(3).mean(3).transpose(1, 2))


def _builder(name: str, block: str, layers: tuple[int, int, int, int], **fixed: int) -> None:
    def build(**kwargs: object) -> ResNet2d:
        return ResNet2d(block=block, layers=layers, **fixed, **kwargs)  # type: ignore[arg-type]

    build.__name__ = name
    build.__doc__ = f"2D {name} (torchvision ImageNet checkpoints load); other arguments of :class:`ResNet2d`."
    register_model(name)(build)


# torchvision's configurations (parameter counts with the 1000-class head in tests/test_models_baselines.py)
_builder("resnet18", "basic", (2, 2, 2, 2))
_builder("resnet34", "basic", (3, 4, 6, 3))
_builder("resnet50", "bottleneck", (3, 4, 6, 3))
_builder("resnet101", "bottleneck", (3, 4, 23, 3))
_builder("resnet152", "bottleneck", (3, 8, 36, 3))
_builder("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4)
_builder("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), groups=32, width_per_group=8)
