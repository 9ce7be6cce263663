"""Fine-tuning targets (nodule segmentation, false-positive reduction, PE detection, ...).

Each target is one module in :mod:`finetune.targets` that registers a :class:`finetune.targets.Target`
subclass with ``@register_target("name")``; every module there is imported here, so adding a target
is adding one file. :func:`run_finetune` (in :mod:`finetune.engine`) runs an experiment from a
:class:`finetune.config.FinetuneConfig` and returns the content of ``OUT/metrics.json``.
"""

from __future__ import annotations

from typing import Any, Callable

from genesis.registry import Registry, import_submodules

#: name -> Target subclass
TARGETS: Registry = Registry("fine-tuning target")
register_target = TARGETS.register


def get_target(name: str):
    """An instance of the registered target ``name`` (``UnknownNameError`` lists the names)."""
    return TARGETS.get(name)()


def run_finetune(cfg: Any, log: Callable[[str], None] = print) -> dict:
    """Run a fine-tuning experiment; see :func:`finetune.engine.run_finetune`."""
    from finetune.engine import run_finetune as _run

    return _run(cfg, log=log)


import_submodules("finetune.targets")

__all__ = ["TARGETS", "register_target", "get_target", "run_finetune"]
