"""MAE's light decoder (He et al., CVPR 2022): mask tokens, transformer blocks, a linear patch predictor.

The encoder sees the visible patches only; the decoder gets their encodings back at their grid
positions, a shared learnable mask token at every masked position, a fixed sin-cos position
embedding, ``depth`` transformer blocks (MONAI's ``TransformerBlock``) and a linear layer that
predicts every voxel of every patch. It is a pretraining head: fine-tuning drops it.

Paper defaults: width 512, 8 blocks, 16 heads, MLP ratio 4. MONAI's 3D sin-cos embedding needs a
width divisible by 6, so in 3D the width defaults to 384 (MONAI's ``MaskedAutoEncoderViT``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from genesis.models.base import register_model

#: decoder width when none is given, by spatial dims (paper: 512; 3D: see the module docstring)
DEFAULT_WIDTH = {2: 512, 3: 384}


class MAEDecoder(nn.Module):
    """Reconstruct every patch from the encodings of the visible ones.

    Args:
        grid: the patch grid (e.g. (2, 4, 4)); its product is the number of patches L.
        encoder_dim: width of the encoder's tokens.
        patch_voxels: values predicted per patch (prod(patch) * channels).
        width: decoder width (None: :data:`DEFAULT_WIDTH`).
        depth, num_heads, mlp_ratio: decoder transformer size.
    """

    def __init__(self, grid: Sequence[int], encoder_dim: int, patch_voxels: int, width: int | None = None,
                 depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        dims = len(self.grid)
        width = int(width or DEFAULT_WIDTH[dims])
        if width % (2 * dims):
            raise ValueError(f"decoder width {width}: MONAI's {dims}D sin-cos embedding needs a multiple of {2 * dims}")
        if width % num_heads:
            raise ValueError(f"decoder width {width} is not divisible by num_heads {num_heads}")
        self.num_patches = math.prod(self.grid)
        self.embed = nn.Linear(encoder_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)  # as MAE's initialisation
        from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
        from monai.networks.blocks.transformerblock import TransformerBlock

        self.pos_embedding = build_sincos_position_embedding(list(self.grid), width, dims)  # fixed (no grad)
        self.blocks = nn.Sequential(*[TransformerBlock(width, int(width * mlp_ratio), num_heads, qkv_bias=True)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.pred = nn.Linear(width, patch_voxels)

    def forward(self, latent: torch.Tensor, keep_index: torch.Tensor) -> torch.Tensor:
        """Patch predictions (B, L, patch_voxels).

        Args:
            latent: encoder outputs of the visible patches (B, N, encoder_dim).
            keep_index: their grid positions (B, N), indices into the L patches.
        """
        x = self.embed(latent)
        b, n, width = x.shape
        full = self.mask_token.to(x.dtype).expand(b, self.num_patches, width)
        full = full.scatter(1, keep_index.unsqueeze(-1).expand(b, n, width), x)
        full = full + self.pos_embedding.to(x.dtype)
        return self.pred(self.norm(self.blocks(full)))


@register_model("mae_decoder")
def mae_decoder(**kwargs: object) -> MAEDecoder:
    """MAE's light decoder; keyword arguments of :class:`MAEDecoder`."""
    return MAEDecoder(**kwargs)  # type: ignore[arg-type]
