"""Fine-tuning targets (nodule segmentation, false-positive reduction, PE detection, ...).

Each target is one module in :mod:`finetune.targets` that registers a
:class:`finetune.targets.Target` subclass with ``@register_target("name")``; adding a target is
adding one file. :func:`run_finetune` (in :mod:`finetune.engine`) runs an experiment from a
:class:`finetune.config.FinetuneConfig` and returns the content of ``OUT/metrics.json``.

Modules of this package import :mod:`finetune.targets` (or ``finetune.targets.base``), never this
package: it sits on top of them (it imports the engine), so importing it from below would be a circle.
"""

from __future__ import annotations

from typing import Any, Callable

from finetune.targets import TARGETS, get_target, register_target


def run_finetune(cfg: Any, log: Callable[[str], None] = print) -> dict:
    """Run a fine-tuning experiment; see :func:`finetune.engine.run_finetune`."""
    from finetune.engine import run_finetune as _run

    return _run(cfg, log=log)


__all__ = ["TARGETS", "register_target", "get_target", "run_finetune"]
