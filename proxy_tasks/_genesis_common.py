"""Helpers shared by the Models Genesis transforms (not a registered task: leading underscore).

Every transform follows the same pattern: draw per-sample Bernoulli decisions from the caller's
``torch.Generator``, transform only the chosen sub-batch (so a transform applied with p=0.5 costs
half), and report the voxels whose value changed (computed when first read). Each transform also
has ``transform_(batch, generator, rows)``, which transforms the samples ``rows`` in place with
the same draws as ``transform(batch[rows], generator)``: the combined scheme chains them on one
working copy without sub-batch round trips.

2D batches (B, C, H, W) (Genesis 2D, Zhou et al. 2021, on axial slices) are transformed as a
depth-1 view (B, C, 1, H, W) of the same memory (:func:`as_volume`), which is exactly the 2D
transform: every per-axis law of the 3D transforms degenerates to "the whole axis" on a
depth of one (windows and boxes of depth 1 at depth 0, no shuffling along depth); only the
flips of the combined scheme need their own 2D draw (over H and W, see ``combined``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

from proxy_tasks.base import ProxyPair, check_batch


def as_volume(batch: torch.Tensor) -> torch.Tensor:
    """A 2D batch (B, C, H, W) as its depth-1 view (B, C, 1, H, W) (same memory); 3D batches as they are."""
    return batch.unsqueeze(2) if batch.dim() == 4 else batch


_F = TypeVar("_F", bound=Callable[..., torch.Tensor])


def dimension_agnostic(method: _F) -> _F:
    """Let a ``transform``/``transform_`` method written for (B, C, D, H, W) take (B, C, H, W) too.

    The 2D batch is passed as its depth-1 view, so in-place writes land in the caller's tensor,
    and the result is returned with the caller's rank.
    """

    @functools.wraps(method)
    def wrapper(self, batch: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if batch.dim() != 4:
            return method(self, batch, *args, **kwargs)
        return method(self, batch.unsqueeze(2), *args, **kwargs).squeeze(2)

    return wrapper  # type: ignore[return-value]


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


_PENDING = object()


class ChangedVoxelsPair(ProxyPair):
    """A :class:`ProxyPair` whose ``mask`` (voxels where ``input != target``) is computed on first read.

    The mask costs a full pass over the batch plus a fresh bool tensor (about a sixth of the
    combined scheme's time), and the Models Genesis loss (whole image) does not use it: only
    masked losses and validation metrics do. Reading ``pair.mask`` computes and caches it;
    assigning it stores the given value; ``dataclasses.replace`` and pickling work as for a
    plain :class:`ProxyPair`. Do not modify ``input`` or ``target`` in place before reading it.
    """

    def __init__(
        self,
        input: torch.Tensor,
        target: torch.Tensor | None = None,
        mask: torch.Tensor | None | object = _PENDING,
        label: torch.Tensor | None = None,
    ) -> None:
        super().__init__(input=input, target=target, mask=None, label=label)
        if mask is _PENDING:
            self.__dict__["_mask_pending"] = True
        else:
            self.mask = mask

    @property  # type: ignore[override]
    def mask(self) -> torch.Tensor | None:
        if self.__dict__.get("_mask_pending"):
            self.__dict__["_mask"] = self.input != self.target
            self.__dict__["_mask_pending"] = False
        return self.__dict__.get("_mask")

    @mask.setter
    def mask(self, value: torch.Tensor | None) -> None:
        self.__dict__["_mask"] = value
        self.__dict__["_mask_pending"] = False


def restoration_pair(transformed: torch.Tensor, original: torch.Tensor) -> ProxyPair:
    """A restoration pair whose mask marks the voxels whose value the transform changed (computed on first read)."""
    return ChangedVoxelsPair(input=transformed, target=original)


def run_with_prob(
    task: str,
    batch: torch.Tensor,
    prob: float,
    generator: torch.Generator | None,
    transform: Callable[[torch.Tensor, torch.Generator | None], torch.Tensor],
) -> ProxyPair:
    """Shared ``__call__`` of the single transforms: validate (2D or 3D), draw who is transformed, transform them."""
    check_batch(batch, task)
    chosen = bernoulli(batch.shape[0], prob, generator, batch.device)
    out = apply_to_chosen(batch, chosen, lambda sub: transform(sub, generator))
    return restoration_pair(out, batch)


def noise_bits(
    numel: int, generator: torch.Generator | None, device: torch.device, workspace: Workspace | None = None
) -> torch.Tensor:
    """(numel,) random int16 ``k``: the draws behind :func:`uniform_noise`, value ``(k + 32768.5) / 65536``.

    One 64-bit draw cut into four 16-bit values is about twice as fast as ``torch.rand``.
    ``workspace`` keeps the raw draws between calls.
    """
    count = (numel + 3) // 4
    if workspace is not None:
        draws = workspace.flat("noise_draws", count, torch.int64, device)
    else:
        draws = torch.empty(count, dtype=torch.int64, device=device)
    draws.random_(-(2**63), 2**63 - 1, generator=generator)
    return draws.view(torch.int16)[:numel]


def uniform_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
    workspace: Workspace | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform noise in (0, 1) with 16-bit resolution, values ``(k + 0.5) / 65536``.

    Drawing random numbers is the dominant cost of the cut-outs on the CPU (see
    :func:`noise_bits`). The reference fills with ``np.random.rand``; a resolution of 1.5e-5
    (0.03 HU on a 2000 HU window) changes nothing for a noise fill.

    ``workspace`` keeps the raw draws between calls; ``out`` (contiguous, ``shape``) receives
    the noise, else a new tensor.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    return noise_from_bits(noise_bits(numel, generator, device, workspace), dtype, out).view(shape)


def noise_from_bits(bits: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
    """The 1-D noise ``(k + 32768.5) / 65536`` of int16 ``bits`` (exact in float32), into ``out`` if given."""
    # one pass (the 0-dim float makes the result float32)
    offset = torch.tensor(32768.5 / 65536, device=bits.device)
    if out is not None and out.dtype == torch.float32:
        return torch.add(offset, bits, alpha=1.0 / 65536, out=out.view(-1))
    noise = torch.add(offset, bits, alpha=1.0 / 65536).to(dtype)
    return noise if out is None else out.view(-1).copy_(noise)


def batch_noise_bits(
    n: int, numel: int, generator: torch.Generator | None, device: torch.device, workspace: Workspace | None = None
) -> tuple[torch.Tensor, list[int]]:
    """The draws of :func:`batch_noise`: the bank's :func:`noise_bits` and where each sample's
    ``numel`` values start in it."""
    extra = max(numel // 2, 2 * n)
    bits = noise_bits(numel + extra, generator, device, workspace)
    u = torch.rand(2, generator=generator, device=device, dtype=torch.float64).tolist()
    s_max = max(1, (extra // 2) // max(n - 1, 1))
    r, s = int(u[0] * (extra // 2 + 1)), 1 + int(u[1] * s_max)
    return bits, [r + j * s for j in range(n)]


def batch_noise(
    n: int,
    numel: int,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """(n, numel) uniform noise (see :func:`uniform_noise`) from one draw per call, not per sample.

    Drawing random numbers dominates the cut-outs on the CPU, so a call draws about 1.5 samples'
    worth once and sample ``j`` reads it from offset ``r + j s`` (``r``, ``s`` random): within a
    sample the values are independent uniforms; samples of one call get shifted copies of the same
    draw (a strided view, no copy). Values are only ever noise fills, never compared across samples.
    """
    bits, offsets = batch_noise_bits(n, numel, generator, device, workspace)
    out = workspace.get("noise_bank", (bits.numel(),), dtype, device) if workspace is not None else None
    bank = noise_from_bits(bits, dtype, out)
    stride = offsets[1] - offsets[0] if n > 1 else 1
    return bank.as_strided((n, numel), (stride, 1), bank.storage_offset() + offsets[0])


def blend_rows_(
    batch: torch.Tensor, rows: list[int], other: torch.Tensor, weight: torch.Tensor, keep_where_one: bool
) -> torch.Tensor:
    """Per row ``j``: ``batch[rows[j]]`` takes ``other[j]`` where ``weight[j]`` is 0 (``keep_where_one``)
    or where it is 1 (otherwise), in place; ``weight`` (n, 1 or C, *spatial) holds 0/1.

    ``torch.lerp`` with 0/1 weights is exact and several times faster than a boolean ``where`` on
    the CPU; it reads and writes each voxel at the same place, so writing into ``batch`` is safe.
    """
    for j, row in enumerate(rows):
        target = batch[row]
        other_j = other[j].view(target.shape)
        if keep_where_one:
            torch.lerp(other_j, target, weight[j], out=target)
        else:
            torch.lerp(target, other_j, weight[j], out=target)
    return batch


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

    def flat(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A 1-D scratch tensor of ``numel`` entries, the first part of a buffer that only grows
        (for sizes that change from call to call, such as the noise of a varying set of boxes)."""
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != torch.device(device):
            buf = torch.empty(max(numel, buf.numel() if buf is not None else 0), dtype=dtype, device=device)
            self._buffers[name] = buf
        return buf[:numel]

    def __getstate__(self) -> dict:
        return {"_buffers": {}}

    def __repr__(self) -> str:
        return "Workspace()"
