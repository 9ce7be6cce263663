"""Losses and heads of the contrastive and teacher-student methods (float32, vectorised).

* :func:`nt_xent` -- SimCLR's normalised temperature-scaled cross entropy over the global batch;
* :func:`regression_loss` -- BYOL's ``2 - 2 cos`` between a prediction and a target projection;
* :func:`voco_logits`, :func:`voco_prediction_loss`, :func:`voco_regularisation` -- VoCo's volume
  contrast;
* :func:`projection_mlp` -- the projector / predictor MLPs of these papers.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from genesis.device import gather_global


def projection_mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, batch_norm: bool = False,
                   bn_affine: bool = True, bn_running_stats: bool = True) -> nn.Sequential:
    """``layers`` linear layers, ReLU between them (batch norm before each ReLU with ``batch_norm``).

    SimCLR: 2 layers, no batch norm (g(h) = W2 ReLU(W1 h)); BYOL: 2 layers with batch norm; VoCo:
    3 layers with batch norm without affine parameters nor running statistics (its released head).
    """
    if layers < 1 or min(in_dim, hidden, out_dim) < 1:
        raise ValueError(f"an MLP needs layers >= 1 and positive sizes, got {layers} layers {in_dim}->{hidden}->{out_dim}")
    mods: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        mods.append(nn.Linear(width, hidden))
        if batch_norm:
            mods.append(nn.BatchNorm1d(hidden, affine=bn_affine, track_running_stats=bn_running_stats))
        mods.append(nn.ReLU(inplace=True))
        width = hidden
    mods.append(nn.Linear(width, out_dim))
    return nn.Sequential(*mods)


# ------------------------------------------------------------------------------------ SimCLR
def _similarities(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities / temperature of the 2N embeddings, self-similarities at -inf (2N, 2N)."""
    z = F.normalize(torch.cat([z1, z2], 0).float(), dim=1)
    sim = z @ z.T / temperature
    return sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device), float("-inf"))


def _positives(n: int, device: torch.device) -> torch.Tensor:
    """Index of each of the 2N anchors' positive: view 1 of sample k <-> view 2 of sample k."""
    return torch.cat([torch.arange(n, 2 * n, device=device), torch.arange(0, n, device=device)])


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: bool = True) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two views' embeddings (N, D), over the global batch when ``gather``.

    ``l(i, j) = -log( exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t) )`` with cosine
    ``sim``, averaged over the 2N ordered positive pairs (Chen et al. 2020, Algorithm 1). Under DDP
    every rank computes the loss of the gathered global batch (:func:`genesis.device.gather_global`).

    Raises:
        ValueError: fewer than 2 samples in the (global) batch (no negative to contrast with).
    """
    if gather:
        z1, z2 = gather_global(z1), gather_global(z2)
    n = z1.shape[0]
    if n < 2:
        raise ValueError("NT-Xent needs at least 2 samples per (global) batch: with one there is no negative")
    sim = _similarities(z1, z2, temperature)
    return F.cross_entropy(sim, _positives(n, sim.device))


def positive_top1(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Per anchor (2N,): 1 where its most similar other embedding is its positive, else 0.

    Chance: 1 / (2N - 1) (the positive among the 2N - 1 others).
    """
    sim = _similarities(z1, z2, 1.0)
    return (sim.argmax(1) == _positives(z1.shape[0], sim.device)).float()


# ------------------------------------------------------------------------------------- BYOL
def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's ``||p / |p| - t / |t| ||^2 = 2 - 2 cos(p, t)`` per sample (N,); ``target`` is not
    differentiated through (the teacher's)."""
    return 2.0 - 2.0 * F.cosine_similarity(prediction.float(), target.detach().float(), dim=-1)


# ------------------------------------------------------------------------------------- VoCo
def voco_logits(random: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """VoCo's predicted overlaps ``ReLU(cos(p_j, q_i))`` (B, K, n) of K random crops (B, K, D) with
    n base crops (B, n, D); no gradient to the bases (as in both released implementations)."""
    cos = F.cosine_similarity(random.float()[:, :, None, :], bases.detach().float()[:, None, :, :], dim=-1)
    return F.relu(cos)


def voco_prediction_loss(logits: torch.Tensor, overlaps: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """VoCo's position prediction (Wu et al. 2024, Eq. 3): ``-mean log(1 - |y - l|)`` over every random
    crop and base crop; ``eps`` keeps the log finite when a prediction is off by 1."""
    return -torch.log((1.0 - (overlaps.float() - logits.float()).abs()).clamp_min(eps)).mean()


def voco_regularisation(bases: torch.Tensor) -> torch.Tensor:
    """VoCo's base-crop regularisation (Eq. 5): ``2 / (n (n - 1)) sum_{i < j} ReLU(cos(q_i, q_j))`` per
    sample, averaged over the batch; pushes the n base crops (B, n, D) of a volume apart."""
    q = F.normalize(bases.float(), dim=-1)
    cos = F.relu(q @ q.transpose(1, 2))
    n = q.shape[1]
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=q.device), diagonal=1)
    return cos[:, upper].sum(1).mean() * 2.0 / (n * (n - 1))
