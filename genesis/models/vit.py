"""A 2D/3D Vision Transformer encoder (Dosovitskiy et al., ICLR 2021): MONAI's ``ViT``, token by token.

:class:`ViTEncoder` *is* :class:`monai.networks.nets.ViT` (``classification=False``): same modules and
state-dict keys (``patch_embedding.*``, ``blocks.N.*``, ``norm.*``), so its weights load into MONAI's
``ViT`` and into the ``vit`` of MONAI's ``UNETR`` with ``load_state_dict``. It adds the token-level
steps that masked image modelling needs and MONAI's forward does not expose:

* :meth:`ViTEncoder.patch_tokens`: patch embeddings before the position embedding (SimMIM swaps
  its mask token in here);
* :meth:`ViTEncoder.add_position`: add the position embedding (MAE then keeps the visible tokens);
* :meth:`ViTEncoder.encode_tokens`: the transformer blocks and the final norm on any token subset.

Defaults are ViT-B/16 (768 wide, 12 blocks, 12 heads, MLP 3072) with fixed sin-cos position
embeddings and biased q/k/v projections, as MAE (He et al. 2022) pretrains it.
"""

from __future__ import annotations

import functools
from typing import Any

import math
from collections.abc import Sequence

import torch

from genesis.models._blocks import InputShapeError, check_spatial_dims
from genesis.models.base import register_model


@functools.cache
def _vitencoder_class() -> type:
    """:class:`ViTEncoder`, defined on first use: it subclasses MONAI's class, and importing MONAI
    takes seconds that ``import genesis.models`` (every network module) should not cost."""
    from monai.networks.nets import ViT
    from monai.utils import ensure_tuple_rep

    class ViTEncoder(ViT):
        """MONAI's ViT without a classification head, with token-level access (see the module docstring).

        Args:
            spatial_dims: 2 or 3.
            in_channels: input channels.
            img_size: input sides (the position embedding is fixed to them).
            patch_size: patch sides (an int for cubes/squares); must divide ``img_size``.
            hidden_size, mlp_dim, num_layers, num_heads: transformer size (ViT-B by default).
            pos_embed_type: ``"sincos"`` (fixed, MAE) or ``"learnable"`` (UNETR's default).
            dropout_rate: dropout in the blocks.
            qkv_bias: bias of the q/k/v projections (True in MAE's ViT; MONAI's default is False).

        Raises:
            ValueError: a patch that does not divide the image, or a width the heads (or MONAI's
                sin-cos embedding: divisible by 4 in 2D, 6 in 3D) cannot split.
        """

        def __init__(
            self,
            spatial_dims: int = 3,
            in_channels: int = 1,
            img_size: Sequence[int] | int = (32, 64, 64),
            patch_size: Sequence[int] | int = 16,
            hidden_size: int = 768,
            mlp_dim: int = 3072,
            num_layers: int = 12,
            num_heads: int = 12,
            pos_embed_type: str = "sincos",
            dropout_rate: float = 0.0,
            qkv_bias: bool = True,
        ) -> None:
            check_spatial_dims(spatial_dims)
            img = tuple(int(s) for s in ensure_tuple_rep(img_size, spatial_dims))
            patch = tuple(int(p) for p in ensure_tuple_rep(patch_size, spatial_dims))
            if len(img) != spatial_dims or len(patch) != spatial_dims:
                raise ValueError(f"img_size {img_size} and patch_size {patch_size} need {spatial_dims} sides")
            if any(p < 1 or s % p for s, p in zip(img, patch)):
                raise ValueError(f"patch_size {patch} must divide img_size {img}")
            if pos_embed_type == "sincos" and hidden_size % (2 * spatial_dims):
                raise ValueError(f"hidden_size {hidden_size}: MONAI's {spatial_dims}D sin-cos position embedding needs a "
                                 f"multiple of {2 * spatial_dims}")
            super().__init__(in_channels=in_channels, img_size=img, patch_size=patch, hidden_size=hidden_size,
                             mlp_dim=mlp_dim, num_layers=num_layers, num_heads=num_heads, proj_type="conv",
                             pos_embed_type=pos_embed_type, classification=False, dropout_rate=dropout_rate,
                             spatial_dims=spatial_dims, qkv_bias=qkv_bias)
            self.spatial_dims = spatial_dims
            self.in_channels = in_channels
            self.img_size = img
            self.patch_size = patch
            self.grid = tuple(s // p for s, p in zip(img, patch))
            self.hidden_size = hidden_size

        @property
        def feature_dim(self) -> int:
            """Channels of :meth:`forward_features` (the token width)."""
            return self.hidden_size

        @property
        def num_patches(self) -> int:
            return math.prod(self.grid)

        def _check(self, x: torch.Tensor) -> None:
            if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.img_size:
                raise InputShapeError(f"ViTEncoder expects (B, {self.in_channels}, {', '.join(map(str, self.img_size))}) "
                                      f"(its position embedding is fixed to img_size), got shape {tuple(x.shape)}")

        def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
            """Patch embeddings (B, L, hidden) in raster order of the patch grid, before the position embedding."""
            self._check(x)
            return self.patch_embedding.patch_embeddings(x).flatten(2).transpose(1, 2)

        def add_position(self, tokens: torch.Tensor) -> torch.Tensor:
            """Tokens of every patch (B, L, hidden) plus the position embedding (then dropout), as MONAI's block does."""
            return self.patch_embedding.dropout(tokens + self.patch_embedding.position_embeddings)

        def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
            """The transformer blocks and the final norm on any set of tokens (B, N, hidden)."""
            for block in self.blocks:
                tokens = block(tokens)
            return self.norm(tokens)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            """Encoded tokens as a feature map (B, hidden, *grid)."""
            tokens = self.encode_tokens(self.add_position(self.patch_tokens(x)))
            return tokens.transpose(1, 2).reshape(x.shape[0], self.hidden_size, *self.grid)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            """Same as :meth:`forward_features` (MONAI's ``ViT.forward`` returns tokens and hidden states)."""
            return self.forward_features(x)

    return ViTEncoder


def __getattr__(name: str) -> Any:
    if name == "ViTEncoder":
        return _vitencoder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register_model("vit")
def vit(**kwargs: object) -> Any:
    """2D/3D ViT encoder (MONAI's ViT layout); keyword arguments of :class:`ViTEncoder`."""
    return _vitencoder_class()(**kwargs)
