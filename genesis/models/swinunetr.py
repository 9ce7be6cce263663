"""MONAI's SwinUNETR (Hatamizadeh et al. 2022; Swin encoder pretrained by Tang et al., CVPR 2022) as a
registered network, 3D and 2D.

:class:`SwinUNETR` *is* ``monai.networks.nets.SwinUNETR`` (a subclass that adds no parameters), so
its state dict is MONAI's, key for key: weights trained here load into MONAI's own class built with
the same arguments with ``load_state_dict(..., strict=True)``. It adds what genesis asks of a
backbone: ``forward_features`` (the last stage of the Swin encoder, ``16 * feature_size`` channels at
1/32 of the input side, pooled by the methods), ``feature_dim`` and ``encoder_only`` (drops the
convolutional encoder/decoder blocks, leaving ``swinViT``, whose keys then load strictly into
MONAI's ``SwinUNETR(...).swinViT``). Restoration uses the whole network (``forward``).

MONAI's ``SwinUNETR.load_from(weights)`` reads a different layout: the self-supervised Swin
checkpoint of Tang et al. (``model_swinvit.pt``: ``{"state_dict": {"module.patch_embed...",
"module.layers1.0.blocks.0.mlp.fc1.weight", ...}}``); :func:`to_swin_ssl_checkpoint` writes our
encoder in that layout, so MONAI's and the research code's loaders take it too.
"""

from __future__ import annotations

import functools

import re
from collections.abc import Mapping
from typing import Any

import torch

from genesis.errors import ConfigError
from genesis.models.base import register_model

#: MONAI modules outside the Swin encoder (dropped by :meth:`SwinUNETR.encoder_only`).
DECODER_MODULES: tuple[str, ...] = ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10", "decoder5",
                                    "decoder4", "decoder3", "decoder2", "decoder1", "out")


@functools.cache
def _swinunetr_class() -> type:
    """:class:`SwinUNETR`, defined on first use: it subclasses MONAI's class, and importing MONAI
    takes seconds that ``import genesis.models`` (every network module) should not cost."""
    from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

    class SwinUNETR(MonaiSwinUNETR):
        """MONAI's SwinUNETR with the backbone interface of genesis networks.

        Args:
            in_channels / out_channels: image channels in and out (1 for CT restoration).
            feature_size: embedding size of the first Swin stage (a multiple of 12; 48 in Tang et al.).
            spatial_dims: 3 (volumes) or 2 (slices).
            **kwargs: every other argument of ``monai.networks.nets.SwinUNETR`` (``depths``,
                ``num_heads``, ``window_size``, ``patch_size``, ``use_v2``...).

        Input sides must be multiples of ``patch_size ** 5`` (32 by default).
        """

        def __init__(self, in_channels: int = 1, out_channels: int = 1, feature_size: int = 48, spatial_dims: int = 3,
                     **kwargs: Any) -> None:
            super().__init__(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                             spatial_dims=spatial_dims, **kwargs)
            self.spatial_dims = spatial_dims
            self.in_channels = in_channels
            self.out_channels = out_channels
            self.feature_size = feature_size
            self.has_decoder = True

        @property
        def feature_dim(self) -> int:
            """Channels of the last Swin stage (``16 * feature_size``, 768 at Tang et al.'s 48)."""
            return 16 * self.feature_size

        @property
        def size_multiple(self) -> int:
            return int(self.patch_size) ** 5

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            """The last Swin stage (B, 16 * feature_size, *sides / 32), normalised as MONAI's forward does."""
            self._check_input_size(x.shape[2:])
            return self.swinViT(x, self.normalize)[-1]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self.has_decoder:
                raise RuntimeError("SwinUNETR was made encoder-only; it has no decoder")
            return super().forward(x)

        def encoder_only(self) -> "SwinUNETR":
            """Keep only the Swin encoder (``swinViT``): no unused parameters when only features are trained."""
            for name in DECODER_MODULES:
                delattr(self, name)
            self.has_decoder = False
            return self

    return SwinUNETR


def __getattr__(name: str) -> Any:
    if name == "SwinUNETR":
        return _swinunetr_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def feature_size_for_width(width: int) -> int:
    """SwinUNETR's ``feature_size`` for genesis' ``--width``: 1.5 x width to a multiple of 12, so our
    default width 32 gives Tang et al.'s 48 and width 16 MONAI's default 24 (at least 12)."""
    return max(12, 12 * round(1.5 * int(width) / 12))


def _pretraining_kwargs(request: Any, in_channels: int, out_channels: int) -> dict[str, Any]:
    """Constructor arguments for a pretraining request (``NetworkRequest``); checks the crop.

    Raises:
        ConfigError: a crop side that is not a multiple of ``patch_size ** 5``.
    """
    kwargs: dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels, "spatial_dims": int(request.dims),
                              "feature_size": feature_size_for_width(request.width)}
    kwargs.update(dict(request.model_kwargs))
    multiple = int(kwargs.get("patch_size", 2)) ** 5
    sides = tuple(request.crop)[-int(kwargs["spatial_dims"]):]
    if any(int(s) % multiple for s in sides):
        raise ConfigError(f"swinunetr needs crop sides that are multiples of {multiple}, got {tuple(sides)}")
    return kwargs


@register_model("swinunetr")
def swinunetr(**kwargs: Any) -> Any:
    """MONAI's SwinUNETR; keyword arguments of :class:`SwinUNETR`."""
    return _swinunetr_class()(**kwargs)


swinunetr.pretraining_kwargs = _pretraining_kwargs  # type: ignore[attr-defined]


# ------------------------------------------------------------------ the Swin SSL checkpoint layout
_MLP = re.compile(r"\.mlp\.linear([12])\.")


def to_swin_ssl_checkpoint(state: Mapping[str, torch.Tensor], prefix: str = "swinViT.") -> dict[str, Any]:
    """Our Swin encoder's weights in the layout MONAI's ``SwinUNETR.load_from`` reads.

    Args:
        state: a SwinUNETR state dict (full or encoder-only), or any dict whose Swin encoder keys
            start with ``prefix``.
        prefix: the encoder's key prefix in ``state``.

    Returns:
        ``{"state_dict": {"module.<key>": tensor}}`` with MONAI's MLP names ``linear1``/``linear2``
        renamed to the checkpoint's ``fc1``/``fc2``. ``load_from`` copies the patch embedding, every
        block and the patch merging layers; SwinUNETR-v2's residual convolution blocks
        (``layers1c``...) are not in that layout and are left out.

    Raises:
        ValueError: ``state`` has no key starting with ``prefix``.
    """
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if re.match(r"layers\dc\.", name):  # SwinUNETR-v2 only; not part of the SSL checkpoint layout
            continue
        out["module." + _MLP.sub(lambda m: f".mlp.fc{m.group(1)}.", name)] = value
    if not out:
        raise ValueError(f"no Swin encoder weights (keys starting with {prefix!r}) in the state dict")
    return {"state_dict": out}


__all__ = ["SwinUNETR", "swinunetr", "to_swin_ssl_checkpoint", "feature_size_for_width", "DECODER_MODULES"]
