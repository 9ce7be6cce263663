"""``--model nnunet``: exactly the network nnU-Net builds for a plans file, trained on restoration.

The network comes from nnU-Net's own builder (``get_network_from_plans`` with the configuration's
architecture, nnU-Net's weight initialisation); nothing here re-implements it. The wrapper adds
only what pretraining needs:

* a fixed affine input map from genesis' [0, 1] intensities to nnU-Net's normalised ones
  (:class:`genesis.nnunet.plans.IntensityMap`), so the network sees what nnU-Net trains on;
* one output channel (the restored image; the seg layers are replaced by nnU-Net when it fine-tunes),
  deep supervision off, and the unused intermediate seg layers frozen so DDP sees no unused parameters.

State-dict keys are nnU-Net's own under ``network.``; :mod:`genesis.nnunet.export` strips that prefix.
``nnunetv2`` is imported only when the model is built (optional extra ``genesis-ssl[nnunet]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from genesis.models.base import register_model


class NNUNetRestoration(nn.Module):
    """An nnU-Net network behind a fixed [0, 1] -> nnU-Net intensity map.

    Args:
        network: the network from nnU-Net's builder (deep supervision off).
        low, high: nnU-Net intensities that 0 and 1 map to.
        configuration: name of the plans configuration (kept for export checks).
    """

    def __init__(self, network: nn.Module, low: float, high: float, configuration: str) -> None:
        super().__init__()
        self.network = network
        self.configuration = configuration
        self.register_buffer("input_low", torch.tensor(float(low)))
        self.register_buffer("input_scale", torch.tensor(float(high) - float(low)))
        seg_layers = getattr(getattr(network, "decoder", None), "seg_layers", None)
        if seg_layers is not None:  # only the last one is used without deep supervision
            for layer in list(seg_layers)[:-1]:
                layer.requires_grad_(False)

    @property
    def spatial_dims(self) -> int:
        conv = getattr(self.network.encoder, "conv_op", nn.Conv3d)
        return 2 if conv is nn.Conv2d else 3

    @property
    def feature_dim(self) -> int:
        """Channels of the encoder's deepest stage (what contrastive methods pool)."""
        return int(self.network.encoder.output_channels[-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's deepest feature map (B, feature_dim, ...), behind the same intensity map."""
        skips = self.network.encoder(x * self.input_scale.to(x.dtype) + self.input_low.to(x.dtype))
        return skips[-1]

    def encoder_only(self) -> "NNUNetRestoration":
        """Drop nnU-Net's decoder (contrastive methods train the encoder alone); keys stay nnU-Net's."""
        self.network.decoder = nn.Identity()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, out_channels, *spatial); ``sigmoid`` gives the restored [0, 1] image."""
        out = self.network(x * self.input_scale.to(x.dtype) + self.input_low.to(x.dtype))
        return out[0] if isinstance(out, (list, tuple)) else out


@register_model("nnunet")
def nnunet(
    plans: str | Path | Mapping[str, Any],
    configuration: str = "3d_fullres",
    in_channels: int = 1,
    out_channels: int = 1,
    base_width: int | None = None,
) -> NNUNetRestoration:
    """nnU-Net's network for ``configuration`` of ``plans`` (a path or the plans dict).

    ``base_width`` is ignored: the plans fix every width. Raises ConfigError when nnunetv2 is not
    installed or the configuration does not exist.
    """
    del base_width
    from genesis.nnunet.plans import build_network, intensity_map, load_plans

    plans = load_plans(plans)
    network = build_network(plans, configuration, in_channels, out_channels, deep_supervision=False)
    imap = intensity_map(plans, configuration)
    return NNUNetRestoration(network, imap.low, imap.high, configuration)


def _pretraining_kwargs(request: Any, in_channels: int, out_channels: int) -> dict[str, Any]:
    """Pretraining hook (:func:`genesis.methods.proxy.provider_kwargs`): the plans fix the network."""
    from genesis.errors import ConfigError
    from genesis.nnunet.plans import pretrain_model_kwargs

    if not request.plans:
        raise ConfigError("--model nnunet needs --plans nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json")
    return pretrain_model_kwargs(request.plans, request.configuration, in_channels, out_channels)


def _pretraining_crop(crop: tuple[int, ...], default_crop: tuple[int, ...], width: int, default_width: int,
                      plans: str | None, configuration: str) -> tuple[int, int, int]:
    """Pretraining hook (the recipe): the configuration's patch size, checked against its strides."""
    from genesis.errors import ConfigError
    from genesis.nnunet.plans import pretrain_crop

    if not plans:
        raise ConfigError("--model nnunet needs --plans nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json")
    return pretrain_crop(plans, configuration, crop, default_crop, width, default_width)


nnunet.pretraining_kwargs = _pretraining_kwargs  # type: ignore[attr-defined]
nnunet.pretraining_crop = _pretraining_crop  # type: ignore[attr-defined]
#: the plans fix every width and the patch size (``--preset quick`` leaves them alone)
nnunet.architecture_from_plans = True  # type: ignore[attr-defined]
