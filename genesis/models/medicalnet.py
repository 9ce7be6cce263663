"""MedicalNet (Med3D) 3D ResNets on MONAI's implementation: ``resnet18_3d``, ``resnet50_3d`` ...

Chen, Ma & Zheng, Med3D: Transfer Learning for 3D Medical Image Analysis (arXiv:1904.00625, 2019).
MONAI's :class:`monai.networks.nets.ResNet` has the MedicalNet parameter names (``conv1.weight``,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight`` ...) once the checkpoint's ``module.``
prefix is stripped (``genesis.weights.load_weights`` does that). The defaults are those the released
weights need: one input channel, no classifier, and the shortcut type / downsample bias of
``monai.networks.nets.resnet.get_medicalnet_pretrained_resnet_args`` (parameter-free shortcut "A"
for depths 18 and 34; "B", a 1x1 convolution without bias, for 10 and 50 and deeper).

Registered as ``resnet{10,18,34,50,101,152,200}_3d`` so the names do not collide with the 2D
ImageNet ``resnet18``/``resnet50``. The first convolution strides 2 in every axis, as MedicalNet's
(MONAI's own default is 1); MedicalNet's dilated last stages (a segmentation backbone) are not
reproduced, which changes no parameter.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from genesis.models._blocks import InputShapeError
from genesis.models.base import register_model


@functools.cache
def _medicalnet_class() -> type:
    """:class:`MedicalNetResNet`, defined on first use: it subclasses MONAI's ResNet, and importing
    MONAI takes 1.5-5 s that ``import genesis.models`` (every network module) should not cost."""
    from monai.networks.nets.resnet import ResNet, get_inplanes, get_medicalnet_pretrained_resnet_args, resnet_params

    class MedicalNetResNet(ResNet):
        """A MONAI 3D ResNet with the baselines' API (``forward_features``, ``feature_dim``, ``replace_head``).

        Args:
            depth: 10, 18, 34, 50, 101, 152 or 200.
            num_classes: logits of a linear head; None (default) builds no head, as the MedicalNet
                checkpoints have none, and ``forward`` then returns pooled features (MONAI's behaviour).
            feed_forward: MONAI's switch for the head; default: a head exactly when ``num_classes`` is given.
            shortcut_type, bias_downsample: default to what the MedicalNet weights of ``depth`` need.
            n_input_channels: 1 (CT) by default.
            conv1_t_stride: stride of the first convolution (2, as MedicalNet).
            normalize: z-score each sample over its voxels first (MedicalNet normalises each volume by its
                own mean/std; our inputs are usually windowed to [0, 1] instead, so off by default).
            **kwargs: further :class:`monai.networks.nets.ResNet` arguments (``spatial_dims``, ``conv1_t_size``,
                ``no_max_pool``, ``widen_factor``, ``act``, ``norm``).
        """

        encoder_state_prefixes = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")

        def __init__(
            self,
            depth: int = 18,
            num_classes: int | None = None,
            feed_forward: bool | None = None,
            shortcut_type: str | None = None,
            bias_downsample: bool | None = None,
            n_input_channels: int = 1,
            conv1_t_stride: int | tuple[int, ...] = 2,
            normalize: bool = False,
            **kwargs: Any,
        ) -> None:
            key = f"resnet{depth}"
            if key not in resnet_params:
                raise ValueError(f"depth must be one of 10, 18, 34, 50, 101, 152, 200, got {depth!r}")
            block, layers, *_ = resnet_params[key]
            default_bias, default_shortcut = get_medicalnet_pretrained_resnet_args(depth)
            if feed_forward is None:
                feed_forward = num_classes is not None
            if feed_forward and num_classes is None:
                raise ValueError("feed_forward=True needs num_classes")
            super().__init__(
                block=block,
                layers=layers,
                block_inplanes=get_inplanes(),
                n_input_channels=n_input_channels,
                conv1_t_stride=conv1_t_stride,
                shortcut_type=default_shortcut if shortcut_type is None else shortcut_type,
                bias_downsample=default_bias if bias_downsample is None else bias_downsample,
                num_classes=num_classes if num_classes is not None else 1,
                feed_forward=feed_forward,
                **kwargs,
            )
            self.depth = depth
            self.spatial_dims = int(kwargs.get("spatial_dims", 3))
            self.in_channels = n_input_channels
            self.normalize = normalize
            self.num_classes = num_classes if feed_forward else None
            self.feature_dim = int(self.in_planes)  # MONAI leaves it at the last stage's output width

        def _prepare(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
                axes = "(B, C, D, H, W)" if self.spatial_dims == 3 else f"(B, C, {self.spatial_dims} spatial axes)"
                raise InputShapeError(
                    f"{type(self).__name__} expects {axes} with C={self.in_channels}, got shape {tuple(x.shape)}"
                )
            if self.normalize:
                dims = tuple(range(1, x.dim()))
                x = (x - x.mean(dim=dims, keepdim=True)) / x.std(dim=dims, keepdim=True).clamp_min(1e-6)
            return x

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            """Last-stage features (B, feature_dim, D/32, H/32, W/32) (rounded up; default strides)."""
            x = self.act(self.bn1(self.conv1(self._prepare(x))))
            if not self.no_max_pool:
                x = self.maxpool(x)
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            """Logits (B, num_classes), or pooled features (B, feature_dim) when there is no head."""
            pooled = self.forward_features(x).flatten(2).mean(2)
            return pooled if self.fc is None else self.fc(pooled)

        def replace_head(self, num_classes: int) -> MedicalNetResNet:
            """New (freshly initialised) linear head of ``num_classes`` logits."""
            device = next(self.parameters()).device
            self.fc = nn.Linear(self.feature_dim, num_classes).to(device)
            self.num_classes = num_classes
            return self

        def encoder_only(self) -> MedicalNetResNet:
            """Drop the head (``forward`` then returns pooled features)."""
            self.fc = None
            self.num_classes = None
            return self

    MedicalNetResNet.__qualname__ = "MedicalNetResNet"  # pickles and prints as this module's class
    MedicalNetResNet.__module__ = __name__
    return MedicalNetResNet


def __getattr__(name: str) -> Any:
    """``MedicalNetResNet`` is built on first access (PEP 562), see :func:`_medicalnet_class`."""
    if name == "MedicalNetResNet":
        return _medicalnet_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register(depth: int) -> None:
    name = f"resnet{depth}_3d"

    def build(**kwargs: Any) -> MedicalNetResNet:
        return _medicalnet_class()(depth=depth, **kwargs)

    build.__name__ = name
    build.__doc__ = f"MedicalNet 3D ResNet-{depth} (MONAI); arguments of :class:`MedicalNetResNet`."
    register_model(name)(build)


for _depth in (10, 18, 34, 50, 101, 152, 200):
    _register(_depth)
