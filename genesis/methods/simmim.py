"""SimMIM (Xie et al., CVPR 2022): a learnable mask token in place of the hidden patches, a linear
decoder, L1 on the masked voxels; 2D and 3D, ViT or CNN.

* **ViT** (``--model vit``, the default): every patch is embedded, the embeddings of the masked
  patches are replaced by one learnable mask token (before the position embedding, as SimMIM does),
  the encoder sees all tokens and a linear layer per token (SimMIM's 1x1 convolution + pixel
  shuffle) predicts the voxels of its patch.
* **CNN** (``unet3d``, ``unet2d``, ``nnunet``...): the masked voxels of the input are replaced by
  a learnable value per channel, and the network (whose last layer is a 1x1 convolution, the
  linear decoder) restores the image.

Loss: mean absolute error over the masked voxels against the raw intensities. Paper defaults: mask
ratio 0.6, mask patches of 32 over a model patch of 16 (ViT-B/16); a mask patch must be a multiple
of the ViT's patch.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.methods._masking import (MaskedImageMethod, image_network_spec,
                                      image_sides, patch_grid, patch_tuple, unpatchify, vit_spec)
from genesis.methods.base import NetworkRequest, NetworkSpec, Parts, register_method
from genesis.models.sparse import upsample_grid


class SimMIMViT(nn.Module):
    """SimMIM's trained module on a ViT: ``backbone``, ``mask_token`` and the linear ``decoder`` (heads)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_token = nn.Parameter(torch.zeros(1, 1, backbone.hidden_size))
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # SimMIM's initialisation
        self.decoder = nn.Linear(backbone.hidden_size, backbone.patch_embedding.patch_dim)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The whole image predicted (B, C, *sides); ``mask`` (B, *mask grid) may be coarser than the tokens."""
        vit = self.backbone
        tokens = vit.patch_tokens(image)
        hidden = upsample_grid(mask, vit.grid).reshape(tokens.shape[0], -1, 1)  # mask at token resolution
        tokens = torch.where(hidden, self.mask_token.to(tokens.dtype), tokens)
        latent = vit.encode_tokens(vit.add_position(tokens))
        return unpatchify(self.decoder(latent), vit.patch_size, vit.grid, vit.in_channels)


@register_method("simmim")
class SimMIM(MaskedImageMethod):
    """SimMIM (see the module docstring).

    Args:
        mask_ratio: fraction of mask patches hidden (0.6).
        mask_patch_size: side of the mask patches (32).
        model_patch_size: the ViT's patch side (16; a divisor of ``mask_patch_size``).
    """

    name = "simmim"
    paper = "Xie et al. 2022 (SimMIM)"
    monitor_key = "val_masked_l1"
    log_keys = ("val_masked_l1", "val_mask_mean_l1")
    loss_kind = "l1"

    def __init__(self, mask_ratio: float = 0.6, mask_patch_size: int = 32, model_patch_size: int = 16) -> None:
        super().__init__(mask_ratio)
        self.mask_patch_size = int(mask_patch_size)
        self.model_patch_size = int(model_patch_size)
        self.form = "vit"

    def bind(self, spec: NetworkSpec) -> None:
        self.form = "vit" if spec.name == "vit" else "cnn"

    def patch(self, dims: int) -> tuple[int, ...]:
        return patch_tuple(self.mask_patch_size, dims)

    def network(self, request: NetworkRequest) -> NetworkSpec:
        name = "vit" if request.model == "auto" else request.model
        sides = image_sides(request)
        patch_grid(sides, self.patch(request.dims), "simmim mask patch")
        if name == "vit":
            if self.mask_patch_size % self.model_patch_size:
                raise ConfigError(f"simmim: mask_patch_size {self.mask_patch_size} must be a multiple of the ViT's "
                                  f"model_patch_size {self.model_patch_size}")
            spec = vit_spec(request, sides, self.model_patch_size, self.name, "model_patch_size")
        else:
            spec = image_network_spec(name, request, self.name)
        self.bind(spec)
        return spec

    cnn_mask_token = True

    def vit_module(self, backbone: nn.Module) -> nn.Module:
        return SimMIMViT(backbone)

    def parts(self, spec: NetworkSpec) -> Parts:
        return self.parts_for(spec, ("mask_token", "decoder.") if spec.name == "vit" else ("mask_token",))

    def settings(self) -> Mapping[str, Any]:
        return {"mask_ratio": self.mask_ratio, "mask_patch_size": self.mask_patch_size,
                "model_patch_size": self.model_patch_size, "form": self.form}
