"""VoCo (Wu, Zhuang and Chen, CVPR 2024): volume contrast, predicting where a crop lies from its
similarity to base crops.

The sampler cuts a region ``grid`` times the network's input (:meth:`VoCo.sample_crop`); the region
is split into ``prod(grid)`` non-overlapping *base crops* (the cells of the grid) and ``n_random``
*random crops* of the same size are cut at random integer positions inside it. The label of a random
crop ``j`` and a base crop ``i`` is their overlap as a fraction of the crop's volume, ``y_ji`` (the
fractions of a crop sum to 1). Every crop goes through the backbone (pooled) and the projector; the
predicted overlap is ``l_ji = ReLU(cos(p_j, q_i))`` (bases detached), and the loss is

    L = -mean_{j, i} log(1 - |y_ji - l_ji|)  +  reg_weight * 2 / (n (n - 1)) sum_{i < k} ReLU(cos(q_i, q_k))

(Eq. 3, position prediction, and Eq. 5, the regularisation that pushes the bases of a volume apart;
ReLU and the detached bases as in the authors' code and nnssl's port). Everything is per volume:
no gathering across DDP ranks is needed (the global loss is the mean of the per-rank losses).

Defaults (the paper's): a 4 x 4 grid in plane (``grid=(1, 4, 4)``: 16 bases, the region as deep as one
crop), a 3-layer projector of width 2048 with batch norm without affine parameters or running
statistics (the released head), ``reg_weight`` 1; ``n_random`` 4 (nnssl's). Each crop also gets the
intensity scale/shift and Gaussian noise of the other views (no spatial transform: it would change
the overlaps). 2D: one random axial slice of the region, the in-plane grid ``grid[1:]``.

Validation: the mean absolute overlap error ``val_overlap_mae`` against predicting the mean overlap
(``val_mean_overlap_mae``, i.e. 1 / n for every base), and how often the base with the largest
predicted overlap is the one with the largest true overlap (``val_top1``) against chance
``val_chance = 1 / n``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.methods._contrastive import projection_mlp, voco_logits, voco_prediction_loss, voco_regularisation
from genesis.methods._embedding import EmbeddingModel, backbone_spec, build_backbone, embedding_parts, middle_image
from genesis.methods._views import ViewConfig, crops_at, grid_cells, intensity_jitter, random_slices
from genesis.methods.base import Method, NetworkRequest, NetworkSpec, Parts, register_method


@dataclass
class VoCoViews:
    """``input``: the base crops of every volume (B * n, C, *crop), then its random crops (B * K, ...);
    ``overlaps`` (B, K, n): each random crop's overlap fractions with the bases; ``offsets`` (B, K, dims)
    the random crops' corners in ``region`` (B, C, *region)."""

    input: torch.Tensor
    overlaps: torch.Tensor
    offsets: torch.Tensor
    region: torch.Tensor
    grid: tuple[int, ...]

    @property
    def n_bases(self) -> int:
        return int(self.overlaps.shape[2])

    @property
    def n_random(self) -> int:
        return int(self.overlaps.shape[1])


