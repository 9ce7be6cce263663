"""The combined Models Genesis scheme (``--task combined``, the default pretraining task).

Zhou et al. 2021 (Models Genesis, MedIA), section 2.5 and the reference ``generate_pair``: per
sample, in this order,

1. flip input and target together (augmentation, not a proxy task): while fewer than
   ``max_flips`` flips and ``random() < flip_prob``, flip a random axis;
2. local pixel shuffling with probability ``local_shuffle_prob`` (0.5);
3. non-linear intensity mapping with probability ``nonlinear_prob`` (0.9);
4. with probability ``paint_prob`` (0.9) a cut-out: inner (in-painting) with probability
   ``inner_prob`` (0.2), else outer (out-painting) -- never both.

A sample can thus undergo up to three transforms, or none (identity). The target is the flipped
original. Each transform is the registered task of that name, applied in place (``transform_``)
to the samples that drew it, on one working copy of the flipped batch; ``pair.mask`` is computed
when first read.

Reference quirk: the reference draws the flip axis from {0, 1, 2} of a (C, rows, cols, deps)
array, so a third of the draws flip the channel axis (a no-op) and the depth axis is never
flipped. By default we flip the three spatial axes; ``flip_axes=(None, 1, 2)`` reproduces the
reference exactly (``None`` = a draw that flips nothing; 0, 1, 2 = D, H, W).

2D batches (B, C, H, W) (Genesis 2D, on slices) get the same probabilities; the depth axis is
dropped from ``flip_axes``, so by default a flip draws H or W (the reference's 2D quirk is
``flip_axes=(None, 1, 2)``, a third of the draws a no-op, as in 3D). Everything else runs on the
depth-1 view of the batch, which is exactly the 2D transforms (see ``_genesis_common``): a 2D
batch gives the same pair as its depth-1 3D view with the 3D flip axes ``(1, 2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from proxy_tasks import _cpu_kernels
from proxy_tasks._genesis_common import as_volume, check_prob, restoration_pair
from proxy_tasks.base import TASKS, ProxyPair, ProxyTask, check_batch, register_task

#: the transforms in the order the reference applies them
STEPS = ("local_shuffle", "nonlinear", "inner_cutout", "outer_cutout")
#: the transforms that take ``use_kernels`` (compiled CPU loops, see ``_cpu_kernels``)
KERNEL_STEPS = ("local_shuffle", "nonlinear", "outer_cutout")


@register_task("combined")
class Combined(ProxyTask):
    """All Models Genesis transforms with the reference probabilities.

    Args:
        local_shuffle_prob: probability of local pixel shuffling (reference ``local_rate``).
        nonlinear_prob: probability of the non-linear mapping (reference ``nonlinear_rate``).
        paint_prob: probability of a cut-out (reference ``paint_rate``).
        inner_prob: share of cut-outs that are inner (reference ``inpaint_rate`` = 1 - ``outpaint_rate`` 0.8).
        flip_prob: probability of each further flip (reference ``flip_rate``).
        max_flips: most flips per sample (reference 3).
        flip_axes: axes a flip draws from: spatial indices 0, 1, 2 (D, H, W), or None for a no-op;
            2D batches draw from these without the depth axis 0 (default: H and W).
        local_shuffle, nonlinear, inner_cutout, outer_cutout: extra parameters of each transform
            (e.g. ``{"num_windows": 1000}``, the paper's count); their own ``prob`` is ignored.
        prob: probability that a sample is flipped/transformed at all (1.0; 0 gives the identity).
        use_kernels: passed to the transforms that have compiled CPU loops (local shuffle,
            non-linear, out-painting); False forces their torch path.
    """

    kind = "restoration"
    paper = "Zhou et al. 2021 (Models Genesis)"
    loss_region = "all"
    spatial_dims = None  # 2D (B, C, H, W) or 3D (B, C, D, H, W)

    def __init__(
        self,
        local_shuffle_prob: float = 0.5,
        nonlinear_prob: float = 0.9,
        paint_prob: float = 0.9,
        inner_prob: float = 0.2,
        flip_prob: float = 0.4,
        max_flips: int = 3,
        flip_axes: Sequence[int | None] = (0, 1, 2),
        local_shuffle: dict[str, Any] | None = None,
        nonlinear: dict[str, Any] | None = None,
        inner_cutout: dict[str, Any] | None = None,
        outer_cutout: dict[str, Any] | None = None,
        prob: float = 1.0,
        use_kernels: bool = True,
    ) -> None:
        # ``prob``: probability that a sample gets any flip or transform at all (0 = identity)
        self.local_shuffle_prob = check_prob(local_shuffle_prob, "local_shuffle_prob", "combined")
        self.nonlinear_prob = check_prob(nonlinear_prob, "nonlinear_prob", "combined")
        self.paint_prob = check_prob(paint_prob, "paint_prob", "combined")
        self.inner_prob = check_prob(inner_prob, "inner_prob", "combined")
        self.flip_prob = check_prob(flip_prob, "flip_prob", "combined")
        self.prob = check_prob(prob, "prob", "combined")
        if max_flips < 0 or not flip_axes or any(a not in (None, 0, 1, 2) for a in flip_axes):
            raise ValueError(
                f"combined: need max_flips >= 0 and flip_axes from (None, 0, 1, 2), got {max_flips}, {flip_axes}"
            )
        self.max_flips = int(max_flips)
        self.use_kernels = bool(use_kernels)
        self.flip_axes = tuple(flip_axes)
        params = dict(local_shuffle=local_shuffle, nonlinear=nonlinear, inner_cutout=inner_cutout, outer_cutout=outer_cutout)
        kernels = {name: {"use_kernels": bool(use_kernels)} for name in KERNEL_STEPS}
        self._tasks = {
            name: TASKS.get(name)(**{**kernels.get(name, {}), **(params[name] or {}), "prob": 1.0}) for name in STEPS
        }

    def extra_repr(self) -> str:
        keys = ("local_shuffle_prob", "nonlinear_prob", "paint_prob", "inner_prob", "flip_prob", "max_flips", "flip_axes")
        return ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)

    def draw(
        self, n: int, generator: torch.Generator | None, device: torch.device, spatial_dims: int = 3
    ) -> dict[str, torch.Tensor]:
        """Draw which sample gets which transform (``spatial_dims`` 2: flips without the depth axis).

        Returns:
            (n,) bool tensors: ``flip_d``, ``flip_h``, ``flip_w`` (odd number of flips of that axis;
            ``flip_d`` never in 2D), and one per transform in :data:`STEPS` (``inner_cutout`` and
            ``outer_cutout`` exclusive).
        """
        if spatial_dims not in (2, 3):
            raise ValueError(f"combined: spatial_dims must be 2 or 3, got {spatial_dims}")
        axes = self.flip_axes if spatial_dims == 3 else tuple(a for a in self.flip_axes if a != 0)
        k = self.max_flips
        # one draw for every decision (a dozen small draws cost more than the rest of the draw):
        # keep, local shuffle, non-linear, paint, inner, then per flip a coin and an axis
        u = torch.rand(n, 5 + 2 * k, generator=generator, device=device, dtype=torch.float64)
        keep = u[:, 0] < self.prob
        # the reference stops flipping at the first failed coin
        flips = (u[:, 5 : 5 + k] < self.flip_prob).cumprod(1).bool() & keep[:, None]
        choices = torch.tensor([-1 if a is None else a for a in axes] or [-1], device=device)  # -1: flips nothing
        axis = choices[(u[:, 5 + k :] * len(choices)).long().clamp_(max=len(choices) - 1)]  # uniform over ``axes``
        draws = {
            name: ((axis == spatial) & flips).sum(1) % 2 == 1  # an odd number of flips of that axis
            for name, spatial in (("flip_d", 0), ("flip_h", 1), ("flip_w", 2))
        }
        draws["local_shuffle"] = (u[:, 1] < self.local_shuffle_prob) & keep
        draws["nonlinear"] = (u[:, 2] < self.nonlinear_prob) & keep
        paint = (u[:, 3] < self.paint_prob) & keep
        inner = u[:, 4] < self.inner_prob
        draws["inner_cutout"] = paint & inner
        draws["outer_cutout"] = paint & ~inner
        return draws

    def apply(self, batch: torch.Tensor, draws: dict[str, torch.Tensor], generator: torch.Generator | None) -> ProxyPair:
        """Apply the drawn flips and transforms to ``batch`` (B, C, D, H, W) or (B, C, H, W)."""
        if batch.dim() == 4:
            pair = self.apply(as_volume(batch), draws, generator)
            return restoration_pair(pair.input.squeeze(2), pair.target.squeeze(2))
        chosen = torch.stack([draws[name] for name in STEPS]).tolist()  # one host transfer
        if self.use_kernels and _cpu_kernels.usable(batch) and any(any(flags) for flags in chosen):
            # the flipped target and our working copy of it in one pass over the batch
            flips = torch.stack([draws["flip_d"], draws["flip_h"], draws["flip_w"]], 1)
            target, out = _cpu_kernels.flip_copies(batch, flips)
            owned = True
        else:
            target = _flip(batch, draws)
            out, owned = target, False  # ``target`` is returned too: never write into it
        for name, flags in zip(STEPS, chosen):
            task = self._tasks[name]
            # every transform writes its samples in place into our working copy: no sub-batch
            # round trips (index_select, transform, index_copy)
            rows = [i for i, flag in enumerate(flags) if flag]
            if rows:
                if not owned:
                    out, owned = out.clone(memory_format=torch.contiguous_format), True
                task.transform_(out, generator, rows)
        return restoration_pair(out, target)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        """Draw and apply; the draws of the last call stay in ``self.last_draws`` (for inspection)."""
        check_batch(batch, "combined")
        draws = self.draw(batch.shape[0], generator, batch.device, spatial_dims=batch.dim() - 2)
        self.last_draws = draws
        return self.apply(batch, draws, generator)


def _flip(batch: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flip each sample along its drawn axes (``batch`` itself if nothing flips).

    The batch is copied in one pass, then the flipped samples are overwritten: a single D or H
    flip by ``index_select`` over a reversed index straight into the copy (``torch.flip`` has no
    ``out=`` and would allocate per sample); W flips, where ``index_select`` is slow, and
    multi-axis flips by ``torch.flip``.
    """
    flags = torch.stack([draws["flip_d"], draws["flip_h"], draws["flip_w"]], 1).tolist()
    flipped = [(i, [1 + a for a in range(3) if f[a]]) for i, f in enumerate(flags) if any(f)]
    if not flipped:
        return batch
    target = batch.clone(memory_format=torch.contiguous_format)
    for i, dims in flipped:
        if len(dims) == 1 and dims[0] < 3:
            size = batch.shape[dims[0] + 1]
            reverse = torch.arange(size - 1, -1, -1, device=batch.device)
            torch.index_select(batch[i], dims[0], reverse, out=target[i])
        else:
            target[i] = batch[i].flip(dims)
    return target
