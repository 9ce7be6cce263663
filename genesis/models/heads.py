"""Heads put on top of pooled encoder features."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """The Models Genesis classification head: Linear(in, hidden) -> ReLU -> Linear(hidden, n).

    Zhou et al. (2021) put Linear(512, 1024), ReLU, Linear(1024, n) on the globally average-pooled
    bottom features of the 3D U-Net encoder. ``hidden=None`` gives a single linear layer (a linear
    probe, for evaluating frozen features).

    Args:
        in_features: size of the pooled feature vector.
        num_classes: output logits (1 for a binary task trained with BCE-with-logits).
        hidden: width of the hidden layer, or None for a linear head.
        dropout: dropout before each linear layer (0 = none, the reference).
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int | None = 1024, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        if hidden is not None:
            layers += [nn.Dropout(dropout), nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
            in_features = hidden
        layers += [nn.Dropout(dropout), nn.Linear(in_features, num_classes)]
        self.layers = nn.Sequential(*[layer for layer in layers if not _is_noop_dropout(layer)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_features) -> logits (B, num_classes)."""
        return self.layers(x)


def _is_noop_dropout(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Dropout) and layer.p == 0.0
