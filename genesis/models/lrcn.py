"""LRCN: a 2D ImageNet network per slice, a GRU over the slices, a linear head (Ke et al., 2023).

Long-term recurrent convolutional network (Donahue et al., CVPR 2015) as the 2D-with-context
baseline of Ke et al.: "an ResNeXt-101 backbone connected through GRU layers", trained on windows of
consecutive slices. The paper gives no further detail; our choices: global-average-pooled slice
features, a unidirectional one-layer GRU of width 512, and the last hidden state (of each direction)
classified by one linear layer (``pool="mean"``/``"max"`` pool the GRU outputs over slices instead).

The 2D network is ``model.backbone`` with torchvision's parameter names (its ImageNet head dropped),
so ``genesis.weights.load_weights(model, "resnext101_32x8d.imagenet1k_v1")`` fills it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from genesis.models._blocks import InputShapeError
from genesis.models.base import MODELS, register_model

POOLS = ("last", "mean", "max")


class LRCN(nn.Module):
    """2D backbone per slice -> GRU over slices -> linear head.

    Args:
        backbone: a registered 2D network with ``forward_features`` on (B, C, D, H, W) windows
            (``resnext101_32x8d`` as Ke et al., ``resnet18``, ``resnet50`` ...).
        num_classes: logits (1 for PE / nodule present in the window).
        hidden_size: GRU width.
        num_layers: stacked GRU layers.
        bidirectional: read the slices in both directions.
        dropout: between GRU layers and before the head.
        pool: ``"last"`` hidden state, or ``"mean"``/``"max"`` of the GRU outputs over slices.
        in_channels, normalize: of the backbone (1 = grey repeated to RGB; ImageNet mean/std).
        backbone_kwargs: further backbone arguments.
    """

    def __init__(
        self,
        backbone: str = "resnext101_32x8d",
        num_classes: int = 1,
        hidden_size: int = 512,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        pool: str = "last",
        in_channels: int = 1,
        normalize: bool = True,
        backbone_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        net = MODELS.get(backbone)(in_channels=in_channels, normalize=normalize, **dict(backbone_kwargs or {}))
        if getattr(net, "spatial_dims", None) != 2 or 5 not in getattr(net, "input_ranks", ()):
            raise ValueError(f"LRCN needs a 2D backbone that takes windows of slices; {backbone!r} is not one")
        self.backbone_name = backbone
        self.backbone = net.encoder_only()
        self.gru = nn.GRU(
            int(net.feature_dim), hidden_size, num_layers=num_layers, batch_first=True,
            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0,
        )
        self.pool = pool
        self.directions = 2 if bidirectional else 1
        self.feature_dim = hidden_size * self.directions
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.num_classes = num_classes

    def slice_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features of every slice, (B, D, backbone feature_dim)."""
        if x.dim() != 5:
            raise InputShapeError(f"LRCN expects a window (B, C, D, H, W), got shape {tuple(x.shape)}")
        return self.backbone.forward_features(x).flatten(3).mean(3).transpose(1, 2)

    def sequence_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GRU outputs (B, D, feature_dim) and final hidden states (layers * directions, B, hidden)."""
        return self.gru(self.slice_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Window features (B, feature_dim), pooled over slices as ``pool`` says."""
        outputs, hidden = self.sequence_features(x)
        if self.pool == "last":  # last layer's final state of each direction (backward: after slice 0)
            return hidden[-self.directions:].transpose(0, 1).reshape(x.shape[0], -1)
        return outputs.mean(1) if self.pool == "mean" else outputs.amax(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of a window (B, C, D, H, W)."""
        return self.fc(self.dropout(self.forward_features(x)))

    def replace_head(self, num_classes: int) -> LRCN:
        """New (freshly initialised) linear head."""
        device = self.fc.weight.device
        self.fc = nn.Linear(self.feature_dim, num_classes).to(device)
        self.num_classes = num_classes
        return self


@register_model("lrcn")
def lrcn(**kwargs: Any) -> LRCN:
    """LRCN (ResNeXt-101 + GRU by default); keyword arguments of :class:`LRCN`."""
    return LRCN(**kwargs)
