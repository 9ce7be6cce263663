"""S3D in torchvision's layout (Xie et al., ECCV 2018, "Rethinking Spatiotemporal Feature Learning").

Separable 3D Inception: every k x k x k convolution is a 1 x k x k spatial convolution followed by a
k x 1 x 1 temporal one, each with batch norm (eps 1e-3, momentum 1e-3) and ReLU. Names and shapes
are torchvision's ``s3d`` so ``s3d-d76dad2f.pth`` (Kinetics-400) loads: ``features.0.0.0.weight``
(stem spatial conv), ``features.0.1.1.running_mean`` (its temporal conv's norm),
``features.5.branch1.1.0.0.weight`` (an Inception block's separable conv),
``classifier.1.weight`` (a 1x1x1 convolution, 400 x 1024).

The head is applied to globally averaged features (torchvision averages 2x7x7 windows first, which
equals a global average for its 224-pixel, 16-frame clips); inputs are grey CT windows (B, 1, T, H, W)
repeated to RGB with the Kinetics mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genesis.models._pretrained import KINETICS_MEAN, KINETICS_STD, PretrainedBackbone
from genesis.models.base import register_model


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=0.001, momentum=0.001)


class ConvNormAct(nn.Sequential):
    """torchvision's ``Conv3dNormActivation``: conv (no bias) -> BN -> ReLU as ``0``, ``1``, ``2``."""

    def __init__(self, cin: int, cout: int, kernel: int | Sequence[int] = 1, stride: int | Sequence[int] = 1,
                 padding: int | Sequence[int] | None = None) -> None:
        if padding is None:
            k = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
            padding = tuple((x - 1) // 2 for x in k)
        super().__init__(nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding, bias=False), _bn(cout),
                         nn.ReLU(inplace=True))


class TemporalSeparableConv(nn.Sequential):
    """1 x k x k spatial then k x 1 x 1 temporal :class:`ConvNormAct` (names ``0`` and ``1``)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, pad: int) -> None:
        super().__init__(ConvNormAct(cin, cout, (1, k, k), (1, stride, stride), (0, pad, pad)),
                         ConvNormAct(cout, cout, (k, 1, 1), (stride, 1, 1), (pad, 0, 0)))


class SepInceptionBlock3D(nn.Module):
    """Four branches: 1x1x1; 1x1x1 -> separable 3; 1x1x1 -> separable 3; 3x3x3 max pool -> 1x1x1."""

    def __init__(self, cin: int, b0: int, b1_mid: int, b1: int, b2_mid: int, b2: int, b3: int) -> None:
        super().__init__()
        self.branch0 = ConvNormAct(cin, b0)
        self.branch1 = nn.Sequential(ConvNormAct(cin, b1_mid), TemporalSeparableConv(b1_mid, b1, 3, 1, 1))
        self.branch2 = nn.Sequential(ConvNormAct(cin, b2_mid), TemporalSeparableConv(b2_mid, b2, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), ConvNormAct(cin, b3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


# (in, b0, b1_mid, b1, b2_mid, b2, b3) of the Inception blocks, torchvision's / the paper's widths
_INCEPTION = {
    "3b": (192, 64, 96, 128, 16, 32, 32), "3c": (256, 128, 128, 192, 32, 96, 64),
    "4b": (480, 192, 96, 208, 16, 48, 64), "4c": (512, 160, 112, 224, 24, 64, 64),
    "4d": (512, 128, 128, 256, 24, 64, 64), "4e": (512, 112, 144, 288, 32, 64, 64),
    "4f": (528, 256, 160, 320, 32, 128, 128), "5b": (832, 256, 160, 320, 32, 128, 128),
    "5c": (832, 384, 192, 384, 48, 128, 128),
}


class S3D(PretrainedBackbone):
    """S3D with torchvision's parameter names.

    Args:
        num_classes: logits (400 = the Kinetics-400 checkpoint's head).
        dropout: before the head (0.2 as torchvision).
        in_channels: 1 (grey CT, repeated to RGB) or 3.
        normalize: apply the Kinetics mean/std to inputs in [0, 1].
    """

    spatial_dims = 3
    feature_dim = 1024
    head_path = "classifier.1"
    encoder_state_prefixes = ("features",)

    def __init__(self, num_classes: int = 400, dropout: float = 0.2, in_channels: int = 1,
                 normalize: bool = True) -> None:
        super().__init__()
        self._init_input(in_channels, normalize, KINETICS_MEAN, KINETICS_STD)
        self.num_classes = num_classes
        pool_hw = dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.features = nn.Sequential(
            TemporalSeparableConv(3, 64, 7, 2, 3),
            nn.MaxPool3d(**pool_hw),
            ConvNormAct(64, 64),
            TemporalSeparableConv(64, 192, 3, 1, 1),
            nn.MaxPool3d(**pool_hw),
            SepInceptionBlock3D(*_INCEPTION["3b"]),
            SepInceptionBlock3D(*_INCEPTION["3c"]),
            nn.MaxPool3d(kernel_size=3, stride=2, padding=1),
            *(SepInceptionBlock3D(*_INCEPTION[k]) for k in ("4b", "4c", "4d", "4e", "4f")),
            nn.MaxPool3d(kernel_size=2, stride=2),
            SepInceptionBlock3D(*_INCEPTION["5b"]),
            SepInceptionBlock3D(*_INCEPTION["5c"]),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Conv3d(1024, num_classes, kernel_size=1))

    @property
    def head_dropout(self) -> nn.Module | None:  # type: ignore[override]
        return self.classifier[0] if "classifier" in self._modules else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last Inception block's features (B, 1024, T/8, H/32, W/32) (sides rounded up)."""
        return self.features(self._prepare(x))

    def encoder_only(self) -> S3D:
        if "classifier" in self._modules:
            del self.classifier
        return self

    def replace_head(self, num_classes: int) -> S3D:
        if "classifier" not in self._modules:
            self.classifier = nn.Sequential(nn.Dropout(0.0), nn.Conv3d(1024, num_classes, kernel_size=1))
        return super().replace_head(num_classes)  # type: ignore[return-value]


@register_model("s3d")
def s3d(**kwargs: object) -> S3D:
    """S3D (torchvision Kinetics-400 ``s3d-d76dad2f.pth`` loads); arguments of :class:`S3D`."""
    return S3D(**kwargs)  # type: ignore[arg-type]