def overlap_fractions(offsets: torch.Tensor, cell: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
    """Overlap of crops of side ``cell`` at ``offsets`` (B, K, dims) with each grid cell, as a fraction
    of the crop's volume: (B, K, prod(grid)), cells in :func:`grid_cells`' raster order."""
    dims = len(grid)
    index = torch.cartesian_prod(*[torch.arange(g, device=offsets.device) for g in grid]).view(-1, dims)
    size = torch.tensor(cell, device=offsets.device)
    start = index * size  # (n, dims) corners of the cells
    lo = torch.maximum(offsets[:, :, None, :], start[None, None])
    hi = torch.minimum(offsets[:, :, None, :] + size, start[None, None] + size)
    return ((hi - lo).clamp_min(0).float() / size.float()).prod(dim=-1)


def voco_views(region: torch.Tensor, grid: tuple[int, ...], n_random: int, generator: torch.Generator,
               cfg: ViewConfig) -> VoCoViews:
    """Base crops, random crops and their overlaps for a batch of regions (B, C, *sides)."""
    b, _, *sides = region.shape
    if any(s % g for s, g in zip(sides, grid)):
        raise ValueError(f"voco: a {tuple(grid)} grid does not divide regions of sides {tuple(sides)}; "
                         "the sampler must cut sample_crop(crop)")
    cell = tuple(s // g for s, g in zip(sides, grid))
    n = int(np.prod(grid))
    crops = torch.empty((b * (n + n_random), region.shape[1], *cell), dtype=region.dtype, device=region.device)
    grid_cells(region, grid, out=crops[: b * n])  # the cells copied once, straight into the batch
    offsets = torch.stack([torch.randint(0, s - c + 1, (b, n_random), generator=generator, device=region.device)
                           for s, c in zip(sides, cell)], dim=-1)
    crops[b * n:] = crops_at(region, offsets, cell).flatten(0, 1)
    crops = intensity_jitter(crops, generator, cfg, inplace=True)
    return VoCoViews(input=crops, overlaps=overlap_fractions(offsets, cell, grid), offsets=offsets,
                     region=region, grid=tuple(grid))


@register_method("voco")
class VoCo(Method):
    """VoCo (see the module docstring).

    Args:
        grid: base crops per axis (D, H, W) of the region (2D uses ``grid[1:]``).
        n_random: random crops per volume.
        hidden / dim / layers: projector sizes (the released head: 2048, 2048, 3 layers).
        reg_weight: weight of the base-crop regularisation.
        intensity_scale, intensity_shift, noise_std: intensity augmentation of every crop.
    """

    name = "voco"
    family = "contrastive"
    paper = "Wu et al. 2024 (VoCo, CVPR)"
    dims = (2, 3)
    monitor_key = "val_loss"
    log_keys = ("val_overlap_mae", "val_mean_overlap_mae", "val_top1", "val_chance")

    def __init__(self, grid: tuple[int, int, int] = (1, 4, 4), n_random: int = 4, hidden: int = 2048,
                 dim: int = 2048, layers: int = 3, reg_weight: float = 1.0, intensity_scale: float = 0.25,
                 intensity_shift: float = 0.1, noise_std: float = 0.05) -> None:
        grid = tuple(int(g) for g in grid)  # type: ignore[assignment]
        if len(grid) != 3 or min(grid) < 1 or int(np.prod(grid[1:])) < 2:
            raise ConfigError(f"voco needs a grid of 3 positive counts (D, H, W) with at least 2 cells in plane, got {grid}")
        if n_random < 1 or reg_weight < 0 or min(hidden, dim, layers) < 1:
            raise ConfigError(f"voco needs n_random >= 1, reg_weight >= 0 and positive projector sizes, got "
                              f"{n_random}, {reg_weight}, {hidden}, {dim}, {layers}")
        self.base_grid, self.n_random = grid, int(n_random)
        self.hidden, self.dim, self.layers, self.reg_weight = int(hidden), int(dim), int(layers), float(reg_weight)
        try:
            self.view_cfg = ViewConfig(intensity_scale=intensity_scale, intensity_shift=intensity_shift,
                                       noise_std=noise_std)
        except ValueError as exc:
            raise ConfigError(f"voco: {exc}") from None
        self._dims: int | None = None

    def sample_crop(self, crop: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(int(c) * g for c, g in zip(crop, self.base_grid))  # type: ignore[return-value]

    def grid_for(self, dims: int) -> tuple[int, ...]:
        return self.base_grid if dims == 3 else self.base_grid[1:]

    def network(self, request: NetworkRequest) -> NetworkSpec:
        """The backbone for crops of ``request.crop`` (the region the sampler cuts) / ``grid``."""
        self._dims = int(request.dims)
        region = tuple(int(c) for c in request.crop)
        if len(region) != 3 or any(c % g for c, g in zip(region, self.base_grid)):
            raise ConfigError(f"voco: a {self.base_grid} grid does not divide sub-volumes of {region}")
        cell = tuple(c // g for c, g in zip(region, self.base_grid))
        return backbone_spec(replace(request, crop=cell), self.name)

    def build_model(self, spec: NetworkSpec) -> nn.Module:
        backbone = build_backbone(spec, self._dims, self.name)
        projector = projection_mlp(backbone.feature_dim, self.hidden, self.dim, layers=self.layers, batch_norm=True,
                                   bn_affine=False, bn_running_stats=False)
        return EmbeddingModel(backbone, projector)

    def parts(self, spec: NetworkSpec) -> Parts:
        return embedding_parts(spec)

    def views(self, cubes: torch.Tensor, generator: torch.Generator, dims: int) -> VoCoViews:
        region = random_slices(cubes, generator) if dims == 2 else cubes
        return voco_views(region, self.grid_for(dims), self.n_random, generator, self.view_cfg)

    def count(self, views: VoCoViews) -> int:
        return int(views.overlaps.shape[0] * views.n_random)

    def forward(self, model: nn.Module, views: VoCoViews) -> torch.Tensor:
        return model(views.input)

    def _split(self, outputs: torch.Tensor, views: VoCoViews) -> tuple[torch.Tensor, torch.Tensor]:
        b = views.overlaps.shape[0]
        z = outputs.float()
        return z[: b * views.n_bases].view(b, views.n_bases, -1), z[b * views.n_bases:].view(b, views.n_random, -1)

    def loss(self, outputs: torch.Tensor, views: VoCoViews) -> tuple[torch.Tensor, dict[str, float]]:
        bases, randoms = self._split(outputs, views)
        prediction = voco_prediction_loss(voco_logits(randoms, bases), views.overlaps)
        regularisation = voco_regularisation(bases)
        return prediction + self.reg_weight * regularisation, {"prediction": float(prediction.detach()),
                                                               "regularisation": float(regularisation.detach())}

    def validation(self, outputs: torch.Tensor, views: VoCoViews) -> dict[str, float]:
        bases, randoms = self._split(outputs, views)
        logits, y = voco_logits(randoms, bases), views.overlaps.float()
        mean = y.mean()  # the constant predictor: 1 / n for crops inside the region
        hits = (logits.argmax(-1) == y.argmax(-1)).float()
        count = self.count(views)
        return {"val_overlap_mae": float((logits - y).abs().mean(-1).sum()),
                "val_mean_overlap_mae": float((y - mean).abs().mean(-1).sum()),
                "val_top1": float(hits.sum()), "val_chance": count / views.n_bases}

    def grid(self, views: VoCoViews, outputs: torch.Tensor, path: Path, title: str, n: int) -> None:
        from genesis.viz import save_grid

        bases, randoms = self._split(outputs, views)
        logits = voco_logits(randoms, bases)
        b = views.overlaps.shape[0]
        shape = (-1, views.grid[-1])  # a 3D grid's depth cells stacked over its rows
        first = b * views.n_bases
        rows, titles = [], []
        for i in range(min(n, b)):
            rows.append([middle_image(views.region[i]), middle_image(views.input[first + i * views.n_random]),
                         views.overlaps[i, 0].view(shape).cpu().numpy(), logits[i, 0].detach().view(shape).cpu().numpy()])
            titles.append(f"sample {i}")
        save_grid(rows, path, row_titles=titles, title=title,
                  col_titles=["region", "random crop 1", "overlap (true)", "overlap (predicted)"])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "grid": list(self.base_grid), "n_random": self.n_random,
                "projector": [self.hidden, self.dim, self.layers], "reg_weight": self.reg_weight,
                "views": asdict(self.view_cfg)}
