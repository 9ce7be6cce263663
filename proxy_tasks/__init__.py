"""Proxy tasks for self-supervised pretraining.

``proxy_tasks.build(name, **params)`` returns a callable ``t(batch, generator=g) -> ProxyPair``;
``proxy_tasks.list_tasks()`` lists the registered names. A new task is one module in this
package with one class decorated by ``@register_task("name")``.
"""

from __future__ import annotations

from typing import Any

from genesis.registry import import_submodules
from proxy_tasks.base import TASKS, ProxyPair, ProxyTask, register_task

import_submodules(__name__)


def build(name: str, **params: Any) -> ProxyTask:
    """Instantiate the registered proxy task ``name`` with ``params``."""
    return TASKS.get(name)(**params)


def list_tasks() -> list[str]:
    return TASKS.names()


__all__ = ["build", "list_tasks", "register_task", "ProxyPair", "ProxyTask"]
