"""The proxy-task interface: a batch in, a (input, target, mask, label) pair out.

A proxy task is a callable class registered under a name. It draws all its random parameters
from the ``torch.Generator`` it is given (never from global state) and works on whole batches on
any device, so the same code runs in data-loader workers on the CPU and on the training GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from genesis.registry import Registry

TASKS: Registry = Registry("proxy task")
register_task = TASKS.register


@dataclass
class ProxyPair:
    """What a proxy task produces for a batch.

    Attributes:
        input: what the network sees, (B, C, *spatial).
        target: what it must reproduce (restoration tasks), or None (label tasks).
        mask: bool tensor broadcastable to ``target``: voxels changed by the transform
            (restoration) or the region a masked loss is computed on; None if not applicable.
        label: (B,) long class labels (classification tasks), else None.
    """

    input: torch.Tensor
    target: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    label: torch.Tensor | None = None


class ProxyTask:
    """Base class of proxy tasks.

    Class attributes:
        kind: ``"restoration"`` (target image, loss MSE-like), ``"classification"`` (label) or
            ``"contrastive"`` (views only; trained by a method of :mod:`genesis.methods`).
        paper: where the task comes from (shown by ``genesis-pretrain --list-tasks``).
        num_classes: number of labels for classification tasks.
        loss_region: ``"all"`` (loss on the whole image, Models Genesis) or ``"mask"`` (loss on
            ``pair.mask`` only, e.g. classic in-painting).
        spatial_dims: dimensionality the task accepts: 2, 3, or None for both.
        mask_hides_content: ``pair.mask`` marks voxels whose content the transform replaced (a box,
            cut-out windows, salt-and-pepper noise); their restoration is judged against filling
            them with the mean of the visible voxels.
    """

    kind: ClassVar[str] = "restoration"
    paper: ClassVar[str] = ""
    num_classes: ClassVar[int | None] = None
    loss_region: ClassVar[str] = "all"
    spatial_dims: ClassVar[int | None] = None
    mask_hides_content: ClassVar[bool] = False

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        raise NotImplementedError

    def on_epoch_start(self, context: Any) -> None:
        """Hook for tasks that adapt during training (e.g. DeepCluster refreshes pseudo-labels)."""

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def check_batch(batch: torch.Tensor, task: str, spatial_dims: int | None = None) -> None:
    """Raise a clear ValueError for a batch of the wrong rank or dtype."""
    dims = batch.dim() - 2
    if not torch.is_floating_point(batch):
        raise ValueError(f"{task}: expected a float batch, got {batch.dtype}")
    if dims not in (2, 3) or (spatial_dims is not None and dims != spatial_dims):
        want = f"{spatial_dims}D" if spatial_dims else "2D or 3D"
        raise ValueError(f"{task}: expected a {want} batch (B, C, *spatial), got shape {tuple(batch.shape)}")
