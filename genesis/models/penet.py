"""PENet (Huang et al., npj Digital Medicine 2020), the PE detector Ke et al. (2023) compare with.

Layout written from the authors' code (github.com/marshuang80/penet, ``models/penet_classifier.py``
and ``models/layers/penet/``): the classification network that is pretrained on Kinetics and whose
encoder initialises PENet. Parameter names as there, so a ``model_state`` of that code (with its
``module.`` prefix stripped by the loader) loads: ``in_conv.0`` (7x7x7 convolution, stride 1x2x2),
``in_conv.1`` (GroupNorm), ``encoders.{0-3}.penet_blocks.{i}`` (``conv1``/``norm1``, grouped 3x3x3
``conv2``/``norm2`` with 32 groups, ``conv3``/``norm3``, squeeze-excitation ``se_block.excite.0``
and ``.2``, ``down_sample.0``/``.1`` shortcuts), ``classifier.fc``.

Blocks: pre-activation-free ResNeXt bottlenecks (expansion 2) with GroupNorm (16 channels per
group), LeakyReLU, squeeze-and-excitation (reduction 16) and stochastic depth (survival falling
linearly to 0.5 over the 16 blocks). Stage widths 128, 256, 512, 1024 (outputs x2), depth 50.
PENet reads windows of 24 slices (the authors' recommendation, followed by Ke et al.).

Not verified against the released file: the authors' checkpoints are in a Stanford Box folder
(no direct URL, no published checksum), pretrained on Kinetics-600 according to their README
(Ke et al. write Kinetics-400); the 600-class head is the code's default. Grey input is repeated to
three channels as the authors' ``forward`` does; ``normalize=True`` zero-centres inputs in [0, 1]
(``(x - 0.5) / 0.5``, our choice; the authors' own intensity normalisation is not reproduced).
"""

from __future__ import annotations

import torch
from torch import nn

from genesis.models._pretrained import PretrainedBackbone
from genesis.models.base import register_model

PENET_WINDOW = 24  # slices per input window (Huang et al.; Ke et al.)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: global average -> ``excite`` (Linear, LeakyReLU, Linear, Sigmoid) -> gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.excite = nn.Sequential(nn.Linear(channels, channels // reduction), nn.LeakyReLU(inplace=True),
                                    nn.Linear(channels // reduction, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excite(x.flatten(2).mean(2))
        return x * gate[:, :, None, None, None]


class PENetBottleneck(nn.Module):
    """1x1x1 -> grouped 3x3x3 (stride) -> 1x1x1, GroupNorm + LeakyReLU, SE, shortcut, stochastic depth."""

    expansion = 2

    def __init__(self, in_channels: int, channels: int, survival: float, cardinality: int = 32, stride: int = 1) -> None:
        super().__init__()
        mid = cardinality * (channels // cardinality)
        out = channels * self.expansion
        self.survival_prob = survival
        self.down_sample = None
        if stride != 1 or in_channels != out:
            self.down_sample = nn.Sequential(nn.Conv3d(in_channels, out, 1, stride=stride, bias=False),
                                             nn.GroupNorm(out // 16, out))
        self.conv1 = nn.Conv3d(in_channels, mid, 1, bias=False)
        self.norm1 = nn.GroupNorm(mid // 16, mid)
        self.relu1 = nn.LeakyReLU(inplace=True)
        self.conv2 = nn.Conv3d(mid, mid, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.norm2 = nn.GroupNorm(mid // 16, mid)
        self.relu2 = nn.LeakyReLU(inplace=True)
        self.conv3 = nn.Conv3d(mid, out, 1, bias=False)
        self.norm3 = nn.GroupNorm(out // 16, out)
        self.relu3 = nn.LeakyReLU(inplace=True)
        self.se_block = SEBlock(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down_sample is None else self.down_sample(x)
        # stochastic depth as the authors: the whole residual branch is skipped in training
        if self.training and float(torch.rand(())) > self.survival_prob:
            return skip
        y = self.relu1(self.norm1(self.conv1(x)))
        y = self.relu2(self.norm2(self.conv2(y)))
        y = self.se_block(self.norm3(self.conv3(y)))
        return self.relu3(y + skip)


class PENetEncoder(nn.Module):
    """One stage: ``penet_blocks`` (the first one strided)."""

    def __init__(self, in_channels: int, channels: int, n_blocks: int, first: int, total: int, stride: int) -> None:
        super().__init__()
        survival = [1.0 - (first + i) / total * 0.5 for i in range(n_blocks)]
        blocks = [PENetBottleneck(in_channels, channels, survival[0], stride=stride)]
        blocks += [PENetBottleneck(channels * 2, channels, survival[i]) for i in range(1, n_blocks)]
        self.penet_blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.penet_blocks(x)


class GAPLinear(nn.Module):
    """Global average pooling + ``fc`` (the authors' classifier module)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)


class PENet(PretrainedBackbone):
    """PENet classifier (the Kinetics-pretrained encoder of PENet) with the authors' parameter names.

    Args:
        num_classes: logits (600 = the authors' Kinetics checkpoint head).
        cardinality: groups of the 3x3x3 convolutions (32).
        in_channels: 1 (grey CT, repeated to three channels) or 3.
        normalize: zero-centre inputs in [0, 1] (``(x - 0.5) / 0.5``).
    """

    spatial_dims = 3
    feature_dim = 2048
    head_path = "classifier.fc"
    encoder_state_prefixes = ("in_conv", "encoders")
    window = PENET_WINDOW

    def __init__(self, num_classes: int = 600, cardinality: int = 32, in_channels: int = 1,
                 normalize: bool = True) -> None:
        super().__init__()
        self._init_input(in_channels, normalize, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        self.num_classes = num_classes
        self.in_conv = nn.Sequential(nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=3, bias=False),
                                     nn.GroupNorm(4, 64), nn.LeakyReLU(inplace=True))
        self.max_pool = nn.MaxPool3d(3, stride=2, padding=1)
        config, total, first, cin = (3, 4, 6, 3), 16, 0, 64
        self.encoders = nn.ModuleList()
        for i, n in enumerate(config):
            channels = 128 * 2 ** i
            self.encoders.append(PENetEncoder(cin, channels, n, first, total, 1 if i == 0 else 2))
            cin, first = channels * 2, first + n
        self.classifier = GAPLinear(cin, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features (B, 2048, T/16, H/32, W/32) (sides rounded up)."""
        x = self.max_pool(self.in_conv(self._prepare(x)))
        for encoder in self.encoders:
            x = encoder(x)
        return x


@register_model("penet")
def penet(**kwargs: object) -> PENet:
    """PENet classifier (authors' layout; 24-slice windows); arguments of :class:`PENet`."""
    return PENet(**kwargs)  # type: ignore[arg-type]
