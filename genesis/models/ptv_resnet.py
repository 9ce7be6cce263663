"""PyTorchVideo's video ResNets: Slow R50, R(2+1)D R50, CSN R101 (Ke et al., 2023), without pytorchvideo.

Ke et al. fine-tune these Kinetics-400 checkpoints of the PyTorchVideo model zoo. The networks are
rebuilt here with PyTorchVideo's module names so the released ``model_state`` dicts load as they
are: ``blocks.0.conv.weight`` (stem), ``blocks.1.res_blocks.0.branch1_conv.weight`` (shortcut),
``blocks.1.res_blocks.0.branch2.conv_a.weight`` / ``norm_a`` / ``conv_b`` / ``norm_b`` /
``conv_c`` / ``norm_c`` (bottleneck), ``blocks.5.proj.weight`` (head). R(2+1)D's ``conv_b`` is a
(2+1)D pair ``conv_b.conv_t`` (temporal) -> ``conv_b.norm`` -> ``conv_b.conv_xy`` (spatial).

Configurations (``pytorchvideo.models.hub``):

* ``slow_r50`` (Feichtenhofer et al., ICCV 2019, Slow-only 8x8): stem 1x7x7 + max pool; temporal
  1x1x1 ``conv_a`` in stages 1-2 and 3x1x1 in stages 3-4; 1x3x3 ``conv_b``; no temporal stride.
* ``r2plus1d_r50`` (Tran et al., CVPR 2018, 16x4): stem 1x7x7 without pool; (2+1)D 3x3x3
  ``conv_b``; spatial stride 2 in every stage, temporal stride 2 in stages 3-4; head dropout 0.5.
* ``csn_r101`` (Tran et al., ICCV 2019, ir-CSN 32x2): stem 3x7x7 + max pool; depthwise
  (one group per channel) 3x3x3 ``conv_b``; spatial strides 1,2,2,2, temporal strides 1,2,2,2.

The head keeps PyTorchVideo's ``proj`` (and its dropout) but pools globally (the published 7x7
average pool needs 224-pixel inputs; global pooling gives the same for them and works for any crop).
Inputs: (B, 1, T, H, W) grey CT (slices as frames) repeated to RGB; ``normalize=True`` applies the
PyTorchVideo mean/std 0.45/0.225 to inputs in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genesis.models._pretrained import PretrainedBackbone
from genesis.models.base import register_model

PTV_MEAN = (0.45, 0.45, 0.45)
PTV_STD = (0.225, 0.225, 0.225)
STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}

Triple = tuple[int, int, int]


def _half(kernel: Sequence[int]) -> Triple:
    return tuple(k // 2 for k in kernel)  # type: ignore[return-value]


class ResNetBasicStem(nn.Module):
    """``conv`` -> ``norm`` -> ``activation`` -> optional ``pool`` (PyTorchVideo names)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Triple, stride: Triple, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=_half(kernel), bias=False)
        self.norm = nn.BatchNorm3d(out_channels)
        self.activation = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm(self.conv(x)))
        return x if self.pool is None else self.pool(x)


