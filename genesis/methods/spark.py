"""SparK (Tian et al., ICLR 2023): masked image modelling for CNNs with sparse-convolution semantics.

The image is masked on the encoder's coarsest grid (patch = the encoder's total stride, so every
mask patch is one position of the deepest feature map). The encoder runs *sparsely*: masked
positions are kept at zero after every convolution, pooling and normalisation, and normalisation
statistics use the visible positions only (:mod:`genesis.models.sparse`), so the encoder never
sees the mask as content. At every stage, SparK's densifying step normalises the sparse features
(sparse batch norm; instance norm for nnU-Net's instance-normed encoders), fills the masked
positions with a learnable mask token of that stage and projects them (3x3 convolution; identity at
the coarsest stage); a U-Net decoder turns the densified hierarchy into the image.

The decoder is the network's own: SparK's light decoder exists because ResNets and ConvNeXts have
none, while a U-Net's decoder is that U-Net-like densifying decoder already, and training it keeps
the whole network pretrained, as nnssl's SparK3D does for ResEnc-L. So the backbone is exactly the
network ``unet3d`` / ``unet2d`` / ``nnunet`` rebuilds (same state-dict keys; sparse semantics are
hooks and same-state subclasses, see :func:`genesis.models.sparse.sparsify`); mask tokens,
densifying norms and projections are the method's heads.

Loss: MSE on the masked patches against per-patch normalised targets. Paper defaults: mask ratio 0.6.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.methods._masking import MaskedImageMethod, build_network, image_network_spec
from genesis.models._blocks import conv
from genesis.methods.base import NetworkRequest, NetworkSpec, Parts, register_method
from genesis.models.sparse import EncoderView, SparseContext, encoder_view, sparse_norm, sparsify

#: networks that are not CNN U-Nets, with what to use instead
_NOT_CNN = {"vit": "--task mae or simmim", "primus": "--task mae"}


class SparKModel(nn.Module):
    """SparK's trained module: the ``backbone`` U-Net run sparsely, plus per-stage ``mask_tokens``,
    ``densify_norms`` and ``densify_projs`` (the heads).

    Args:
        backbone: a network :func:`~genesis.models.sparse.encoder_view` supports (made sparse in place).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self._view: EncoderView = encoder_view(backbone)  # plain attribute: no parameters of its own
        self._context = SparseContext()
        sparsify(self._view.encoder_modules, self._context)
        dims, channels = self._view.spatial_dims, self._view.channels
        norm_cls = ({2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d} if self._view.norm == "instance"
                    else {2: nn.BatchNorm2d, 3: nn.BatchNorm3d})[dims]
        self.mask_tokens = nn.ParameterList()
        for c in channels:
            token = nn.Parameter(torch.zeros(1, c, *([1] * dims)))
            nn.init.trunc_normal_(token, mean=0.0, std=0.02, a=-0.02, b=0.02)  # as SparK
            self.mask_tokens.append(token)
        self.densify_norms = nn.ModuleList(
            [sparse_norm(norm_cls(c, affine=True), self._context) for c in channels])
        last = len(channels) - 1
        self.densify_projs = nn.ModuleList(
            [nn.Identity() if i == last else conv(dims, c, c, kernel_size=3, padding=1)
             for i, c in enumerate(channels)])

    @property
    def stride(self) -> tuple[int, ...]:
        """The mask patch: the encoder's total stride."""
        return self._view.stride

    def encode_sparse(self, image: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's features (finest first) of ``image`` with the patches of ``mask`` (B, *grid) hidden."""
        with self._context.active(~mask):
            return self._encode(image)

    def _encode(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = self._view.prepare(image)
        return self._view.encode(x * self._context.at(x).to(x.dtype))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The whole image predicted (B, C, *sides) from its visible patches."""
        context = self._context
        with context.active(~mask):
            features = self._encode(image)
            dense = []
            for f, token, norm, proj in zip(features, self.mask_tokens, self.densify_norms, self.densify_projs):
                visible = context.at(f)
                dense.append(proj(torch.where(visible, norm(f), token.to(f.dtype))))
        return self._view.decode(dense)


@register_method("spark")
class SparK(MaskedImageMethod):
    """SparK (see the module docstring).

    Args:
        mask_ratio: fraction of the coarsest positions hidden (0.6).
        norm_pix_loss: per-patch normalised targets (True, as SparK).
    """

    name = "spark"
    paper = "Tian et al. 2023 (SparK)"

    def __init__(self, mask_ratio: float = 0.6, norm_pix_loss: bool = True) -> None:
        super().__init__(mask_ratio)
        self.norm_pix = bool(norm_pix_loss)
        self._stride: tuple[int, ...] | None = None

    def bind(self, spec: NetworkSpec) -> None:
        """The mask patch: the total stride of the network's encoder (built on the meta device)."""
        if spec.name in _NOT_CNN:
            raise ConfigError(f"spark pretrains CNN U-Nets (unet3d, unet2d, nnunet); for --model {spec.name} use "
                              f"{_NOT_CNN[spec.name]}")
        with torch.device("meta"):
            self._stride = encoder_view(build_network(spec, self.name)).stride

    def patch(self, dims: int) -> tuple[int, ...]:
        if self._stride is None:
            raise RuntimeError("spark: the network is not resolved yet (call network() or build_model() first)")
        if len(self._stride) != dims:
            raise ConfigError(f"spark: the network is {len(self._stride)}D but the views are {dims}D")
        return self._stride

    def network(self, request: NetworkRequest) -> NetworkSpec:
        name = request.model
        if name == "auto":
            name = "unet3d" if request.dims == 3 else "unet2d"
        if name in _NOT_CNN:
            raise ConfigError(f"spark pretrains CNN U-Nets (unet3d, unet2d, nnunet); for --model {name} use "
                              f"{_NOT_CNN[name]}")
        spec = image_network_spec(name, request, self.name)
        self.bind(spec)
        return spec

    def build_model(self, spec: NetworkSpec) -> nn.Module:
        self.bind(spec)
        return SparKModel(build_network(spec, self.name))

    def parts(self, spec: NetworkSpec) -> Parts:
        return self.parts_for(spec, ("mask_tokens.", "densify_norms.", "densify_projs."))

    def settings(self) -> Mapping[str, Any]:
        return {"mask_ratio": self.mask_ratio, "patch_size": list(self._stride) if self._stride else None}
