"""The Models Genesis U-Net (Zhou et al., Medical Image Analysis 2021), 3D and 2D.

One dimension-agnostic implementation (:class:`GenesisUNet`, ``spatial_dims`` 2 or 3); ``unet3d`` is
the network of the official PyTorch release and keeps its parameter names
(``down_tr64.ops.0.conv1.weight`` ... ``out_tr.final_conv.weight``) so ``Genesis_Chest_CT.pt`` loads
with ``load_state_dict``. At ``base_width=32``:

======================  ===========  =========================================================
``up_mode``             parameters   what
======================  ===========  =========================================================
``"transpose"``         19.07 M      official PyTorch release (ConvTranspose k2 s2 upsampling)
``"upsample"``          16.32 M      Keras release variant (nearest-neighbour UpSampling3D)
======================  ===========  =========================================================

The network returns **logits**; apply ``torch.sigmoid`` outside (the restoration loss in
:mod:`genesis.training.losses` does), which keeps mixed precision stable and lets segmentation
fine-tuning use ``BCEWithLogits``/Dice-with-sigmoid losses.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from genesis.models._blocks import ConvBNReLU, check_input, check_spatial_dims, conv, conv_transpose, max_pool
from genesis.models.base import register_model

UpMode = Literal["transpose", "upsample"]


# ----------------------------------------------------------------------------------------- blocks
class DownTransition(nn.Module):
    """Two conv units, then 2x max-pooling except at the bottom level (``pool=False``).

    Level ``depth`` maps ``in_channels -> w * 2**depth -> w * 2**(depth + 1)`` (w = base width).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, width: int, depth: int, pool: bool, bn_compat: bool
    ) -> None:
        super().__init__()
        mid = width * 2**depth
        self.ops = nn.Sequential(
            ConvBNReLU(spatial_dims, in_channels, mid, bn_compat),
            ConvBNReLU(spatial_dims, mid, 2 * mid, bn_compat),
        )
        self.maxpool = max_pool(spatial_dims) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (pooled output for the next level, features before pooling for the skip)."""
        skip = self.ops(x)
        return self.maxpool(skip), skip


class UpTransition(nn.Module):
    """Upsample by 2, concatenate the skip, two conv units (``in + skip -> out -> out``)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        up_mode: UpMode,
        bn_compat: bool,
    ) -> None:
        super().__init__()
        if up_mode == "transpose":
            self.up_conv: nn.Module = conv_transpose(spatial_dims, in_channels, in_channels, kernel_size=2, stride=2)
        else:  # parameter-free, as the Keras release's UpSampling3D
            self.up_conv = nn.Upsample(scale_factor=2, mode="nearest")
        self.ops = nn.Sequential(
            ConvBNReLU(spatial_dims, in_channels + skip_channels, out_channels, bn_compat),
            ConvBNReLU(spatial_dims, out_channels, out_channels, bn_compat),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ops(torch.cat((self.up_conv(x), skip), dim=1))


class OutputTransition(nn.Module):
    """1x1(x1) convolution to the output channels; logits (no sigmoid, unlike the reference)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.final_conv = conv(spatial_dims, in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_conv(x)


# ------------------------------------------------------------------------------------------ model
class GenesisUNet(nn.Module):
    """Models Genesis U-Net: 4 encoder levels, 3 decoder levels with skips, 1x1 output conv.

    Args:
        spatial_dims: 3 (volumes, (B, C, D, H, W)) or 2 (slices, (B, C, H, W)).
        in_channels: input channels (1 for CT).
        out_channels: output channels of the final 1x1 conv (1 for restoration).
        base_width: channels of the first conv (32 in the paper); level widths are
            (w, 2w) (2w, 4w) (4w, 8w) (8w, 16w), bottom features have ``16 * w`` channels.
        up_mode: ``"transpose"`` (official PyTorch release) or ``"upsample"`` (Keras release).
        bn_batch_stats_in_eval: compatibility switch reproducing the reference batch norm that uses
            batch statistics even in eval mode. Leave off except to reproduce reference numbers.

    Input sides must be divisible by 8 (three 2x poolings); otherwise an
    :class:`~genesis.models._blocks.InputShapeError` (a ``ValueError``) names the shape.
    """

    #: parameter-name prefixes of the encoder (for loading/freezing encoder weights).
    encoder_state_prefixes: tuple[str, ...] = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
    #: input sides must be multiples of this.
    size_multiple: int = 8

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 32,
        up_mode: UpMode = "transpose",
        bn_batch_stats_in_eval: bool = False,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if up_mode not in ("transpose", "upsample"):
            raise ValueError(f"up_mode must be 'transpose' or 'upsample', got {up_mode!r}")
        if base_width < 1:
            raise ValueError(f"base_width must be positive, got {base_width}")
        d, w, bn = spatial_dims, base_width, bn_batch_stats_in_eval
        self.spatial_dims = d
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_width = w
        self.up_mode = up_mode
        self.has_decoder = True

        self.down_tr64 = DownTransition(d, in_channels, w, 0, True, bn)  # -> 2w
        self.down_tr128 = DownTransition(d, 2 * w, w, 1, True, bn)  # -> 4w
        self.down_tr256 = DownTransition(d, 4 * w, w, 2, True, bn)  # -> 8w
        self.down_tr512 = DownTransition(d, 8 * w, w, 3, False, bn)  # -> 16w (bottom)
        self.up_tr256 = UpTransition(d, 16 * w, 8 * w, 8 * w, up_mode, bn)
        self.up_tr128 = UpTransition(d, 8 * w, 4 * w, 4 * w, up_mode, bn)
        self.up_tr64 = UpTransition(d, 4 * w, 2 * w, 2 * w, up_mode, bn)
        self.out_tr = OutputTransition(d, 2 * w, out_channels)

    @property
    def feature_dim(self) -> int:
        """Channels of the bottom features (``16 * base_width``, 512 at the paper's width)."""
        return 16 * self.base_width

    @property
    def bn_batch_stats_in_eval(self) -> bool:
        """Whether batch norm uses batch statistics in eval mode (reference-defect compatibility)."""
        return any(m.bn_batch_stats_in_eval for m in self.modules() if isinstance(m, ConvBNReLU))

    @bn_batch_stats_in_eval.setter
    def bn_batch_stats_in_eval(self, value: bool) -> None:
        for m in self.modules():
            if isinstance(m, ConvBNReLU):
                m.bn_batch_stats_in_eval = bool(value)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features: the three skips (full, 1/2, 1/4 resolution) and the bottom (1/8).

        Raises:
            InputShapeError: wrong rank, channel count, or sides not divisible by 8.
        """
        check_input(
            x, spatial_dims=self.spatial_dims, in_channels=self.in_channels, multiple=8, model=type(self).__name__
        )
        features = []
        for level in (self.down_tr64, self.down_tr128, self.down_tr256):
            x, skip = level(x)
            features.append(skip)
        bottom, _ = self.down_tr512(x)
        features.append(bottom)
        return features

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits from the output of :meth:`encode`."""
        if not self.has_decoder:
            raise RuntimeError(f"{type(self).__name__} was made encoder-only; it has no decoder")
        skip64, skip128, skip256, x = features
        x = self.up_tr256(x, skip256)
        x = self.up_tr128(x, skip128)
        x = self.up_tr64(x, skip64)
        return self.out_tr(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Bottom features (B, 16 * base_width, D/8, H/8, W/8)."""
        return self.encode(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the same spatial size as ``x`` (apply ``sigmoid`` for intensities in [0, 1])."""
        return self.decode(self.encode(x))

    def replace_output(self, out_channels: int) -> GenesisUNet:
        """Swap the final 1x1 conv for a freshly initialised one (segmentation fine-tuning)."""
        device = self.out_tr.final_conv.weight.device
        self.out_tr = OutputTransition(self.spatial_dims, 2 * self.base_width, out_channels).to(device)
        self.out_channels = out_channels
        return self

    def encoder_only(self) -> GenesisUNet:
        """Drop the decoder (e.g. inside a classifier, so DDP sees no unused parameters).

        Encoder parameter names are unchanged, so encoder weights still load.
        """
        for name in ("up_tr256", "up_tr128", "up_tr64", "out_tr"):
            delattr(self, name)
        self.has_decoder = False
        return self


class UNet3D(GenesisUNet):
    """The Models Genesis 3D U-Net (official PyTorch release; see :class:`GenesisUNet`)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 32,
        up_mode: UpMode = "transpose",
        bn_batch_stats_in_eval: bool = False,
    ) -> None:
        super().__init__(3, in_channels, out_channels, base_width, up_mode, bn_batch_stats_in_eval)


@register_model("unet3d")
def unet3d(**kwargs: object) -> UNet3D:
    """Models Genesis 3D U-Net; keyword arguments of :class:`UNet3D`."""
    return UNet3D(**kwargs)  # type: ignore[arg-type]
