"""Barlow Twins (Zbontar et al., ICML 2021): redundancy reduction between two views of each image.

Two random views of every image (:func:`proxy_tasks._views.random_views`: crop, flip, colour
jitter, rotation) go through the encoder and its projector (the ``encoder_classifier`` head, whose
outputs are the embeddings). Each embedding dimension is standardised over the batch, the
cross-correlation matrix ``C = z1n^T z2n / N`` of the two views is computed and the loss is

    sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2,     lambda = 5e-3 (the paper's value).

Distributed training: the embeddings of every rank are gathered with
``torch.distributed.nn.functional.all_gather`` (which passes gradients back;
:func:`genesis.device.gather_global`), so the batch
statistics and ``C`` are those of the global batch, exactly as on one device. Every rank then
computes the same loss; the gather's backward sums the W copies of each rank's gradient, and DDP's
gradient averaging divides by W, which leaves the gradient of the global loss.

Used by Awatramani et al. to pretrain a DenseNet-121 on chest radiographs.
"""

from __future__ import annotations

from typing import Any

import torch

from genesis.device import gather_global  # noqa: F401 - re-exported: shared by every batch-contrasting loss
from proxy_tasks._views import ViewConfig, random_views
from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task

BN_EPS = 1e-5  # the reference normalises with BatchNorm1d(affine=False)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, gather: bool = True) -> torch.Tensor:
    """The Barlow Twins loss of two views' embeddings (N, D) (global batch when ``gather``)."""
    if gather:
        z1, z2 = gather_global(z1), gather_global(z2)
    n = z1.shape[0]
    if n < 2:
        raise ValueError("Barlow Twins needs at least 2 samples per (global) batch to standardise embeddings")
    z1, z2 = z1.float(), z2.float()
    z1n = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + BN_EPS)
    z2n = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + BN_EPS)
    c = z1n.T @ z2n / n
    diag = torch.diagonal(c)
    on_diag = (diag - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return on_diag + lambd * off_diag


@register_task("barlow_twins")
class BarlowTwins(ProxyTask):
    """Two augmented views per image; the network outputs embeddings (B2, dim) for both halves.

    Args:
        dim: embedding (projector output) size; the paper uses 8192, smaller fits small batches.
        lambd: weight of the off-diagonal (redundancy) term (paper: 5e-3).
        scale, flip_prob, rotation_deg, brightness, contrast: view ranges (:class:`ViewConfig`).
    """

    kind = "contrastive"  # genesis.methods.barlow_twins trains it: encoder + projector head
    paper = "Zbontar et al. 2021 (Barlow Twins)"
    loss_region = "all"
    spatial_dims = 2

    def __init__(self, dim: int = 2048, lambd: float = 5e-3, scale: tuple[float, float] = (0.5, 1.0),
                 flip_prob: float = 0.5, rotation_deg: float = 10.0, brightness: float = 0.4,
                 contrast: float = 0.4) -> None:
        if dim < 2 or lambd < 0:
            raise ValueError(f"need dim >= 2 and lambd >= 0, got dim={dim}, lambd={lambd}")
        self.dim, self.lambd = int(dim), float(lambd)
        self.views = ViewConfig(tuple(scale), flip_prob, rotation_deg, brightness, contrast)  # type: ignore[arg-type]

    def output_size(self, ndim: int) -> int:
        return self.dim

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "barlow_twins", 2)
        v1 = random_views(batch, generator, self.views)
        v2 = random_views(batch, generator, self.views)
        return ProxyPair(input=torch.cat([v1, v2], 0))

    def loss(self, logits: torch.Tensor, label: Any = None) -> torch.Tensor:
        z1, z2 = logits.chunk(2, dim=0)
        return barlow_twins_loss(z1, z2, self.lambd)

    def val_metrics(self, logits: torch.Tensor, label: Any = None) -> dict[str, float]:
        """Validation sums (divided by the number of inputs by the trainer)."""
        z1, z2 = logits.float().chunk(2, dim=0)
        loss = barlow_twins_loss(z1, z2, self.lambd, gather=False)
        return {"val_bt_loss": float(loss) * logits.shape[0]}

    def describe(self, logits: torch.Tensor, label: Any = None) -> list[str]:
        return [f"view {1 + i // (logits.shape[0] // 2)}" for i in range(logits.shape[0])]
