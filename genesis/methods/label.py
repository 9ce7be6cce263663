"""Label prediction: predict what was done to the input (rotation, flip, jigsaw permutation,
Rubik's cube moves), its DeepCluster pseudo-label, or its radiograph metadata.

The network is Tariq et al.'s / Zhou et al.'s encoder-only classifier: a registered encoder
(the U-Net's encoder by default, or ``--model densenet121`` / ``resnet50``...) pooled, then
``Linear(F, 1024) -> ReLU -> Linear(1024, n)`` (``encoder_classifier``). Loss: cross-entropy (the
task's own for multi-head tasks); validation: cross-entropy and accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from genesis.errors import ConfigError
from genesis.methods.base import NetworkRequest, NetworkSpec, Parts
from genesis.methods.proxy import PairShape, ProxyTaskMethod, is_pretrained_backbone, middle_slice, network_kwargs
from genesis.models import ModelOutput


def label_outputs(task: Any, ndim: int) -> int | None:
    """Logits a label task needs: ``task.output_size(ndim)`` (multi-head tasks such as the Rubik's
    cube) or ``task.num_classes``."""
    if hasattr(task, "output_size"):
        return int(task.output_size(ndim))
    return getattr(task, "num_classes", None)


def primary_label(task: Any, logits: torch.Tensor, label: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the main classification of a task (the permutation for multi-head tasks)."""
    if label.dim() > 1:
        n = task.n_permutation_classes(ndim) if hasattr(task, "n_permutation_classes") else logits.shape[1]
        return logits[:, :n], label[:, 0]
    return logits, label


def encoder_classifier_spec(request: NetworkRequest, shape: PairShape, num_classes: int, what: str) -> NetworkSpec:
    """``encoder_classifier`` around the requested (or the U-Net's) encoder for these pairs.

    Raises:
        ConfigError: ``--model`` names an image-to-image network that is not an encoder here.
    """
    name = request.model
    model_kwargs = dict(request.model_kwargs)
    if name not in ("auto", "encoder_classifier"):
        if not is_pretrained_backbone(name):
            raise ConfigError(f"task {what!r} predicts labels; use --model encoder_classifier or auto")
        model_kwargs = {"encoder": name, **model_kwargs}  # --model densenet121: that network as the encoder
    encoder = model_kwargs.get("encoder", "unet3d" if shape.spatial_dims == 3 else "unet2d")
    enc_kwargs = network_kwargs(encoder, shape.spatial_dims, shape.in_channels, request.width)
    enc_kwargs.update(model_kwargs.get("encoder_kwargs", {}) or {})
    kwargs: dict[str, Any] = {"encoder": encoder, "encoder_kwargs": enc_kwargs, "num_classes": int(num_classes)}
    kwargs.update({k: v for k, v in model_kwargs.items() if k not in ("encoder", "encoder_kwargs")})
    return NetworkSpec("encoder_classifier", kwargs)


def encoder_parts(spec: NetworkSpec) -> Parts:
    """The backbone of an ``encoder_classifier``: its encoder, under ``backbone.``; the head is the method's."""
    kw = dict(spec.kwargs)
    return Parts(backbone="backbone.", network=NetworkSpec(kw["encoder"], dict(kw.get("encoder_kwargs") or {})),
                 heads=("head.",))


class LabelMethod(ProxyTaskMethod):
    """Predict the label of a label proxy task (see the module docstring)."""

    family = "label"
    monitor_key = "val_loss"

    def network(self, request: NetworkRequest) -> NetworkSpec:
        shape = self.probe(request)
        num_classes = label_outputs(self.task, shape.spatial_dims)
        if num_classes is None:
            raise ConfigError(f"task {self.name!r} is a label task without num_classes")
        return encoder_classifier_spec(request, shape, num_classes, self.name)

    def bind(self, spec: NetworkSpec) -> None:
        if self.requested_loss not in ("auto", "ce"):
            raise ConfigError(f"task {self.name!r} predicts labels; use loss 'ce' or 'auto'")
        self.loss_name = "ce"

    def parts(self, spec: NetworkSpec) -> Parts:
        return encoder_parts(spec)

    def loss(self, outputs: ModelOutput, views: Any) -> tuple[torch.Tensor, dict[str, float]]:
        from genesis.methods.losses import classification_loss

        logits = outputs.output.float()
        task_loss = getattr(self.task, "loss", None)
        # tasks with several label heads (Rubik's cube) define their own cross-entropy
        loss = task_loss(logits, views.label) if callable(task_loss) else classification_loss(logits, views.label)
        if outputs.aux_loss is not None:
            loss = loss + outputs.aux_loss.float()
        return loss, {}

    def validation(self, outputs: ModelOutput, views: Any) -> dict[str, float]:
        logits = outputs.output.float()
        if hasattr(self.task, "val_metrics"):  # metadata
            return self.task.val_metrics(logits, views.label)
        logits, label = primary_label(self.task, logits, views.label, views.input.dim() - 2)
        ce = F.cross_entropy(logits, label, reduction="sum")
        acc = (logits.argmax(1) == label).sum()
        # chance: the accuracy of always predicting the most frequent label of this batch
        chance = torch.bincount(label, minlength=logits.shape[1]).max()
        return {"val_ce": float(ce), "val_acc": float(acc), "val_chance_acc": float(chance)}

    def grid(self, views: Any, outputs: ModelOutput, path: Path, title: str, n: int) -> None:
        from genesis.viz import save_grid

        k = min(n, views.input.shape[0])
        if hasattr(self.task, "describe"):
            names = self.task.describe(outputs.output.float(), views.label)[:k]
        else:
            logits, label = primary_label(self.task, outputs.output.float(), views.label, views.input.dim() - 2)
            pred = logits.argmax(1)
            names = [f"label {int(label[i])} / pred {int(pred[i])}" for i in range(k)]
        save_grid([[middle_slice(views.input[i])] for i in range(k)], path, row_titles=names, col_titles=["input"],
                  title=title)
