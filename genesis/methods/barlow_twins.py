"""Barlow Twins (Zbontar et al., ICML 2021): redundancy reduction between two views of each image.

The views and the loss are :mod:`proxy_tasks.barlow_twins`'s; the network is an encoder pooled
into a projector MLP (``encoder_classifier``'s head, whose outputs are the embeddings: Linear(F,
1024) -> ReLU -> Linear(1024, dim)). The projector is the method's head and is dropped when the
encoder is exported or fine-tuned. Used by Awatramani et al. on chest radiographs (DenseNet-121).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genesis.errors import ConfigError
from genesis.methods.base import NetworkRequest, NetworkSpec, Parts, register_method
from genesis.methods.label import encoder_classifier_spec, encoder_parts
from genesis.methods.proxy import ProxyTaskMethod, build_proxy_task, middle_slice
from genesis.models import ModelOutput


@register_method("barlow_twins")
class BarlowTwinsMethod(ProxyTaskMethod):
    """Barlow Twins on 2D images; ``params`` are :class:`proxy_tasks.barlow_twins.BarlowTwins`'s."""

    family = "contrastive"
    paper = "Zbontar et al. 2021 (Barlow Twins)"
    dims = (2,)
    monitor_key = "val_loss"

    @classmethod
    def create(cls, params: dict[str, Any], dims: int, loss: str = "auto", seed: int = 0) -> "BarlowTwinsMethod":
        return cls("barlow_twins", build_proxy_task("barlow_twins", params, dims), loss, seed)

    def network(self, request: NetworkRequest) -> NetworkSpec:
        shape = self.probe(request)
        return encoder_classifier_spec(request, shape, self.task.output_size(shape.spatial_dims), self.name)

    def bind(self, spec: NetworkSpec) -> None:
        if self.requested_loss not in ("auto",):
            raise ConfigError(f"barlow_twins has its own loss; --loss {self.requested_loss} does not apply")
        self.loss_name = "barlow_twins"

    def parts(self, spec: NetworkSpec) -> Parts:
        return encoder_parts(spec)  # the head is the projector

    def loss(self, outputs: ModelOutput, views: Any) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.task.loss(outputs.output.float(), views.label)
        if outputs.aux_loss is not None:
            loss = loss + outputs.aux_loss.float()
        return loss, {}

    def validation(self, outputs: ModelOutput, views: Any) -> dict[str, float]:
        return self.task.val_metrics(outputs.output.float(), views.label)

    def grid(self, views: Any, outputs: ModelOutput, path: Path, title: str, n: int) -> None:
        from genesis.viz import save_grid

        b = views.input.shape[0] // 2
        k = min(n, b)
        rows = [[middle_slice(views.input[i]), middle_slice(views.input[b + i])] for i in range(k)]
        save_grid(rows, path, row_titles=[f"image {i}" for i in range(k)], col_titles=["view 1", "view 2"], title=title)
