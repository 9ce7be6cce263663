"""The identity "transform" of Models Genesis: the network reconstructs the cube it is given.

In the combined scheme a sample that draws no transform is an auto-encoding example (Zhou et al.
2021, section 2.5); as a task of its own it is the plain auto-encoder baseline.
"""

from __future__ import annotations

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task


@register_task("identity")
class Identity(ProxyTask):
    """Input = target = the batch; the mask of changed voxels is all False."""

    kind = "restoration"
    paper = "no transform (a control)"
    loss_region = "all"
    spatial_dims = None

    def __init__(self, prob: float = 1.0) -> None:
        self.prob = float(prob)  # accepted so that every Genesis transform takes ``prob``

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "identity")
        return ProxyPair(input=batch, target=batch, mask=torch.zeros_like(batch, dtype=torch.bool))
