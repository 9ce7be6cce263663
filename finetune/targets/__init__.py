"""Fine-tuning targets: one module per target, each registering a :class:`Target` subclass.

Adding a target is adding one file here that registers its class with
``@register_target("name")`` (from :mod:`finetune.targets.base`). :data:`TARGETS` imports every
module of this package on first use, so ``finetune.config`` and the CLI's argument checks stay
fast (no torch); :func:`get_target` returns an instance.
"""

from __future__ import annotations

from genesis.registry import Registry, import_submodules

from finetune.targets.base import (
    CLASSIFICATION_METRICS,
    REGISTERED,
    SEGMENTATION_METRICS,
    Target,
    register_target,
)


class _TargetRegistry(Registry):
    """A view of :data:`finetune.targets.base.REGISTERED` that imports the target modules first."""

    def __init__(self, registered: Registry) -> None:
        super().__init__(registered.kind)
        self._entries = registered._entries  # one table: the decorator fills it, this view reads it
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            import_submodules(__name__)

    def get(self, name: str):
        self._load()
        return super().get(name)

    def names(self) -> list[str]:
        self._load()
        return super().names()

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)

    def __len__(self) -> int:
        self._load()
        return super().__len__()


#: name -> Target subclass (every target module imported on first use)
TARGETS: Registry = _TargetRegistry(REGISTERED)


def get_target(name: str) -> Target:
    """An instance of the registered target ``name`` (``UnknownNameError`` lists the names)."""
    return TARGETS.get(name)()


__all__ = ["CLASSIFICATION_METRICS", "SEGMENTATION_METRICS", "TARGETS", "Target", "get_target", "register_target"]
