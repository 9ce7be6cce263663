"""Helpers shared by the Models Genesis transforms (not a registered task: leading underscore).

Every transform follows the same pattern: draw per-sample Bernoulli decisions from the caller's
``torch.Generator``, transform only the chosen sub-batch (so a transform applied with p=0.5 costs
half), and report the voxels whose value changed.
"""

from __future__ import annotations

from typing import Callable

import torch

from proxy_tasks.base import ProxyPair, check_batch


def check_prob(value: float, name: str, task: str) -> float:
    """Return ``value`` as a float, or raise a ValueError naming the task if it is not in [0, 1]."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{task}: {name} must be in [0, 1], got {value}")
    return value


def bernoulli(n: int, prob: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n`` independent draws, True with probability ``prob`` (one uniform per draw, always consumed)."""
    return torch.rand(n, generator=generator, device=device, dtype=torch.float64) < prob


def randint_per_row(
    low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform integers in ``[low, high]`` (inclusive, like Python's ``random.randint``) elementwise.

    ``torch.randint`` only takes scalar bounds; here each element has its own range.
    """
    u = torch.rand(low.shape, generator=generator, device=low.device, dtype=torch.float64)
    return (low + torch.floor(u * (high - low + 1).to(torch.float64)).long()).minimum(high)


def apply_to_chosen(
    batch: torch.Tensor,
    chosen: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Run ``transform`` on the samples where ``chosen`` is True; the others are returned unchanged.

    Only the chosen sub-batch is computed (indexing costs one device sync on CUDA, far less than
    transforming samples that are then thrown away).
    """
    if bool(chosen.all()):
        return transform(batch)
    out = batch.clone()
    idx = chosen.nonzero().flatten()
    if idx.numel():
        out.index_copy_(0, idx, transform(batch.index_select(0, idx)))
    return out


def restoration_pair(transformed: torch.Tensor, original: torch.Tensor) -> ProxyPair:
    """A restoration pair whose mask marks the voxels whose value the transform changed."""
    return ProxyPair(input=transformed, target=original, mask=transformed != original)


def run_with_prob(
    task: str,
    batch: torch.Tensor,
    prob: float,
    generator: torch.Generator | None,
    transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
) -> ProxyPair:
    """Shared ``__call__`` of the single transforms: validate, draw who is transformed, transform them."""
    check_batch(batch, task, spatial_dims=3)
    chosen = bernoulli(batch.shape[0], prob, generator, batch.device)
    out = apply_to_chosen(batch, chosen, lambda sub: transform(sub, generator))
    return restoration_pair(out, batch)


def uniform_noise(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Uniform noise in (0, 1) with 16-bit resolution, values ``(k + 0.5) / 65536``.

    Drawing random numbers is the dominant cost of the cut-outs on the CPU; one 64-bit draw cut
    into four 16-bit values is about twice as fast as ``torch.rand``. The reference fills with
    ``np.random.rand``; a resolution of 1.5e-5 (0.03 HU on a 2000 HU window) changes nothing for a
    noise fill.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    draws = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    draws.random_(-(2**63), 2**63 - 1, generator=generator)
    noise = (draws.view(torch.int16)[:numel] + 32768.5).mul_(1.0 / 65536)  # int16 -> float, one pass
    return noise.view(shape).to(dtype)


class Workspace:
    """Reusable scratch tensors of a transform (intermediates that never leave the call).

    Fresh multi-megabyte allocations cost page faults on every call on the CPU (glibc hands large
    blocks back to the system); reusing them makes the transforms about 25% faster. Not shared
    between threads: use one task object per thread (DataLoader workers are processes, each with
    its own copy; the buffers are not pickled).
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.shape != torch.Size(shape) or buf.dtype != dtype or buf.device != torch.device(device):
            buf = torch.empty(shape, dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf

    def __getstate__(self) -> dict:
        return {"_buffers": {}}

    def __repr__(self) -> str:
        return "Workspace()"
