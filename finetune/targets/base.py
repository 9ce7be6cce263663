"""The :class:`Target` base class and the registry the target modules register into.

Target modules import this module (never :mod:`finetune.targets` or :mod:`finetune`, which import
them), so the registry has no import circle. A target knows its task (segmentation or
classification), its metrics, its default crop and intensity window, and how to build
train/val/test splits from its public dataset in the real on-disk layout (``--data``) or from the
embedded synthetic chest CT (no ``--data``; outputs say so).
Methods digest section 6 and Zhou et al. 2021 sec. 3.2 describe the targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from finetune.data import TargetData
from genesis.registry import Registry

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig

#: name -> Target subclass, filled by ``@register_target`` as the target modules are imported;
#: :data:`finetune.targets.TARGETS` imports them all on first use
REGISTERED: Registry = Registry("fine-tuning target")
register_target = REGISTERED.register

SEGMENTATION_METRICS = ("dice", "iou", "iou_mean_thresholds")
CLASSIFICATION_METRICS = ("auc",)


class Target:
    """Base class of a fine-tuning target.

    Class attributes:
        name: registry name (``ncs``...).
        title: one line for tables and banners.
        task: ``"segmentation"`` (per-voxel sigmoid, Dice/IoU) or ``"classification"`` (AUC).
        metrics: test metrics reported; ``primary_metric`` is the headline one (paper Table 3).
        val_metric: validation metric used for early stopping and best-checkpoint selection.
        default_crop / quick_crop: training crop (D, H, W) for full runs and ``--preset quick``.
        window: HU window mapped to [0, 1] (MRI targets normalise per volume instead).
        aggregate: ``"max"`` to aggregate sample predictions per group (study-level ``pe``).
        fraction_by_group: label fractions count groups (studies) instead of samples.
        real_layout: a short description of the on-disk layout ``--data`` must have.
        spatial_dims / in_channels / out_channels: the network's input and output; ``out_channels``
            1 is a binary target (sigmoid), K > 1 a K-class one (softmax). The generic targets set
            them from their data when it is loaded.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    task: ClassVar[str] = "segmentation"
    metrics: ClassVar[tuple[str, ...]] = SEGMENTATION_METRICS
    primary_metric: ClassVar[str] = "iou"
    val_metric: ClassVar[str] = "dice"
    default_crop: ClassVar[tuple[int, int, int]] = (32, 64, 64)
    quick_crop: ClassVar[tuple[int, int, int]] = (16, 32, 32)
    window: ClassVar[tuple[float, float]] = (-1000.0, 1000.0)
    aggregate: ClassVar[str | None] = None
    rotate_degrees: ClassVar[float] = 0.0  # default random in-plane rotation (augment.rotate_degrees)
    fraction_by_group: ClassVar[bool] = False
    real_layout: ClassVar[str] = ""
    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 1

    def crop(self, cfg: "FinetuneConfig") -> tuple[int, int, int]:
        return tuple(cfg.crop) if cfg.crop is not None else self.default_crop  # type: ignore[return-value]

    def hu_window(self, cfg: "FinetuneConfig") -> tuple[float, float]:
        if cfg.window is not None:
            return tuple(cfg.window)  # type: ignore[return-value]
        if getattr(cfg, "channels", "repeat") == "windows":  # the input must span all three HU windows
            from genesis.models._pretrained import CT_WINDOWS_SPAN

            return CT_WINDOWS_SPAN
        return self.window

    def load(self, cfg: "FinetuneConfig") -> TargetData:
        """Splits from ``cfg.data`` (real layout) or, when it is ``None``, from synthetic data."""
        if cfg.data is None:
            return self.load_synthetic(cfg)
        return self.load_real(Path(cfg.data), cfg)

    def load_real(self, root: Path, cfg: "FinetuneConfig") -> TargetData:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_synthetic(self, cfg: "FinetuneConfig") -> TargetData:  # pragma: no cover - abstract
        raise NotImplementedError
