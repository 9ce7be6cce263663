"""VQ-VAE encoder-decoder without skip connections (Tariq et al. 2023, after van den Oord et al. 2017).

Encoder: strided convolutions (each halves every side), a stack of residual blocks, a 1x1 projection
to the codebook dimension. Bottleneck: vector quantisation against a codebook (reference 512 codes of
dimension 64, commitment 0.25) with the straight-through estimator. Decoder: the mirror image
(residual blocks, transposed convolutions). No skip connections, so all information passes through
the quantised code. Works on slices (``spatial_dims=2``, the paper) and volumes (``spatial_dims=3``).

The forward pass returns :class:`~genesis.models.base.ModelOutput` with ``output`` = logits,
``aux_loss`` = codebook + commitment loss, ``metrics`` = ``perplexity`` and ``codebook_usage``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from genesis.models._blocks import check_input, check_spatial_dims
from genesis.models.base import ModelOutput, register_model


class VectorQuantizer(nn.Module):
    """Nearest-codebook-vector quantisation with the VQ-VAE loss (van den Oord et al. 2017, eq. 3).

    ``loss = ||sg[z] - e||^2 + beta * ||z - sg[e]||^2`` (means over elements): the first term moves
    the codebook towards the encoder outputs, the second (commitment) keeps the encoder close to its
    codes. Gradients reach the encoder through the straight-through estimator
    ``z + sg[e - z]``. MONAI only ships an EMA-updated quantiser (used when ``VQVAE(ema=True)``),
    hence this loss-updated one, which is what Tariq et al. describe.

    Args:
        num_embeddings: codebook size K.
        embedding_dim: code dimension (channels of the encoder output).
        commitment_cost: beta.
    """

    def __init__(self, num_embeddings: int = 512, embedding_dim: int = 64, commitment_cost: float = 0.25) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_embeddings, 1.0 / num_embeddings)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise channel vectors of ``z`` (B, C, *sides).

        Returns:
            (straight-through quantised z, VQ loss scalar, code indices (B, *sides)).
        """
        # Distances in float32: under fp16 autocast the expanded squared norms lose the nearest code.
        with torch.autocast(z.device.type, enabled=False):
            z32 = z.float()
            flat = z32.movedim(1, -1).reshape(-1, self.embedding_dim)
            codebook = self.embedding.weight.float()
            distances = (
                flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codebook.t() + codebook.pow(2).sum(1)[None, :]
            )
            indices = distances.argmin(dim=1)
            quantized = codebook[indices].view(*z.shape[:1], *z.shape[2:], self.embedding_dim).movedim(-1, 1)
            codebook_loss = F.mse_loss(quantized, z32.detach())
            commitment_loss = F.mse_loss(z32, quantized.detach())
            loss = codebook_loss + self.commitment_cost * commitment_loss
            quantized = z32 + (quantized - z32).detach()
        return quantized.to(z.dtype), loss, indices.view(z.shape[:1] + z.shape[2:])


def codebook_metrics(indices: torch.Tensor, num_embeddings: int) -> dict[str, float]:
    """Perplexity (exp of the entropy of code frequencies) and fraction of codes used in ``indices``."""
    counts = torch.bincount(indices.flatten(), minlength=num_embeddings).float()
    probs = counts / counts.sum()
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    usage = (counts > 0).float().mean()
    return {"perplexity": float(perplexity), "codebook_usage": float(usage)}


