"""Encoder + global average pooling + classification head.

Used for the classification proxy tasks (rotation, flip, jigsaw...) and for fine-tuning
classification targets (NCC, ECC, PE): Zhou et al. (2021) fine-tune the Models Genesis encoder with
GAP -> Linear(512, 1024) -> ReLU -> Linear(1024, n); Tariq et al. (2023) append compression and
classification layers to the VQ-VAE encoder.

Contract: the pretrained network is ``model.backbone``; its parameter names are those of the
network alone (``down_tr64.ops.0.conv1.weight`` for ``unet3d``), so encoder weights load with
``model.backbone.load_state_dict(..., strict=False)`` or ``genesis.weights.load_weights(model.backbone, ...)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from genesis.models._blocks import spatial_mean
from genesis.models.base import MODELS, register_model
from genesis.models.heads import ClassificationHead


class EncoderClassifier(nn.Module):
    """A registered encoder-decoder network used as an encoder, pooled, then classified.

    Args:
        encoder: registered network name with ``forward_features`` (``"unet3d"``, ``"unet2d"``, ``"vqvae"``).
        encoder_kwargs: constructor arguments of the encoder (e.g. ``{"base_width": 32}``).
        num_classes: number of logits (1 for binary targets trained with BCE-with-logits).
        hidden: hidden width of the head (1024, the reference), None for a linear head.
        dropout: dropout in the head.
        keep_decoder: keep the decoder in ``backbone`` (its parameters are then unused, which
            distributed training must be told about); by default it is dropped.
        **encoder_overrides: further encoder arguments, merged over ``encoder_kwargs``
            (so ``create_model("encoder_classifier", encoder="unet3d", base_width=8)`` works).
    """

    def __init__(
        self,
        encoder: str = "unet3d",
        encoder_kwargs: Mapping[str, Any] | None = None,
        num_classes: int = 2,
        hidden: int | None = 1024,
        dropout: float = 0.0,
        keep_decoder: bool = False,
        **encoder_overrides: Any,
    ) -> None:
        super().__init__()
        self.encoder_name = encoder
        self.backbone = MODELS.get(encoder)(**{**dict(encoder_kwargs or {}), **encoder_overrides})
        if not hasattr(self.backbone, "forward_features"):
            raise ValueError(f"model {encoder!r} has no forward_features and cannot be used as an encoder")
        if not keep_decoder and hasattr(self.backbone, "encoder_only"):
            self.backbone.encoder_only()
        self.head = ClassificationHead(self.backbone.feature_dim, num_classes, hidden=hidden, dropout=dropout)
        self.num_classes = num_classes
        self._backbone_frozen = False

    @property
    def feature_dim(self) -> int:
        return int(self.backbone.feature_dim)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled encoder features (B, feature_dim)."""
        return spatial_mean(self.backbone.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes)."""
        return self.head(self.forward_features(x))

    def freeze_backbone(self, freeze: bool = True) -> EncoderClassifier:
        """Stop (or restart) training the backbone: no gradients and its batch norm kept in eval mode.

        Keeping the frozen backbone in eval mode means its running statistics stay those of
        pretraining (a true linear probe / frozen-feature evaluation).
        """
        for p in self.backbone.parameters():
            p.requires_grad_(not freeze)
        self._backbone_frozen = freeze
        self.train(self.training)
        return self

    def train(self, mode: bool = True) -> EncoderClassifier:
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()


@register_model("encoder_classifier")
def encoder_classifier(**kwargs: Any) -> EncoderClassifier:
    """Encoder + GAP + head; keyword arguments of :class:`EncoderClassifier`."""
    return EncoderClassifier(**kwargs)
