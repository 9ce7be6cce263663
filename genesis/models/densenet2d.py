"""DenseNet-121 with torchvision's parameter names, without torchvision (Huang et al., CVPR 2017).

The CheXpert baseline network (Irvin et al., 2019; CheXNet, Rajpurkar et al., 2017) and the
smaller model of the in-domain chest X-ray study (Awatramani et al.). Names and shapes are
torchvision's ``densenet121`` (``features.conv0.weight``, ``features.denseblock1.denselayer1.norm1.weight``,
``features.transition1.conv.weight``, ``features.norm5.weight``, ``classifier.weight``), so the
IMAGENET1K_V1 checkpoint loads; its file still uses the old names (``norm.1``, ``conv.2``) that
torchvision renames on loading, and so does :func:`genesis.weights.convert.rename_legacy_densenet_keys`.

Input handling is :class:`~genesis.models._pretrained.PretrainedBackbone`'s, as for the 2D ResNets:
a grey image (B, 1, H, W) in [0, 1] is repeated to RGB and ImageNet-normalised; a window of slices
(B, 1, D, H, W) goes through slice by slice. The head is ``classifier`` (torchvision's name); one
logit per label gives the multi-label head of CheXpert (``replace_head(14)``, sigmoid per label).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from genesis.models._blocks import InputShapeError
from genesis.models._pretrained import IMAGENET_MEAN, IMAGENET_STD, PretrainedBackbone
from genesis.models.base import register_model


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck, ``bn_size * growth`` channels) -> BN-ReLU-3x3 conv (``growth``)."""

    def __init__(self, in_features: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(in_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_features, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers (``denselayer1`` ...), each seeing every earlier output."""

    def __init__(self, num_layers: int, in_features: int, bn_size: int, growth_rate: int, drop_rate: float) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(f"denselayer{i + 1}",
                            DenseLayer(in_features + i * growth_rate, growth_rate, bn_size, drop_rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (halves the channels) -> 2x2 average pooling."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(in_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet2d(PretrainedBackbone):
    """2D DenseNet-BC with torchvision's parameter names.

    Args:
        growth_rate: channels each dense layer adds (32).
        block_config: dense layers per block ((6, 12, 24, 16) for DenseNet-121).
        num_init_features: channels of the stem convolution (64).
        bn_size: bottleneck width factor (4).
        drop_rate: dropout after each dense layer (0).
        num_classes: output logits (1000 = the ImageNet head; 14 for CheXpert's observations).
        in_channels: 1 (grey, repeated to RGB) or 3.
        normalize: apply the ImageNet mean/std to inputs in [0, 1].
    """

    spatial_dims = 2
    input_ranks = (4, 5)
    encoder_state_prefixes = ("features",)

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 1,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        self._init_input(in_channels, normalize, IMAGENET_MEAN, IMAGENET_STD)
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv0=nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False),
            norm0=nn.BatchNorm2d(num_init_features),
            relu0=nn.ReLU(inplace=True),
            pool0=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        n = num_init_features
        for i, num_layers in enumerate(block_config):
            layers[f"denseblock{i + 1}"] = DenseBlock(num_layers, n, bn_size, growth_rate, drop_rate)
            n += num_layers * growth_rate
            if i != len(block_config) - 1:
                layers[f"transition{i + 1}"] = Transition(n, n // 2)
                n //= 2
        layers["norm5"] = nn.BatchNorm2d(n)
        self.features = nn.Sequential(layers)
        self.feature_dim = n
        self.num_classes = num_classes
        self.classifier: nn.Module | None = nn.Linear(n, num_classes)
        self._init_weights()
        for m in self.modules():  # torchvision's DenseNet: zero bias, otherwise the base scheme
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _slice_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.features(self._prepare(x)))  # torchvision applies this ReLU after norm5

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last features after ReLU: (B, 1024, H/32, W/32), or (B, 1024, D, H/32, W/32) for windows."""
        self._check_input(x)
        if x.dim() == 4:
            return self._slice_features(x)
        b, c, d, h, w = x.shape
        feats = self._slice_features(x.transpose(1, 2).reshape(b * d, c, h, w))
        return feats.reshape(b, d, *feats.shape[1:]).transpose(1, 2)

    def _head(self) -> nn.Module:
        head = getattr(self, "classifier", None)
        if head is None:
            raise RuntimeError(f"{type(self).__name__} was made encoder-only; it has no classifier")
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes): ``classifier`` on globally averaged features."""
        return self._head()(self.forward_features(x).flatten(2).mean(2))

    def slice_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-slice logits (B, D, num_classes) of a window (B, C, D, H, W) (max over a study, Ke et al.)."""
        head = self._head()
        if x.dim() != 5:
            raise InputShapeError(f"slice_logits expects a window (B, C, D, H, W), got shape {tuple(x.shape)}")
        return head(self.forward_features(x).flatten(3).mean(3).transpose(1, 2))

    def replace_head(self, num_classes: int) -> DenseNet2d:
        """A new linear ``classifier`` (e.g. 14 logits for the CheXpert observations)."""
        device = self.features.conv0.weight.device
        self.classifier = nn.Linear(self.feature_dim, num_classes).to(device)
        nn.init.zeros_(self.classifier.bias)
        self.num_classes = num_classes
        return self

    def encoder_only(self) -> DenseNet2d:
        """Drop ``classifier`` (the network then serves as a backbone)."""
        if "classifier" in self._modules:
            del self.classifier
        return self


@register_model("densenet121")
def densenet121(**kwargs: object) -> DenseNet2d:
    """DenseNet-121 (torchvision ImageNet checkpoints load); other arguments of :class:`DenseNet2d`."""
    return DenseNet2d(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, **kwargs)  # type: ignore[arg-type]
