"""SlowFast R50 in PyTorchVideo's layout (Feichtenhofer et al., ICCV 2019; a baseline of Ke et al., 2023).

Two pathways over one window of slices: the Fast pathway sees every slice with 1/8 of the channels,
the Slow pathway every ``alpha``-th slice (alpha = 4) with full width; after the stem and each of the
first three stages a lateral 7x1x1 convolution (stride 4 in time) carries Fast features into the
Slow pathway, where they are concatenated. PyTorchVideo's names are kept so ``SLOWFAST_8x8_R50.pyth``
loads: ``blocks.0.multipathway_blocks.{0,1}`` (stems), ``blocks.{0-3}.multipathway_fusion.
conv_fast_to_slow`` / ``.norm``, ``blocks.{1-4}.multipathway_blocks.{0,1}.res_blocks...`` (stages,
as :mod:`genesis.models.ptv_resnet`), ``blocks.6.proj`` (the head on 2048 + 256 pooled channels).

The two pathways are made from one (B, C, T, H, W) window as PyTorchVideo's ``PackPathway`` does
(Slow = ``ceil(T / alpha)`` slices evenly spaced); T must be a multiple of alpha. Features are
pooled globally per pathway and concatenated (the published 8x7x7 / 32x7x7 average pools assume
224-pixel, 32-frame clips).
"""

from __future__ import annotations

import torch
from torch import nn

from genesis.models._blocks import InputShapeError
from genesis.models._pretrained import PretrainedBackbone
from genesis.models.base import register_model
from genesis.models.ptv_resnet import PTV_MEAN, PTV_STD, STAGE_DEPTHS, ResNetBasicHead, ResNetBasicStem, make_stage


