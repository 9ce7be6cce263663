"""MAE (He et al., CVPR 2022): hide most patches, reconstruct them; 2D and 3D, ViT or CNN.

The form follows the network:

* **ViT** (``--model vit``; MONAI's ViT, :mod:`genesis.models.vit`): the image is cut
  into patches, a random ``mask_ratio`` of them is dropped, the encoder sees the visible patches
  only, and a light transformer decoder (:mod:`genesis.models.mae_decoder`, a head) fills mask
  tokens in at the hidden positions and predicts every voxel of every patch. Loss: MSE on the
  masked patches against per-patch normalised targets (``norm_pix_loss``, the paper's best).
* **CNN** (the default, ``--model auto``: ``unet3d`` / ``unet2d``; also ``nnunet``, ``primus``: any
  image-to-image network), as nnssl /
  OpenMind (Wald et al. 2024) pretrain ResEnc-L: the masked patches are zeroed in the image, the
  network restores the image, MSE on the masked voxels against the raw intensities.

Paper defaults: mask ratio 0.75, patch 16 (ViT-B/16; nnssl's CNN mask blocks are 16 too), decoder
8 blocks of width 512 with 16 heads (3D: width 384, see :mod:`genesis.models.mae_decoder`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from genesis.methods._masking import (MaskedImageMethod, image_network_spec,
                                      image_sides, patch_grid, patch_tuple, unpatchify, vit_spec)
from genesis.methods.base import NetworkRequest, NetworkSpec, Parts, register_method
from genesis.models.mae_decoder import MAEDecoder


class MAEViT(nn.Module):
    """MAE's trained module on a ViT: ``backbone`` (the encoder) and ``decoder`` (the head)."""

    def __init__(self, backbone: nn.Module, decoder: MAEDecoder) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The whole image predicted (B, C, *sides) from its visible patches (``mask`` (B, *grid), True: hidden)."""
        vit = self.backbone
        tokens = vit.add_position(vit.patch_tokens(image))
        b, num, width = tokens.shape
        flat = mask.reshape(b, num)
        n_keep = num - int(flat[0].sum())  # every sample hides the same number of patches
        # visible patches first, in grid order (a stable sort of the mask)
        keep_index = flat.to(torch.int8).argsort(dim=1, stable=True)[:, :n_keep]
        visible = tokens.gather(1, keep_index.unsqueeze(-1).expand(b, n_keep, width))
        patches = self.decoder(vit.encode_tokens(visible), keep_index)
        return unpatchify(patches, vit.patch_size, vit.grid, vit.in_channels)


@register_method("mae")
class MAE(MaskedImageMethod):
    """Masked autoencoder (see the module docstring).

    Args:
        mask_ratio: fraction of patches hidden (0.75).
        patch_size: mask patch side (16): the ViT's patch, or the CNN form's mask block.
        norm_pix_loss: per-patch normalised targets; None: on for a ViT (MAE), off for a CNN (nnssl).
        decoder_width, decoder_depth, decoder_heads: the ViT form's decoder (None: 512 in 2D, 384 in 3D; 8; 16).
    """

    name = "mae"
    paper = "He et al. 2022 (MAE); CNN form: Wald et al. 2024 (nnssl, OpenMind)"

    def __init__(self, mask_ratio: float = 0.75, patch_size: int = 16, norm_pix_loss: bool | None = None,
                 decoder_width: int | None = None, decoder_depth: int = 8, decoder_heads: int = 16) -> None:
        super().__init__(mask_ratio)
        self.patch_size = int(patch_size)
        self.norm_pix_loss = norm_pix_loss
        self.decoder_width = decoder_width
        self.decoder_depth = int(decoder_depth)
        self.decoder_heads = int(decoder_heads)
        self.form = "vit"
        self.norm_pix = True if norm_pix_loss is None else bool(norm_pix_loss)

    def bind(self, spec: NetworkSpec) -> None:
        """The form (``vit`` or ``cnn``) and the loss target follow the network."""
        self.form = "vit" if spec.name == "vit" else "cnn"
        self.norm_pix = (self.form == "vit") if self.norm_pix_loss is None else bool(self.norm_pix_loss)

    def patch(self, dims: int) -> tuple[int, ...]:
        return patch_tuple(self.patch_size, dims)

    def network(self, request: NetworkRequest) -> NetworkSpec:
        # auto: the U-Net form (nnssl/OpenMind's MAE on a CNN, their best for segmentation). The ViT
        # form did not beat the visible-mean baseline on our small real sets after 3,000 steps
        # (benchmarks/results/mim_real.md) where the U-Net form did; --model vit selects it.
        name = f"unet{request.dims}d" if request.model == "auto" else request.model
        sides = image_sides(request)
        patch_grid(sides, self.patch(request.dims), "mae patch")
        if name == "vit":  # the ViT's patch is the mask patch
            spec = vit_spec(request, sides, self.patch_size, self.name, "patch_size")
        else:
            spec = image_network_spec(name, request, self.name)
        self.bind(spec)
        return spec

    def vit_module(self, backbone: nn.Module) -> nn.Module:
        decoder = MAEDecoder(backbone.grid, backbone.hidden_size, backbone.patch_embedding.patch_dim,
                             self.decoder_width, self.decoder_depth, self.decoder_heads)
        return MAEViT(backbone, decoder)

    def parts(self, spec: NetworkSpec) -> Parts:
        return self.parts_for(spec, ("decoder.",) if spec.name == "vit" else ())

    def settings(self) -> Mapping[str, Any]:
        out: dict[str, Any] = {"mask_ratio": self.mask_ratio, "patch_size": self.patch_size, "form": self.form}
        if self.form == "vit":
            out.update(decoder_width=self.decoder_width, decoder_depth=self.decoder_depth,
                       decoder_heads=self.decoder_heads)
        return out
