"""2D analogue of the Models Genesis U-Net (same structure, 2D layers; see :mod:`genesis.models.unet3d`)."""

from __future__ import annotations

from genesis.models.base import register_model
from genesis.models.unet3d import GenesisUNet, UpMode


class UNet2D(GenesisUNet):
    """Models Genesis U-Net on slices (B, C, H, W); sides divisible by 8. Returns logits."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_width: int = 32,
        up_mode: UpMode = "transpose",
        bn_batch_stats_in_eval: bool = False,
    ) -> None:
        super().__init__(2, in_channels, out_channels, base_width, up_mode, bn_batch_stats_in_eval)


@register_model("unet2d")
def unet2d(**kwargs: object) -> UNet2D:
    """Models Genesis 2D U-Net; keyword arguments of :class:`UNet2D`."""
    return UNet2D(**kwargs)  # type: ignore[arg-type]
