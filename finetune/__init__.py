"""Fine-tuning targets (nodule segmentation, false-positive reduction, PE detection, ...).

Each target is one module in :mod:`finetune.targets` that registers a :class:`finetune.targets.Target`
subclass with ``@register_target("name")``; every module there is imported here, so adding a target
is adding one file. :func:`run_finetune` (in :mod:`finetune.engine`) runs an experiment from a
:class:`finetune.config.FinetuneConfig` and returns the content of ``OUT/metrics.json``.
"""

from __future__ import annotations

from typing import Any, Callable

from genesis.registry import Registry, import_submodules



class _TargetRegistry(Registry):
    """The target registry; the target modules (and torch) are imported on first use, so that
    ``finetune.config`` and the CLI's argument checks stay fast."""

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            type(self)._loaded = True
            import_submodules("finetune.targets")

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


#: name -> Target subclass
TARGETS: Registry = _TargetRegistry("fine-tuning target")
register_target = TARGETS.register


def get_target(name: str):
    """An instance of the registered target ``name`` (``UnknownNameError`` lists the names)."""
    return TARGETS.get(name)()


def run_finetune(cfg: Any, log: Callable[[str], None] = print) -> dict:
    """Run a fine-tuning experiment; see :func:`finetune.engine.run_finetune`."""
    from finetune.engine import run_finetune as _run

    return _run(cfg, log=log)


__all__ = ["TARGETS", "register_target", "get_target", "run_finetune"]
