"""Supervised metadata prediction on radiographs (Awatramani et al., section 4.1 / 5.1).

Predict what the CSV (or DICOM header) says about each radiograph: sex (binary cross-entropy on
one logit), age (smooth L1 on one output, in decades) and view (frontal / lateral, 2-way
cross-entropy), or any subset (``columns``). Labels travel with the images in the metadata slice
of a radiograph source (:mod:`genesis.data.radiographs`); unknown values (-1) are left out of
their loss. Optional random views (crop, flip, jitter, rotation) as in the paper.

Network outputs, in order: sex (1), age (1), view (2) for the selected columns.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.nn import functional as F

from genesis.data.radiographs import META_FIELDS, decode_metadata
from proxy_tasks._views import ViewConfig, random_views
from proxy_tasks.base import ProxyPair, ProxyTask, register_task

_WIDTH = {"sex": 1, "age": 1, "view": 2}
AGE_UNIT = 10.0  # years per regression unit: smooth L1's quadratic zone is then +-10 years


@register_task("metadata")
class MetadataPrediction(ProxyTask):
    """Predict sex, age and/or view of radiographs.

    Args:
        columns: any subset of ``("sex", "age", "view")``.
        augment: draw a random view of each image (crop, flip, jitter, rotation) before predicting.
    """

    kind = "classification"
    paper = "Awatramani et al. (radiograph metadata)"
    loss_region = "all"
    spatial_dims = 3  # consumes (image, metadata) stacks of depth 2; the network sees 2D images
    consumes_metadata = True

    def __init__(self, columns: Sequence[str] = META_FIELDS, augment: bool = True) -> None:
        columns = tuple(columns)
        unknown = [c for c in columns if c not in META_FIELDS]
        if not columns or unknown:
            raise ValueError(f"columns must be a non-empty subset of {META_FIELDS}, got {columns}")
        self.columns = tuple(c for c in META_FIELDS if c in columns)  # fixed output order
        self.augment = bool(augment)

    def output_size(self, ndim: int) -> int:
        return sum(_WIDTH[c] for c in self.columns)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        images, labels = decode_metadata(batch)
        if self.augment:
            images = random_views(images, generator, ViewConfig(scale=(0.7, 1.0)))
        return ProxyPair(input=images, label=labels)

    def _split(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        out, k = {}, 0
        for c in self.columns:
            out[c] = logits[:, k:k + _WIDTH[c]]
            k += _WIDTH[c]
        return out

    def _losses(self, logits: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        heads, label = self._split(logits.float()), label.float()
        losses: dict[str, torch.Tensor] = {}
        for c, head in heads.items():
            y = label[:, META_FIELDS.index(c)]
            known = y >= 0
            if not bool(known.any()):
                losses[c] = head.sum() * 0.0
            elif c == "sex":
                losses[c] = F.binary_cross_entropy_with_logits(head[known, 0], y[known])
            elif c == "age":
                losses[c] = F.smooth_l1_loss(head[known, 0], y[known] / AGE_UNIT)
            else:
                losses[c] = F.cross_entropy(head[known], y[known].long())
        return losses

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Sum of the selected heads' losses (each averaged over the samples whose value is known)."""
        return torch.stack(list(self._losses(logits, label).values())).sum()

    def val_metrics(self, logits: torch.Tensor, label: Any) -> dict[str, float]:
        """Sums over the batch (the trainer divides by the number of samples): accuracies, age error."""
        heads, label = self._split(logits.float()), label.float()
        out: dict[str, float] = {}
        for c, head in heads.items():
            y = label[:, META_FIELDS.index(c)]
            known = y >= 0
            if c == "sex":
                out["val_sex_acc"] = float(((head[known, 0] > 0).float() == y[known]).sum())
            elif c == "age":
                out["val_age_mae_years"] = float((head[known, 0] * AGE_UNIT - y[known]).abs().sum())
            else:
                out["val_view_acc"] = float((head[known].argmax(1) == y[known].long()).sum())
        return out

    def describe(self, logits: torch.Tensor, label: Any) -> list[str]:
        names = []
        for i in range(logits.shape[0]):
            parts = [f"{c} {float(label[i, META_FIELDS.index(c)]):g}" for c in self.columns]
            names.append(", ".join(parts))
        return names
