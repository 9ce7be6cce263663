"""Losses of the proxy tasks.

- :func:`restoration_loss`: the Models Genesis loss, MSE between ``sigmoid(logits)`` and the
  original sub-volume, on the whole volume (``region="all"``, the paper's choice) or on the
  transformed voxels only (``region="mask"``, classic in-painting; worse in the paper's ablation).
- :func:`classification_loss`: cross-entropy for label proxy tasks (rotation, flip, jigsaw) and
  BCE-with-logits for single-logit binary targets.
- :class:`CompositeLoss`: the Tariq et al. (2023) reconstruction loss
  ``w_mse * MSE + w_ssim * (1 - SSIM) + w_vq * VQ + w_masked * masked-region MSE``.

All networks return logits; the sigmoid is applied here (in float32, safe under autocast).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _probabilities(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if pred_logits.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred_logits.shape)} != target shape {tuple(target.shape)}")
    return torch.sigmoid(pred_logits.float())


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the voxels where ``mask`` is non-zero (0 with gradient if none are).

    ``mask`` broadcasts against ``pred`` (e.g. (B, 1, ...) for multi-channel outputs).
    """
    weight = mask.to(pred.dtype).expand_as(pred)
    total = weight.sum()
    sq = (pred - target.to(pred.dtype)).pow(2) * weight
    return sq.sum() / total.clamp_min(1.0)


def restoration_loss(
    pred_logits: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    region: str = "all",
) -> torch.Tensor:
    """Models Genesis restoration loss: MSE(sigmoid(pred_logits), target).

    Args:
        pred_logits: network output (B, C, *sides), logits.
        target: the original image in [0, 1], same shape.
        mask: voxels changed by the transform (broadcastable), needed for ``region="mask"``.
        region: ``"all"`` (whole volume, Zhou et al. 2021) or ``"mask"`` (masked voxels only).

    Returns:
        A scalar tensor.

    Raises:
        ValueError: unknown ``region``, missing mask for ``"mask"``, or mismatched shapes.
    """
    pred = _probabilities(pred_logits, target)
    if region == "all":
        return F.mse_loss(pred, target.float())
    if region == "mask":
        if mask is None:
            raise ValueError("region='mask' needs the mask of transformed voxels")
        return masked_mse(pred, target.float(), mask)
    raise ValueError(f"region must be 'all' or 'mask', got {region!r}")


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, pos_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy for (B, n>1) logits and integer labels; BCE-with-logits for one logit.

    Args:
        logits: (B, n) or, for a binary task, (B, 1) / (B,).
        labels: (B,) class indices (multi-class) or 0/1 targets (binary).
        pos_weight: optional positive-class weight for the binary case (class imbalance).
    """
    if logits.dim() == 2 and logits.shape[1] > 1:
        return F.cross_entropy(logits.float(), labels.long().view(-1))
    flat = logits.float().view(-1)
    return F.binary_cross_entropy_with_logits(flat, labels.float().view(-1), pos_weight=pos_weight)


def ssim(pred: torch.Tensor, target: torch.Tensor, win_size: int = 11, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of (B, C, H, W) or (B, C, D, H, W) images in [0, data_range] (MONAI, Gaussian window).

    The window (default 11, sigma 1.5, Wang et al. 2004) is shrunk on axes shorter than it so small
    crops and thin slabs still work.
    """
    spatial_dims = pred.dim() - 2
    if spatial_dims not in (2, 3):
        raise ValueError(f"SSIM needs (B, C, H, W) or (B, C, D, H, W), got shape {tuple(pred.shape)}")
    from monai.losses import SSIMLoss  # MONAI takes seconds to import: only when SSIM is computed

    window: Sequence[int] = [min(win_size, s if s % 2 else s - 1) for s in pred.shape[2:]]
    loss_fn = SSIMLoss(spatial_dims=spatial_dims, data_range=data_range, win_size=window)
    return 1.0 - loss_fn(pred.float(), target.float())


@dataclass
class CompositeLoss:
    """Tariq et al. (2023) reconstruction loss.

    ``total = w_mse * MSE + w_ssim * (1 - SSIM) + w_vq * VQ + w_masked * masked-region MSE``, with
    the prediction ``sigmoid(logits)``. Defaults are the reference code's weights (0.2 MSE, 0.2
    masked MSE, 0.8 VQ, SSIM -0.1). The reference adds ``-0.1 * SSIM``; we add ``0.1 * (1 - SSIM)``,
    which differs by a constant only (same gradients, same optimum) and keeps every term >= 0.

    The masked term is skipped (reported as 0) when no mask is given (e.g. denoising), the VQ term
    when no VQ loss is given (a network without a codebook).

    Returns (call): dict of scalar tensors ``mse``, ``ssim`` (the SSIM value itself), ``vq``,
    ``masked_mse`` and ``total`` (the one to back-propagate).
    """

    w_mse: float = 0.2
    w_ssim: float = 0.1
    w_vq: float = 0.8
    w_masked: float = 0.2
    ssim_window: int = 11

    def __call__(
        self,
        pred_logits: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        vq_loss: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        pred = _probabilities(pred_logits, target)
        target = target.float()
        zero = pred.new_zeros(())
        mse = F.mse_loss(pred, target)
        ssim_value = ssim(pred, target, self.ssim_window) if self.w_ssim else zero
        vq = vq_loss.float() if vq_loss is not None else zero
        masked = masked_mse(pred, target, mask) if mask is not None else zero
        total = self.w_mse * mse + self.w_vq * vq + self.w_masked * masked
        if self.w_ssim:
            total = total + self.w_ssim * (1.0 - ssim_value)
        return {"total": total, "mse": mse, "ssim": ssim_value, "vq": vq, "masked_mse": masked}
