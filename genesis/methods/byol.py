"""BYOL (Grill et al., NeurIPS 2020): a student predicts an EMA teacher's projection of the other view.

The student is backbone -> pooled features -> projector -> predictor; the teacher is an exponential
moving average (EMA) of the student's backbone and projector, under ``teacher.`` in the module's
state dict, with ``requires_grad`` off (the optimizer never sees it). The two views of every sample
(the SimCLR views of :mod:`genesis.methods.simclr`) go through both; the loss is symmetrised,

    L = mean_i (2 - 2 cos(q(v1_i), z'(v2_i))) + mean_i (2 - 2 cos(q(v2_i), z'(v1_i))),

with q the student's prediction and z' the teacher's projection (no gradient). After every optimizer
step (:meth:`BYOL.after_step`) the teacher moves towards the student,
``teacher <- m * teacher + (1 - m) * student`` for every parameter, with ``m`` = ``momentum``
(``schedule="constant"``) or the paper's cosine increase from ``momentum`` to 1 over ``total_steps``
(``schedule="cosine"``: ``m_k = 1 - (1 - momentum) (cos(pi k / K) + 1) / 2``). The teacher's batch-norm
running statistics are its own (it runs in the module's mode, as in the paper's code).

Defaults (the paper's): momentum 0.996; projector and predictor ``Linear(F, 4096) -> BN -> ReLU ->
Linear(4096, 256)``. The loss is per sample: no gathering across DDP ranks is needed; the
teacher stays identical on every rank because every rank applies the same EMA to the same
(all-reduced) student.

Validation: the loss, how often a prediction's nearest teacher projection (among the batch's other
view) is its own (``val_top1`` against chance ``val_chance = 1 / N``), and the spread of the
normalised student projections per dimension (``val_z_std``; 0 when collapsed, about
``val_z_std_uniform = 1 / sqrt(dim)`` when spread over the sphere; SimSiam's collapse check).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from genesis.errors import ConfigError
from genesis.methods._contrastive import projection_mlp, regression_loss
from genesis.methods._embedding import EmbeddingModel, backbone_spec, build_backbone, embedding_parts, pooled_features
from genesis.methods.base import Method, NetworkRequest, NetworkSpec, Parts, register_method
from genesis.methods.simclr import PairViews, pair_grid, two_views, view_config

SCHEDULES = ("constant", "cosine")


def nearest_is_own(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per prediction (N,): 1 where the most cosine-similar of the N targets is its own (index i)."""
    sim = F.normalize(predictions, dim=1) @ F.normalize(targets, dim=1).T
    return (sim.argmax(1) == torch.arange(sim.shape[0], device=sim.device)).float()


class TeacherStudent(EmbeddingModel):
    """A student (backbone, projector, predictor) and its EMA teacher (``teacher.backbone``,
    ``teacher.projector``: copies of the student's at construction, never trained).

    ``forward(x)`` returns (student predictions, teacher projections, student projections).
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module) -> None:
        super().__init__(backbone, projector, predictor)
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(backbone), "projector": copy.deepcopy(projector)})
        self.teacher.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z, p = super().forward(x)
        with torch.no_grad():
            t = self.teacher["projector"](pooled_features(self.teacher["backbone"], x))
        return p, t, z

    def paired_parameters(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher parameters, the student parameters they follow), in the same order."""
        teacher = [p for m in (self.teacher["backbone"], self.teacher["projector"]) for p in m.parameters()]
        student = [p for m in (self.backbone, self.projector) for p in m.parameters()]
        return teacher, student

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
        teacher, student = self.paired_parameters()
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1.0 - momentum)


