"""SimCLR (Chen et al., ICML 2020): two random views of every sample, a projector, NT-Xent.

Each sub-volume (or one random axial slice of it, 2D) gets two views
(:func:`genesis.methods._views.random_resized_views`: random crop resized back, flips, intensity
scale/shift, Gaussian noise); both go through the backbone (global average pooled features) and the
projector ``Linear(F, hidden) -> ReLU -> Linear(hidden, dim)``; the loss is NT-Xent over the 2N
embeddings of the global batch (gathered across DDP ranks with gradients, as Barlow Twins does).

Defaults: the paper's projector (hidden 2048, output 128) and crop scale (0.08, 1); temperature
0.5, the paper's best value for its smaller batches (CIFAR-10, Appendix B.9: 0.5 at batch 256-4096),
rather than the 0.1 it uses at batch 4096 on ImageNet: 3D batches here are tens of samples, where
a low temperature leaves the loss dominated by the single hardest negative.

Validation: NT-Xent on the (per-rank) batch, and how often the nearest other embedding of an
anchor is its positive (``val_top1``) against chance ``val_chance = 1 / (2N - 1)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.methods._contrastive import nt_xent, positive_top1, projection_mlp
from genesis.methods._embedding import EmbeddingModel, backbone_spec, build_backbone, embedding_parts, middle_image
from genesis.methods._views import ViewConfig, random_resized_views, random_slices
from genesis.methods.base import Method, NetworkRequest, NetworkSpec, Parts, register_method


@dataclass
class PairViews:
    """Two views of every sample: ``input`` (2N, C, *sides) is view 1 of samples 0..N-1, then view 2;
    ``source`` (N, C, *sides) what they were cut from."""

    input: torch.Tensor
    source: torch.Tensor


def view_config(scale: Any, flip_prob: float, intensity_scale: float, intensity_shift: float,
                noise_std: float) -> ViewConfig:
    """:class:`ViewConfig` from method parameters; a bad range is a :class:`ConfigError`."""
    try:
        return ViewConfig(tuple(scale), flip_prob, intensity_scale, intensity_shift, noise_std)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid view parameters: {exc}") from None


def two_views(cubes: torch.Tensor, generator: torch.Generator, dims: int, cfg: ViewConfig) -> PairViews:
    """Both views of every cube (of one random axial slice of it for ``dims == 2``) in one resampling."""
    source = random_slices(cubes, generator) if dims == 2 else cubes
    views = random_resized_views(torch.cat([source, source], 0), generator, cfg)
    return PairViews(input=views, source=source)


def pair_grid(views: PairViews, path: Path, title: str, n: int, similarity: torch.Tensor) -> None:
    """Rows of (source, view 1, view 2) with the cosine similarity of the two views' embeddings."""
    from genesis.viz import save_grid

    b = views.source.shape[0]
    k = min(n, b)
    rows = [[middle_image(views.source[i]), middle_image(views.input[i]), middle_image(views.input[b + i])]
            for i in range(k)]
    save_grid(rows, path, row_titles=[f"sample {i}: cos {float(similarity[i]):.2f}" for i in range(k)],
              col_titles=["source", "view 1", "view 2"], title=title)


@register_method("simclr")
class SimCLR(Method):
    """SimCLR (see the module docstring).

    Args:
        temperature: NT-Xent temperature (0.5; the paper: 0.1 at batch 4096, 0.5 for small batches).
        hidden / dim: projector hidden and output sizes (the paper: 2048 and 128).
        scale, flip_prob, intensity_scale, intensity_shift, noise_std: view ranges (:class:`ViewConfig`).
    """

    name = "simclr"
    family = "contrastive"
    paper = "Chen et al. 2020 (SimCLR)"
    dims = (2, 3)
    monitor_key = "val_loss"
    log_keys = ("val_top1", "val_chance")

    def __init__(self, temperature: float = 0.5, hidden: int = 2048, dim: int = 128,
                 scale: tuple[float, float] = (0.08, 1.0), flip_prob: float = 0.5, intensity_scale: float = 0.25,
                 intensity_shift: float = 0.1, noise_std: float = 0.05) -> None:
        if temperature <= 0 or hidden < 1 or dim < 1:
            raise ConfigError(f"simclr needs temperature > 0, hidden >= 1 and dim >= 1, got {temperature}, {hidden}, {dim}")
        self.temperature, self.hidden, self.dim = float(temperature), int(hidden), int(dim)
        self.view_cfg = view_config(scale, flip_prob, intensity_scale, intensity_shift, noise_std)
        self._dims: int | None = None  # the request's dims, once network() resolved them

    def network(self, request: NetworkRequest) -> NetworkSpec:
        self._dims = int(request.dims)
        return backbone_spec(request, self.name)

    def build_model(self, spec: NetworkSpec) -> nn.Module:
        backbone = build_backbone(spec, self._dims, self.name)
        return EmbeddingModel(backbone, projection_mlp(backbone.feature_dim, self.hidden, self.dim))

    def parts(self, spec: NetworkSpec) -> Parts:
        return embedding_parts(spec)

    def views(self, cubes: torch.Tensor, generator: torch.Generator, dims: int) -> PairViews:
        return two_views(cubes, generator, dims, self.view_cfg)

    def forward(self, model: nn.Module, views: PairViews) -> torch.Tensor:
        return model(views.input)

    def loss(self, outputs: torch.Tensor, views: PairViews) -> tuple[torch.Tensor, dict[str, float]]:
        z1, z2 = outputs.float().chunk(2, dim=0)
        return nt_xent(z1, z2, self.temperature), {}

    def validation(self, outputs: torch.Tensor, views: PairViews) -> dict[str, float]:
        z1, z2 = outputs.float().chunk(2, dim=0)
        anchors = outputs.shape[0]
        return {"val_nt_xent": float(nt_xent(z1, z2, self.temperature, gather=False)) * anchors,
                "val_top1": float(positive_top1(z1, z2).sum()),
                "val_chance": anchors / (anchors - 1)}

    def grid(self, views: PairViews, outputs: torch.Tensor, path: Path, title: str, n: int) -> None:
        z1, z2 = outputs.float().chunk(2, dim=0)
        pair_grid(views, path, title, n, torch.nn.functional.cosine_similarity(z1, z2, dim=1))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "temperature": self.temperature,
                "projector": [self.hidden, self.dim], "views": asdict(self.view_cfg)}
