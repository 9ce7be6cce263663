"""Denoising proxy tasks: restore the clean image from a noisy one.

* ``denoise_sp``: salt-and-pepper noise on about half of the pixels (Tariq et al. 2023, section
  III-B-3): each pixel is corrupted with probability ``amount``; a corrupted pixel becomes 1 (salt)
  with probability ``salt_ratio``, else 0 (pepper). ``pair.mask`` marks the corrupted pixels.
* ``denoise_gaussian``: additive Gaussian noise with a per-sample sigma uniform in [0, 0.1], clipped
  to [0, 1] (the 3D denoising baseline of the Models Genesis appendix). ``pair.mask`` is None.
"""

from __future__ import annotations

from typing import Sequence

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task


@register_task("denoise_sp")
class DenoiseSaltPepper(ProxyTask):
    """Salt-and-pepper denoising.

    Args:
        amount: probability that a pixel is corrupted (paper: about 50%).
        salt_ratio: share of corrupted pixels set to 1 (the rest are set to 0).
        low, high: the pepper and salt values (the [0, 1] intensity range by default).
    """

    kind = "restoration"
    paper = "Tariq et al. 2023"
    mask_hides_content = True
    loss_region = "all"
    spatial_dims = None

    def __init__(self, amount: float = 0.5, salt_ratio: float = 0.5, low: float = 0.0, high: float = 1.0) -> None:
        if not 0.0 <= amount <= 1.0 or not 0.0 <= salt_ratio <= 1.0:
            raise ValueError(f"denoise_sp: amount and salt_ratio must be in [0, 1], got {amount}, {salt_ratio}")
        self.amount = float(amount)
        self.salt_ratio = float(salt_ratio)
        self.low = float(low)
        self.high = float(high)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "denoise_sp")
        corrupted = torch.rand(batch.shape, generator=generator, device=batch.device) < self.amount
        salt = torch.rand(batch.shape, generator=generator, device=batch.device) < self.salt_ratio
        noise = torch.where(salt, self.high, self.low).to(batch.dtype)
        return ProxyPair(input=torch.where(corrupted, noise, batch), target=batch, mask=corrupted)


@register_task("denoise_gaussian")
class DenoiseGaussian(ProxyTask):
    """Gaussian denoising with sigma ~ U(sigma_range) per sample, result clipped to [0, 1].

    Args:
        sigma_range: (min, max) noise standard deviation in the [0, 1] intensity scale (appendix: 0-0.1).
        clip: clip the noisy input to [0, 1].
    """

    kind = "restoration"
    paper = "Vincent et al. 2010, as in Zhou et al. 2021's appendix"
    loss_region = "all"
    spatial_dims = None

    def __init__(self, sigma_range: Sequence[float] = (0.0, 0.1), clip: bool = True) -> None:
        lo, hi = (float(s) for s in sigma_range)
        if not 0.0 <= lo <= hi:
            raise ValueError(f"denoise_gaussian: need 0 <= min <= max sigma, got {sigma_range}")
        self.sigma_range = (lo, hi)
        self.clip = bool(clip)
        self.last_sigma: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"sigma_range={self.sigma_range}, clip={self.clip}"

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "denoise_gaussian")
        lo, hi = self.sigma_range
        shape = (batch.shape[0],) + (1,) * (batch.dim() - 1)
        sigma = lo + (hi - lo) * torch.rand(shape, generator=generator, device=batch.device, dtype=batch.dtype)
        noisy = batch + sigma * torch.randn(batch.shape, generator=generator, device=batch.device, dtype=batch.dtype)
        self.last_sigma = sigma.flatten()
        return ProxyPair(input=noisy.clamp(0.0, 1.0) if self.clip else noisy, target=batch)
