"""Losses: Models Genesis restoration MSE, classification, Tariq composite loss, SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from genesis.training.losses import CompositeLoss, classification_loss, masked_mse, restoration_loss, ssim


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_restoration_loss_whole_volume_matches_hand_computation() -> None:
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]]])
    expected = np.mean((_sigmoid(logits.numpy()) - target.numpy()) ** 2)
    assert restoration_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_restoration_loss_on_the_mask_only() -> None:
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    target = torch.tensor([[[[0.5, 1.0], [0.0, 0.25]]]])
    mask = torch.tensor([[[[0, 1], [0, 1]]]], dtype=torch.bool)
    p = _sigmoid(logits.numpy())[0, 0]
    expected = ((p[0, 1] - 1.0) ** 2 + (p[1, 1] - 0.25) ** 2) / 2
    assert restoration_loss(logits, target, mask, region="mask").item() == pytest.approx(expected, rel=1e-6)
    # voxel 0 is predicted exactly (sigmoid(0) = 0.5), so it contributes nothing but still counts in "all"
    assert restoration_loss(logits, target).item() == pytest.approx(
        np.mean((_sigmoid(logits.numpy()) - target.numpy()) ** 2), rel=1e-6
    )


def test_restoration_loss_errors_and_empty_mask() -> None:
    logits = torch.zeros(1, 1, 4, 4, requires_grad=True)
    target = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="mask"):
        restoration_loss(logits, target, region="mask")
    with pytest.raises(ValueError, match="region"):
        restoration_loss(logits, target, region="holes")
    with pytest.raises(ValueError, match="shape"):
        restoration_loss(logits, target[..., :2])
    empty = restoration_loss(logits, target, torch.zeros(1, 1, 4, 4), region="mask")
    assert empty.item() == 0.0
    empty.backward()  # no NaN from 0/0
    assert torch.isfinite(logits.grad).all()


def test_masked_mse_broadcasts_a_single_channel_mask() -> None:
    pred = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]]).view(1, 2, 1, 2)
    target = torch.zeros(1, 2, 1, 2)
    mask = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    assert masked_mse(pred, target, mask).item() == pytest.approx((1.0 + 9.0) / 2)


def test_classification_loss_multiclass_and_binary() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 2])
    x = logits.numpy()
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    assert classification_loss(logits, labels).item() == pytest.approx(-(logp[0, 0] + logp[1, 2]) / 2, rel=1e-6)

    binary = torch.tensor([[1.5], [-0.5]])
    y = torch.tensor([1, 0])
    expected = -(math.log(_sigmoid(1.5)) + math.log(1 - _sigmoid(-0.5))) / 2
    assert classification_loss(binary, y).item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(binary.view(-1), y).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (1, 1, 16, 24, 24)])
def test_ssim_matches_scikit_image(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(*shape, generator=g)
    b = (a + 0.2 * torch.rand(*shape, generator=g)).clamp(0, 1)
    ref = structural_similarity(
        a[0, 0].numpy(), b[0, 0].numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    assert ssim(a, b).item() == pytest.approx(ref, abs=1e-4)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-5)


def test_ssim_small_inputs_shrink_the_window() -> None:
    a = torch.rand(2, 1, 8, 6, 5, generator=torch.Generator().manual_seed(1))
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(a, 1 - a).item() < 0.5


def test_composite_loss_is_the_weighted_sum() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 16, 16, generator=g, requires_grad=True)
    target = torch.rand(2, 1, 16, 16, generator=g)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:8, 4:8] = 1
    vq = torch.tensor(0.3)
    loss = CompositeLoss(w_mse=0.2, w_ssim=0.1, w_vq=0.8, w_masked=0.2)
    out = loss(logits, target, mask, vq)

    pred = torch.sigmoid(logits.detach())
    mse = ((pred - target) ** 2).mean()
    masked = ((pred - target) ** 2)[:, :, 4:8, 4:8].mean()
    s = ssim(pred, target)
    assert out["mse"].item() == pytest.approx(mse.item(), rel=1e-6)
    assert out["masked_mse"].item() == pytest.approx(masked.item(), rel=1e-6)
    assert out["ssim"].item() == pytest.approx(s.item(), rel=1e-6)
    assert out["vq"].item() == pytest.approx(0.3)
    expected = 0.2 * mse + 0.1 * (1 - s) + 0.8 * 0.3 + 0.2 * masked
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["total"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_composite_loss_defaults_and_optional_terms() -> None:
    loss = CompositeLoss()
    assert (loss.w_mse, loss.w_ssim, loss.w_vq, loss.w_masked) == (0.2, 0.1, 0.8, 0.2)
    logits = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(4))
    target = torch.rand(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(5))
    out = loss(logits, target)  # no mask, no VQ: those terms are zero and not added
    assert out["masked_mse"].item() == 0.0 and out["vq"].item() == 0.0
    assert out["total"].item() == pytest.approx(0.2 * out["mse"].item() + 0.1 * (1 - out["ssim"].item()), rel=1e-6)
    # a perfect reconstruction has zero loss (SSIM = 1), whatever the weights
    perfect = torch.logit(target.clamp(1e-4, 1 - 1e-4))
    assert loss(perfect, target.clamp(1e-4, 1 - 1e-4))["total"].item() == pytest.approx(0.0, abs=1e-5)
