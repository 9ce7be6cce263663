"""Optimizer, learning-rate schedule and early stopping, each with a checkpointable state.

Models Genesis (Zhou et al. 2021, methods.md section 5): SGD (momentum 0.9, lr 1.0), halve the
learning rate when the validation loss stops improving, stop after 50 epochs without improvement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import torch

from genesis.training.config import EarlyStopConfig, OptimConfig, ScheduleConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (Models Genesis), Adam/AdamW or RAdam (Tariq et al.) from a resolved config."""
    if cfg.name == "auto" or cfg.lr is None:
        raise ValueError("resolve optim.name='auto' / optim.lr=None with resolve_optim() first")
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


class EpochScheduler:
    """Learning-rate schedule stepped once per epoch with the validation loss.

    Wraps ``ReduceLROnPlateau`` (``plateau``), ``StepLR`` (``step``) or nothing (``none``) behind
    one ``step(val_loss)`` so the engine does not care which; ``state_dict`` round-trips.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig) -> None:
        self.name = cfg.name
        self.inner: Any = None
        if cfg.name == "plateau":
            self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.factor, patience=cfg.patience, min_lr=cfg.min_lr
            )
        elif cfg.name == "step":
            self.inner = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.factor)
        self.optimizer = optimizer

    def step(self, val_loss: float) -> None:
        if self.name == "plateau":
            self.inner.step(val_loss if math.isfinite(val_loss) else float("inf"))
        elif self.inner is not None:
            self.inner.step()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "inner": self.inner.state_dict() if self.inner is not None else {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.inner is not None and state.get("inner"):
            self.inner.load_state_dict(state["inner"])

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


@dataclass
class EarlyStopping:
    """Counts epochs without improvement of a monitored loss (lower is better)."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    bad_epochs: int = 0

    @classmethod
    def from_config(cls, cfg: EarlyStopConfig) -> "EarlyStopping":
        return cls(patience=cfg.patience, min_delta=cfg.min_delta)

    def update(self, value: float) -> bool:
        """Record ``value``; True if it is the best so far."""
        if math.isfinite(value) and value < self.best - self.min_delta:
            self.best = float(value)
            self.bad_epochs = 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