@register_method("byol")
class BYOL(Method):
    """BYOL-style EMA teacher (see the module docstring).

    Args:
        momentum: the EMA momentum (the paper's base value 0.996).
        schedule: ``"constant"``, or ``"cosine"`` (the paper's: from ``momentum`` to 1; needs
            ``total_steps``).
        total_steps: optimizer steps of the whole run (for the cosine schedule).
        hidden / dim: projector and predictor sizes (the paper: 4096 and 256).
        scale, flip_prob, intensity_scale, intensity_shift, noise_std: view ranges.
    """

    name = "byol"
    family = "teacher-student"
    paper = "Grill et al. 2020 (BYOL)"
    dims = (2, 3)
    monitor_key = "val_loss"
    log_keys = ("val_top1", "val_chance", "val_z_std")

    def __init__(self, momentum: float = 0.996, schedule: str = "constant", total_steps: int | None = None,
                 hidden: int = 4096, dim: int = 256, scale: tuple[float, float] = (0.08, 1.0), flip_prob: float = 0.5,
                 intensity_scale: float = 0.25, intensity_shift: float = 0.1, noise_std: float = 0.05) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"byol momentum must be in [0, 1], got {momentum}")
        if schedule not in SCHEDULES:
            raise ConfigError(f"byol schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if schedule == "cosine" and (total_steps is None or int(total_steps) < 1):
            raise ConfigError("byol schedule 'cosine' needs total_steps (the optimizer steps of the run)")
        if hidden < 1 or dim < 1:
            raise ConfigError(f"byol needs positive projector sizes, got hidden={hidden}, dim={dim}")
        self.momentum, self.schedule = float(momentum), schedule
        self.total_steps = None if total_steps is None else int(total_steps)
        self.hidden, self.dim = int(hidden), int(dim)
        self.view_cfg = view_config(scale, flip_prob, intensity_scale, intensity_shift, noise_std)
        self._dims: int | None = None

    def momentum_at(self, step: int) -> float:
        """The EMA momentum of the update after ``step`` optimizer steps (the loop passes 1, 2, ...)."""
        if self.schedule == "constant":
            return self.momentum
        k = min(int(step), int(self.total_steps))  # type: ignore[arg-type]
        return 1.0 - (1.0 - self.momentum) * (math.cos(math.pi * k / self.total_steps) + 1.0) / 2.0  # type: ignore[operator]

    def network(self, request: NetworkRequest) -> NetworkSpec:
        self._dims = int(request.dims)
        return backbone_spec(request, self.name)

    def build_model(self, spec: NetworkSpec) -> nn.Module:
        backbone = build_backbone(spec, self._dims, self.name)
        projector = projection_mlp(backbone.feature_dim, self.hidden, self.dim, batch_norm=True)
        predictor = projection_mlp(self.dim, self.hidden, self.dim, batch_norm=True)
        return TeacherStudent(backbone, projector, predictor)

    def parts(self, spec: NetworkSpec) -> Parts:
        return embedding_parts(spec, heads=("projector.", "predictor."), teacher="teacher.")

    def views(self, cubes: torch.Tensor, generator: torch.Generator, dims: int) -> PairViews:
        return two_views(cubes, generator, dims, self.view_cfg)

    def forward(self, model: nn.Module, views: PairViews) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return model(views.input)

    @staticmethod
    def _per_anchor(outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Each view's regression loss against the teacher's projection of the other view (2N,)."""
        p, t = outputs[0].float(), outputs[1].float()
        n = p.shape[0] // 2
        return regression_loss(p, torch.cat([t[n:], t[:n]], 0))

    def loss(self, outputs: tuple[torch.Tensor, ...], views: PairViews) -> tuple[torch.Tensor, dict[str, float]]:
        per_anchor = self._per_anchor(outputs)
        n = per_anchor.shape[0] // 2
        return per_anchor[:n].mean() + per_anchor[n:].mean(), {}

    def validation(self, outputs: tuple[torch.Tensor, ...], views: PairViews) -> dict[str, float]:
        p, t, z = (o.float() for o in outputs)
        anchors, n = p.shape[0], p.shape[0] // 2
        hits = nearest_is_own(p[:n], t[n:]).sum() + nearest_is_own(p[n:], t[:n]).sum()  # among the other view's
        z_std = F.normalize(z, dim=1).std(0).mean()
        return {"val_regression": float(self._per_anchor(outputs).sum()), "val_top1": float(hits),
                "val_chance": anchors / n, "val_z_std": float(z_std) * anchors,
                "val_z_std_uniform": anchors / math.sqrt(z.shape[1])}

    def after_step(self, model: nn.Module, step: int) -> None:
        model.update_teacher(self.momentum_at(step))  # type: ignore[operator]

    def grid(self, views: PairViews, outputs: tuple[torch.Tensor, ...], path: Path, title: str, n: int) -> None:
        p, t = outputs[0].float(), outputs[1].float()
        b = p.shape[0] // 2
        pair_grid(views, path, title, n, F.cosine_similarity(p[:b], t[b:], dim=1))

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": self.name, "family": self.family, "momentum": self.momentum, "schedule": self.schedule,
                "total_steps": self.total_steps, "projector": [self.hidden, self.dim], "views": asdict(self.view_cfg)}
