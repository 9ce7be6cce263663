"""Trivial predictors a restoration must beat, measured on the voxels its loss is computed on.

* *do nothing* (``identity``): return the (transformed) input as the restoration;
* *predict the mean* (``mean``): each target cube's own mean everywhere (the best constant per
  cube, what a collapsed network outputs at best);
* *fill the hidden voxels* (``fill``, tasks whose mask hides content: masked region, in-painting,
  cut-outs): the input with the masked voxels replaced by the mean of the visible ones. On masked
  tasks this is the baseline that matters (Tariq et al.'s masked region: whole-image mean MSE 0.128
  vs 0.027 for filling the mask with the visible mean, measured on MSD lung patches).

:func:`per_sample_errors` gives the per-sample MSE of the model and of each baseline on one
validation batch; the training loop keeps them per cube so the collapse check
(:mod:`genesis.training.collapse`) can judge the margin and its uncertainty over patients.
"""

from __future__ import annotations

from typing import Any

import torch


def region_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean of ``err`` over ``mask`` (everywhere when None)."""
    if mask is None:
        return err.flatten(1).mean(1)
    m = mask.expand_as(err).float()
    return (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)


def fill_hidden(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x`` with the voxels of ``mask`` replaced by the per-sample mean of the visible ones."""
    m = mask.expand_as(x).float()
    visible = 1.0 - m
    mean = (x * visible).flatten(1).sum(1) / visible.flatten(1).sum(1).clamp_min(1)
    return torch.where(m.bool(), mean.view(-1, *([1] * (x.dim() - 1))).to(x.dtype), x)


def per_sample_errors(restored: torch.Tensor, pair: Any, region: str, hides_content: bool) -> dict[str, torch.Tensor]:
    """Per-sample MSE (B,) of the model (``model``) and of the baselines on ``region``.

    Args:
        restored: the network's restoration (``sigmoid(logits)``), shaped like ``pair.target``.
        pair: the proxy pair (``input``, ``target``, optional ``mask``).
        region: ``"mask"`` to measure on ``pair.mask`` only (as the loss does), else everywhere.
        hides_content: the task's mask marks voxels whose content was destroyed (adds ``fill``).
    """
    target = pair.target.float()
    mask = pair.mask if region == "mask" and pair.mask is not None else None
    dims = tuple(range(1, target.dim()))
    out = {"model": region_mean((restored.float() - target) ** 2, mask)}
    out["mean"] = region_mean((target - target.mean(dim=dims, keepdim=True)) ** 2, mask)
    x = pair.input.float()
    if x.shape[2:] == target.shape[2:] and x.shape[1] >= target.shape[1]:
        x = x[:, -target.shape[1]:]  # the newest slices of a slab input
        out["identity"] = region_mean((x - target) ** 2, mask)
        if hides_content and pair.mask is not None:
            out["fill"] = region_mean((fill_hidden(x, pair.mask) - target) ** 2, mask)
    return out


def baseline_sums(restored: torch.Tensor, pair: Any, region: str, hides_content: bool = False) -> dict[str, float]:
    """Per-batch sums of the baseline MSEs and of the output/target spread (``val_*`` keys).

    Returns:
        ``val_mean_mse``, ``val_identity_mse`` (when the input is comparable to the target),
        ``val_fill_mse`` (tasks that hide content), and, when the task has a mask,
        ``val_masked_fill_mse`` (the fill baseline on the masked voxels, next to
        ``val_masked_mse``), ``val_output_std`` and ``val_target_std``; each summed over samples.
    """
    errors = per_sample_errors(restored, pair, region, hides_content)
    out = {f"val_{k}_mse": float(v.sum()) for k, v in errors.items() if k != "model"}
    if hides_content and pair.mask is not None and "fill" in errors:
        x = pair.input.float()[:, -pair.target.shape[1]:]
        filled = fill_hidden(x, pair.mask)
        out["val_masked_fill_mse"] = float(region_mean((filled - pair.target.float()) ** 2, pair.mask).sum())
    target = pair.target.float()
    out["val_output_std"] = float(restored.float().flatten(1).std(1).sum())
    out["val_target_std"] = float(target.flatten(1).std(1).sum())
    return out
