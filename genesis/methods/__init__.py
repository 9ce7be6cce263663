"""Pretraining methods: one module per method, registered with ``@register_method(name)``.

See :mod:`genesis.methods.base` for the contract. ``resolve_method(name, params)`` builds the
method that ``--task NAME`` names: a registered method, or the restoration / label method around
the proxy task of that name in :mod:`proxy_tasks`.
"""

from __future__ import annotations

from genesis.methods.base import FAMILIES, METHODS, Method, NetworkRequest, NetworkSpec, Parts, register_method
from genesis.registry import import_submodules

import_submodules(__name__)

__all__ = ["FAMILIES", "METHODS", "Method", "NetworkRequest", "NetworkSpec", "Parts", "register_method"]
