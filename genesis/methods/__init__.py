"""Pretraining methods: one module per method, registered with ``@register_method(name)``.

See :mod:`genesis.methods.base` for the contract. :func:`resolve_method` builds the method that
``--task NAME`` names: a registered method, or the restoration / label method around the proxy
task of that name in :mod:`proxy_tasks`. :func:`catalogue` lists every name by family.
"""

from __future__ import annotations

from typing import Any, Mapping

from genesis.methods.base import FAMILIES, METHODS, Method, NetworkRequest, NetworkSpec, Parts, register_method
from genesis.registry import import_submodules

import_submodules(__name__)


def method_class(name: str) -> Any:
    """The class ``--task NAME`` resolves to (a registered method or a proxy-task method class).

    Raises:
        UnknownNameError: neither a method nor a proxy task (the message lists both).
    """
    import proxy_tasks

    from genesis.errors import UnknownNameError

    if name in METHODS:
        return METHODS.get(name)
    if name in proxy_tasks.TASKS:
        return _proxy_method_class(proxy_tasks.TASKS.get(name))
    import difflib

    names = sorted(set(METHODS.names()) | set(proxy_tasks.list_tasks()))
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownNameError(f"unknown proxy task or method {name!r}{hint}; available: {', '.join(names)}")


def _proxy_method_class(task_cls: Any) -> Any:
    from genesis.methods.label import LabelMethod
    from genesis.methods.restoration import RestorationMethod

    return LabelMethod if getattr(task_cls, "kind", "restoration") == "classification" else RestorationMethod


def resolve_method(name: str, params: Mapping[str, Any], dims: int, loss: str = "auto", seed: int = 0) -> Method:
    """The method ``--task NAME`` names, with ``task_params`` ``params``, for ``dims``-D training."""
    from genesis.methods.proxy import ProxyTaskMethod, build_proxy_task

    cls = method_class(name)
    if issubclass(cls, ProxyTaskMethod) and name not in METHODS:
        return cls(name, build_proxy_task(name, dict(params), dims), loss, seed)
    return cls.create(dict(params), dims, loss, seed)


def needs_radiograph_metadata(name: str) -> bool:
    """Whether ``--task NAME`` needs radiographs that carry their metadata (the metadata task)."""
    import proxy_tasks

    if name in proxy_tasks.TASKS:
        return bool(getattr(proxy_tasks.TASKS.get(name), "consumes_metadata", False))
    return bool(getattr(METHODS.get(name), "consumes_metadata", False)) if name in METHODS else False


def catalogue() -> dict[str, list[tuple[str, str]]]:
    """``{family: [(name, paper), ...]}`` of every ``--task`` name, families in :data:`FAMILIES` order."""
    import proxy_tasks

    out: dict[str, list[tuple[str, str]]] = {f: [] for f in FAMILIES}
    for name in sorted(set(METHODS.names()) | set(proxy_tasks.list_tasks())):
        cls = method_class(name)
        family = cls.family if isinstance(cls.family, str) else "restoration"
        paper = cls.paper if isinstance(getattr(cls, "paper", ""), str) else ""
        if not paper:
            paper = getattr(proxy_tasks.TASKS.get(name), "paper", "") if name in proxy_tasks.TASKS else ""
        out.setdefault(family, []).append((name, paper))
    return {f: v for f, v in out.items() if v}


__all__ = ["FAMILIES", "METHODS", "Method", "NetworkRequest", "NetworkSpec", "Parts", "register_method",
           "method_class", "resolve_method", "needs_radiograph_metadata", "catalogue"]