class FuseFastToSlow(nn.Module):
    """``conv_fast_to_slow`` -> ``norm`` -> ``activation``, concatenated to the Slow pathway."""

    def __init__(self, fast_dim: int, ratio: int, kernel_t: int, alpha: int) -> None:
        super().__init__()
        self.conv_fast_to_slow = nn.Conv3d(fast_dim, fast_dim * ratio, (kernel_t, 1, 1), stride=(alpha, 1, 1),
                                           padding=(kernel_t // 2, 0, 0), bias=False)
        self.norm = nn.BatchNorm3d(fast_dim * ratio)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        slow, fast = xs
        fuse = self.activation(self.norm(self.conv_fast_to_slow(fast)))
        return [torch.cat([slow, fuse], 1), fast]


class MultiPathWayWithFuse(nn.Module):
    """``multipathway_blocks`` (one module per pathway) then ``multipathway_fusion``."""

    def __init__(self, blocks: list[nn.Module], fusion: nn.Module) -> None:
        super().__init__()
        self.multipathway_blocks = nn.ModuleList(blocks)
        self.multipathway_fusion = fusion

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [block(x) for block, x in zip(self.multipathway_blocks, xs)]
        return out if isinstance(self.multipathway_fusion, nn.Identity) else self.multipathway_fusion(out)


class SlowFast(PretrainedBackbone):
    """SlowFast with PyTorchVideo's parameter names.

    Args:
        depth: 50 (``slowfast_r50``) or 101.
        alpha: frame-rate ratio of the pathways (4 for the 8x8 checkpoint).
        beta_inv: channel ratio Slow / Fast (8).
        fusion_kernel: temporal kernel of the lateral connections (7 for R50, 5 for R101).
        num_classes, in_channels, normalize, dropout: as :class:`genesis.models.ptv_resnet.PTVResNet`.
    """

    spatial_dims = 3
    head_path = "blocks.6.proj"
    encoder_state_prefixes = ("blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4")

    def __init__(self, depth: int = 50, alpha: int = 4, beta_inv: int = 8, fusion_kernel: int = 7,
                 num_classes: int = 400, in_channels: int = 1, normalize: bool = True, dropout: float = 0.5) -> None:
        super().__init__()
        if depth not in STAGE_DEPTHS:
            raise ValueError(f"depth must be one of {sorted(STAGE_DEPTHS)}, got {depth}")
        self._init_input(in_channels, normalize, PTV_MEAN, PTV_STD)
        self.alpha, self.num_classes = alpha, num_classes
        ratio = 2  # channels of a lateral connection = 2 x the Fast pathway's
        slow_dim, fast_dim = 64, 64 // beta_inv
        blocks: list[nn.Module] = [MultiPathWayWithFuse(
            [ResNetBasicStem(3, slow_dim, (1, 7, 7), (1, 2, 2), True),
             ResNetBasicStem(3, fast_dim, (5, 7, 7), (1, 2, 2), True)],
            FuseFastToSlow(fast_dim, ratio, fusion_kernel, alpha))]
        conv_a = (((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)), ((3, 1, 1),) * 4)
        dim_in, dim_out = 64, 256
        for i, n in enumerate(STAGE_DEPTHS[depth]):
            slow = make_stage(n, dim_in + dim_in * ratio // beta_inv, dim_out // 4, dim_out, conv_a[0][i], (1, 3, 3),
                              1 if i == 0 else 2, 1)
            fast = make_stage(n, dim_in // beta_inv, dim_out // 4 // beta_inv, dim_out // beta_inv, conv_a[1][i],
                              (1, 3, 3), 1 if i == 0 else 2, 1)
            fusion = FuseFastToSlow(dim_out // beta_inv, ratio, fusion_kernel, alpha) if i < 3 else nn.Identity()
            blocks.append(MultiPathWayWithFuse([slow, fast], fusion))
            dim_in, dim_out = dim_out, dim_out * 2
        blocks.append(nn.Identity())  # PoolConcatPathway: parameter-free, pooling is done in pool()
        self.feature_dim = dim_in + dim_in // beta_inv
        blocks.append(ResNetBasicHead(self.feature_dim, num_classes, dropout))
        self.blocks = nn.ModuleList(blocks)
        self._init_weights()

    @property
    def head_dropout(self) -> nn.Module | None:  # type: ignore[override]
        return getattr(self.blocks[-1], "dropout", None)

    def pathways(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[Slow, Fast] inputs from one window: Slow = ceil(T / alpha) evenly spaced slices."""
        x = self._prepare(x)
        t = x.shape[2]
        if t % self.alpha:
            raise InputShapeError(f"SlowFast needs a number of slices divisible by alpha={self.alpha}, got {t}")
        index = torch.linspace(0, t - 1, t // self.alpha, device=x.device).long()
        return [x.index_select(2, index), x]

    def pathway_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Last-stage features of the two pathways: [(B, 2048, T/alpha, h, w), (B, 256, T, h, w)]."""
        xs = self.pathways(x)
        for block in self.blocks[:5]:
            xs = block(xs)
        return xs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Slow-pathway features (B, 2048, T/alpha, H/32, W/32) with the Fast features' global mean broadcast.

        The two pathways have different time axes; the map returned keeps the Slow geometry and
        appends the Fast pathway averaged over time (so global pooling equals PyTorchVideo's
        pool-and-concatenate of the two pathways).
        """
        slow, fast = self.pathway_features(x)
        fast = fast.mean(2, keepdim=True).expand(-1, -1, slow.shape[2], -1, -1)
        if fast.shape[3:] != slow.shape[3:]:  # never for equal strides; kept as a guard for odd sizes
            fast = nn.functional.adaptive_avg_pool3d(fast, slow.shape[2:])
        return torch.cat([slow, fast], 1)

    def encoder_only(self) -> SlowFast:
        self.blocks[6] = nn.Identity()
        return self

    def replace_head(self, num_classes: int) -> SlowFast:
        if isinstance(self.blocks[6], nn.Identity):
            self.blocks[6] = ResNetBasicHead(self.feature_dim, num_classes, 0.0)
        return super().replace_head(num_classes)  # type: ignore[return-value]


@register_model("slowfast_r50")
def slowfast_r50(**kwargs: object) -> SlowFast:
    """SlowFast R50 8x8 (PyTorchVideo Kinetics-400 ``SLOWFAST_8x8_R50.pyth`` loads); arguments of :class:`SlowFast`."""
    return SlowFast(depth=50, fusion_kernel=7, **kwargs)  # type: ignore[arg-type]