class VQVAE(nn.Module):
    """Vector-quantised autoencoder for restoration proxy tasks (Tariq et al. 2023, Fig. 1a).

    Args:
        spatial_dims: 2 (slices (B, C, H, W), the paper) or 3 (volumes (B, C, D, H, W)).
        in_channels, out_channels: image channels in and out (1 for CT).
        channels: widths of the strided convolutions; each halves every side, so input sides must be
            divisible by ``2 ** len(channels)``.
        num_res_blocks: residual blocks after the downsampling (and before the upsampling).
        num_embeddings, embedding_dim: codebook size and code dimension (reference 512 x 64).
        commitment_cost: beta of the VQ loss (reference 0.25).
        ema: update the codebook by exponential moving averages (MONAI's ``EMAQuantizer``) instead of
            by the codebook loss; the aux loss is then the commitment term only.
        ema_decay: decay of the EMA updates.
        norm: normalisation layer of the conv blocks (a MONAI name such as ``"BATCH"``, or None).
        act: activation of the conv blocks (MONAI name).

    Returns (forward): :class:`ModelOutput` with logits of the input's shape, the VQ loss and
    codebook metrics.
    """

    #: parameter-name prefixes of the encoder (loaded/frozen as "the encoder").
    encoder_state_prefixes: tuple[str, ...] = ("encoder",)

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (64, 128),
        num_res_blocks: int = 2,
        num_embeddings: int = 512,
        embedding_dim: int = 64,
        commitment_cost: float = 0.25,
        ema: bool = False,
        ema_decay: float = 0.99,
        norm: str | None = None,
        act: str = "RELU",
    ) -> None:
        # MONAI's blocks, imported when a VQ-VAE is built: importing MONAI takes 1.5-5 s, which
        # `import genesis.models` (every network module) should not cost
        from monai.networks.blocks import Convolution, ResidualUnit
        from monai.networks.layers.vector_quantizer import EMAQuantizer

        super().__init__()
        d = check_spatial_dims(spatial_dims)
        if not channels:
            raise ValueError("channels must list at least one downsampling width")
        self.spatial_dims = d
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = tuple(channels)
        self.embedding_dim = embedding_dim
        self.num_embeddings = num_embeddings
        self.size_multiple = 2 ** len(self.channels)
        self.has_decoder = True
        width = self.channels[-1]

        down: list[nn.Module] = []
        widths_in = (in_channels, *self.channels[:-1])
        for cin, cout in zip(widths_in, self.channels):
            down.append(Convolution(d, cin, cout, strides=2, kernel_size=4, padding=1, act=act, norm=norm))
        res = [ResidualUnit(d, width, width, subunits=2, act=act, norm=norm) for _ in range(num_res_blocks)]
        project = Convolution(d, width, embedding_dim, kernel_size=1, conv_only=True)
        self.encoder = nn.Sequential(*down, *res, project)

        self.quantizer: nn.Module
        if ema:
            self.quantizer = EMAQuantizer(d, num_embeddings, embedding_dim, commitment_cost, decay=ema_decay)
        else:
            self.quantizer = VectorQuantizer(num_embeddings, embedding_dim, commitment_cost)

        up: list[nn.Module] = [Convolution(d, embedding_dim, width, kernel_size=3, act=act, norm=norm)]
        up += [ResidualUnit(d, width, width, subunits=2, act=act, norm=norm) for _ in range(num_res_blocks)]
        widths_out = (out_channels, *self.channels[:-1])
        for i in reversed(range(len(self.channels))):
            last = i == 0
            up.append(
                Convolution(
                    d, self.channels[i], widths_out[i], strides=2, kernel_size=4, padding=1, output_padding=0,
                    is_transposed=True, act=act, norm=norm, conv_only=last,
                )
            )
        self.decoder = nn.Sequential(*up)

    @property
    def feature_dim(self) -> int:
        """Channels of :meth:`forward_features` (the code dimension)."""
        return self.embedding_dim

    def _check(self, x: torch.Tensor) -> None:
        check_input(
            x, spatial_dims=self.spatial_dims, in_channels=self.in_channels, multiple=self.size_multiple,
            model=type(self).__name__,
        )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of each strided stage, then the pre-quantisation latent ``z_e`` (last)."""
        self._check(x)
        features = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i < len(self.channels):
                features.append(x)
        features.append(x)
        return features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output ``z_e`` (B, embedding_dim, *sides / 2**len(channels))."""
        self._check(x)
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through quantised latent, VQ loss, code indices)."""
        quantized, loss, indices = self.quantizer(z)
        return quantized, loss, indices

    def decode(self, features: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`encode`'s output (or a latent ``z_e``): quantise, then decode."""
        if not self.has_decoder:
            raise RuntimeError(f"{type(self).__name__} was made encoder-only; it has no decoder")
        z = features[-1] if isinstance(features, (list, tuple)) else features
        return self.decoder(self.quantize(z)[0])

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if not self.has_decoder:
            raise RuntimeError(f"{type(self).__name__} was made encoder-only; it has no decoder")
        z = self.forward_features(x)
        quantized, vq_loss, indices = self.quantize(z)
        logits = self.decoder(quantized)
        return ModelOutput(output=logits, aux_loss=vq_loss, metrics=codebook_metrics(indices, self.num_embeddings))

    def encoder_only(self) -> VQVAE:
        """Drop quantiser and decoder (the Tariq classifier uses the encoder alone)."""
        del self.quantizer
        del self.decoder
        self.has_decoder = False
        return self


@register_model("vqvae")
def vqvae(**kwargs: object) -> VQVAE:
    """VQ-VAE of Tariq et al.; keyword arguments of :class:`VQVAE` (``spatial_dims`` 2 or 3)."""
    return VQVAE(**kwargs)  # type: ignore[arg-type]
