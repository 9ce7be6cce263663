"""A few training steps of a method through its contract only (what the training loop calls)."""

from __future__ import annotations

from typing import Any

import torch

from genesis.methods.base import Method, NetworkRequest


def build(method: Method, request: NetworkRequest, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """The method's module with weights seeded by ``seed`` and its network spec."""
    spec = method.network(request)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = method.build_model(spec)
    return model, spec


def train_steps(method: Method, model: torch.nn.Module, cubes: torch.Tensor, steps: int, dims: int,
                lr: float = 1e-3, seed: int = 0) -> list[float]:
    """``steps`` Adam steps on the same cubes with per-step seeded views; the losses."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        gen = torch.Generator(device=cubes.device).manual_seed(seed * 1000 + step)
        views = method.views(cubes, gen, dims)
        loss, _ = method.loss(method.forward(model, views), views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step(model, step)
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def validate(method: Method, model: torch.nn.Module, cubes: torch.Tensor, dims: int, seed: int = 1) -> dict[str, float]:
    """The method's validation sums divided by its sample count, and the loss."""
    model.eval()
    gen = torch.Generator(device=cubes.device).manual_seed(seed)
    views = method.views(cubes, gen, dims)
    out = method.forward(model, views)
    loss, _ = method.loss(out, views)
    n = method.count(views)
    metrics = {k: v / n for k, v in method.validation(out, views).items()}
    metrics["val_loss"] = float(loss)
    model.train()
    return metrics