class Conv2plus1d(nn.Module):
    """Temporal ``conv_t`` -> ``norm`` -> ``activation`` -> spatial ``conv_xy`` (R(2+1)D's conv_b)."""

    def __init__(self, channels: int, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.conv_t = nn.Conv3d(channels, channels, (kernel[0], 1, 1), stride=(stride[0], 1, 1),
                                padding=(kernel[0] // 2, 0, 0), bias=False)
        self.norm = nn.BatchNorm3d(channels)
        self.activation = nn.ReLU(inplace=True)
        self.conv_xy = nn.Conv3d(channels, channels, (1, kernel[1], kernel[2]), stride=(1, stride[1], stride[2]),
                                 padding=(0, kernel[1] // 2, kernel[2] // 2), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_xy(self.activation(self.norm(self.conv_t(x))))


class BottleneckBlock(nn.Module):
    """conv_a (temporal or 1x1x1) -> conv_b (spatial, (2+1)D or depthwise 3D) -> conv_c (1x1x1)."""

    def __init__(self, dim_in: int, dim_inner: int, dim_out: int, conv_a_kernel: Triple, conv_b_kernel: Triple,
                 conv_a_stride: Triple, conv_b_stride: Triple, conv_b_kind: str, groups: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(dim_in, dim_inner, conv_a_kernel, stride=conv_a_stride, padding=_half(conv_a_kernel),
                                bias=False)
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU(inplace=True)
        if conv_b_kind == "2plus1d":
            self.conv_b: nn.Module = Conv2plus1d(dim_inner, conv_b_kernel, conv_b_stride)
        else:
            self.conv_b = nn.Conv3d(dim_inner, dim_inner, conv_b_kernel, stride=conv_b_stride,
                                    padding=_half(conv_b_kernel), groups=groups, bias=False)
        self.norm_b = nn.BatchNorm3d(dim_inner)
        self.act_b = nn.ReLU(inplace=True)
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.act_b(self.norm_b(self.conv_b(x)))
        return self.norm_c(self.conv_c(x))


class ResBlock(nn.Module):
    """``branch1_conv``/``branch1_norm`` shortcut (when shape changes) + ``branch2`` bottleneck, ReLU."""

    def __init__(self, dim_in: int, dim_out: int, stride: Triple, branch2: nn.Module) -> None:
        super().__init__()
        needs_shortcut = dim_in != dim_out or any(s != 1 for s in stride)
        self.branch1_conv = nn.Conv3d(dim_in, dim_out, 1, stride=stride, bias=False) if needs_shortcut else None
        self.branch1_norm = nn.BatchNorm3d(dim_out) if needs_shortcut else None
        self.branch2 = branch2
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.branch1_conv is None else self.branch1_norm(self.branch1_conv(x))  # type: ignore[misc]
        return self.activation(shortcut + self.branch2(x))


class ResStage(nn.Module):
    """``res_blocks``: the stage's residual blocks, the first one strided."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


def make_stage(depth: int, dim_in: int, dim_inner: int, dim_out: int, conv_a_kernel: Triple, conv_b_kernel: Triple,
               spatial_stride: int, temporal_stride: int, conv_b_kind: str = "3d", groups: int = 1,
               temporal_stride_on_a: bool = True) -> ResStage:
    """One PyTorchVideo ResStage; the shortcut strides like conv_a and conv_b together.

    ``temporal_stride_on_a``: ``create_resnet``/``create_slowfast`` put the temporal stride on conv_a
    and the spatial one on conv_b; ``create_r2plus1d``/``create_csn`` put both on conv_b.
    """
    blocks: list[nn.Module] = []
    for i in range(depth):
        t, s = (temporal_stride, spatial_stride) if i == 0 else (1, 1)
        a_stride, b_stride = ((t, 1, 1), (1, s, s)) if temporal_stride_on_a else ((1, 1, 1), (t, s, s))
        d_in = dim_in if i == 0 else dim_out
        branch2 = BottleneckBlock(d_in, dim_inner, dim_out, conv_a_kernel, conv_b_kernel, a_stride, b_stride,
                                  conv_b_kind, groups)
        blocks.append(ResBlock(d_in, dim_out, (t, s, s), branch2))
    return ResStage(blocks)


class ResNetBasicHead(nn.Module):
    """``dropout`` -> ``proj`` (the published head; pooling is done by the network)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.proj = nn.Linear(in_features, num_classes)


class PTVResNet(PretrainedBackbone):
    """A PyTorchVideo-layout video ResNet (``blocks.0`` stem, ``blocks.1-4`` stages, ``blocks.5`` head).

    Args:
        variant: ``"slow"``, ``"r2plus1d"`` or ``"csn"`` (see the module docstring).
        depth: 50, 101 or 152.
        num_classes: logits (400 = the Kinetics-400 checkpoint's head).
        in_channels: 1 (grey CT, repeated to RGB) or 3.
        normalize: apply PyTorchVideo's mean/std (inputs in [0, 1]).
        dropout: head dropout (None: the published value of the variant).
    """

    spatial_dims = 3
    head_path = "blocks.5.proj"
    encoder_state_prefixes = ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4")

    def __init__(self, variant: str = "slow", depth: int = 50, num_classes: int = 400, in_channels: int = 1,
                 normalize: bool = True, dropout: float | None = None) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {sorted(_VARIANTS)}, got {variant!r}")
        if depth not in STAGE_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
        cfg = _VARIANTS[variant]
        self._init_input(in_channels, normalize, PTV_MEAN, PTV_STD)
        self.variant, self.num_classes = variant, num_classes
        blocks: list[nn.Module] = [ResNetBasicStem(3, 64, cfg["stem_kernel"], (1, 2, 2), cfg["stem_pool"])]
        dim_in, dim_out = 64, 256
        for i, n in enumerate(STAGE_DEPTHS[depth]):
            inner = dim_out // 4
            blocks.append(make_stage(
                n, dim_in, inner, dim_out, cfg["conv_a"][i], cfg["conv_b"], cfg["spatial_stride"][i],
                cfg["temporal_stride"][i], conv_b_kind=cfg["conv_b_kind"],
                groups=inner if cfg["depthwise"] else 1, temporal_stride_on_a=cfg["temporal_stride_on_a"]))
            dim_in, dim_out = dim_out, dim_out * 2
        self.feature_dim = dim_in
        blocks.append(ResNetBasicHead(dim_in, num_classes, cfg["dropout"] if dropout is None else dropout))
        self.blocks = nn.ModuleList(blocks)
        self._init_weights()

    @property
    def head_dropout(self) -> nn.Module | None:  # type: ignore[override]
        head = self.blocks[-1]
        return getattr(head, "dropout", None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features (B, 2048, T', H/32, W/32)."""
        x = self._prepare(x)
        for block in self.blocks[:5]:
            x = block(x)
        return x

    def encoder_only(self) -> PTVResNet:
        """Replace the head ``blocks.5`` by a parameter-free placeholder (full checkpoints report it unexpected)."""
        self.blocks[5] = nn.Identity()
        return self

    def replace_head(self, num_classes: int) -> PTVResNet:
        if isinstance(self.blocks[5], nn.Identity):
            self.blocks[5] = ResNetBasicHead(self.feature_dim, num_classes, 0.0)
        return super().replace_head(num_classes)  # type: ignore[return-value]


_SLOW_A = ((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1))
_VARIANTS: dict[str, dict] = {
    # pytorchvideo.models.hub.slow_r50 -> create_resnet(stem_conv_kernel_size=(1, 7, 7), head_pool (8, 7, 7))
    "slow": {"stem_kernel": (1, 7, 7), "stem_pool": True, "conv_a": _SLOW_A, "conv_b": (1, 3, 3),
             "conv_b_kind": "3d", "depthwise": False, "spatial_stride": (1, 2, 2, 2), "temporal_stride": (1, 1, 1, 1),
             "temporal_stride_on_a": True, "dropout": 0.5},
    # pytorchvideo.models.hub.r2plus1d_r50 -> create_r2plus1d(dropout_rate=0.5)
    "r2plus1d": {"stem_kernel": (1, 7, 7), "stem_pool": False, "conv_a": ((1, 1, 1),) * 4, "conv_b": (3, 3, 3),
                 "conv_b_kind": "2plus1d", "depthwise": False, "spatial_stride": (2, 2, 2, 2),
                 "temporal_stride": (1, 1, 2, 2), "temporal_stride_on_a": False, "dropout": 0.5},
    # pytorchvideo.models.hub.csn_r101 -> create_csn(model_depth=101, stem_pool=MaxPool3d, head_pool (4, 7, 7))
    "csn": {"stem_kernel": (3, 7, 7), "stem_pool": True, "conv_a": ((1, 1, 1),) * 4, "conv_b": (3, 3, 3),
            "conv_b_kind": "3d", "depthwise": True, "spatial_stride": (1, 2, 2, 2), "temporal_stride": (1, 2, 2, 2),
            "temporal_stride_on_a": False, "dropout": 0.0},
}


@register_model("slow_r50")
def slow_r50(**kwargs: object) -> PTVResNet:
    """Slow R50 8x8 (PyTorchVideo Kinetics-400 ``SLOW_8x8_R50.pyth`` loads); arguments of :class:`PTVResNet`."""
    return PTVResNet(variant="slow", depth=50, **kwargs)  # type: ignore[arg-type]


@register_model("r2plus1d_r50")
def r2plus1d_r50(**kwargs: object) -> PTVResNet:
    """R(2+1)D R50 16x4 (PyTorchVideo Kinetics-400 ``R2PLUS1D_16x4_R50.pyth`` loads)."""
    return PTVResNet(variant="r2plus1d", depth=50, **kwargs)  # type: ignore[arg-type]


@register_model("csn_r101")
def csn_r101(**kwargs: object) -> PTVResNet:
    """ir-CSN R101 32x2 (PyTorchVideo Kinetics-400 ``CSN_32x2_R101.pyth`` loads)."""
    return PTVResNet(variant="csn", depth=101, **kwargs)  # type: ignore[arg-type]
