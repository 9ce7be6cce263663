"""The masked-region curriculum of Tariq et al. 2023: 5% -> 10% -> 20% -> 33% masked.

Each stage is a :class:`~proxy_tasks.masked_region.MaskedRegion`; the 10% model starts from the 5%
model's weights, and so on. The pretraining engine runs ``scheme.stages`` in turn. Called directly,
the scheme applies its current ``stage`` (settable), so it also works as a plain task.
"""

from __future__ import annotations

from typing import Sequence

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, register_task
from proxy_tasks.masked_region import MaskedRegion


@register_task("masked_curriculum")
class MaskedCurriculum(ProxyTask):
    """Masked region prediction with growing masks.

    Args:
        fractions: mask fraction of each stage, in training order (paper: 0.05, 0.1, 0.2, 0.33).
        fill: fill value of the masked box (see :class:`MaskedRegion`).
        stage: index of the stage ``__call__`` applies.
        aspect: box shape (see :class:`MaskedRegion`).
    """

    kind = "restoration"
    paper = "Tariq et al. 2023"
    loss_region = "all"
    spatial_dims = None

    def __init__(self, fractions: Sequence[float] = (0.05, 0.1, 0.2, 0.33), fill: float | str = 0.0,
                 stage: int = 0, aspect: str = "image") -> None:
        if len(fractions) == 0:
            raise ValueError("masked_curriculum: fractions must not be empty")
        self.fractions = tuple(float(f) for f in fractions)
        self.stages: list[ProxyTask] = [MaskedRegion(fraction=f, fill=fill, aspect=aspect) for f in self.fractions]
        self._stage = 0
        self.stage = stage

    @property
    def stage(self) -> int:
        return self._stage

    @stage.setter
    def stage(self, value: int) -> None:
        if not 0 <= value < len(self.stages):
            raise ValueError(f"masked_curriculum: stage must be in [0, {len(self.stages) - 1}], got {value}")
        self._stage = int(value)

    def extra_repr(self) -> str:
        return f"fractions={self.fractions!r}, stage={self._stage}"

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        return self.stages[self._stage](batch, generator=generator)
