"""Data kinds: each module detects one kind of ``--data`` input and builds its volume source.

``resolve_data(request)`` asks the registered kinds in their ``order`` and the first that claims
the request resolves it (:class:`ResolvedData`: the data part of the recipe plus the source).
Adding a data kind is one module here with one class decorated by ``@register_kind(name)``.
"""

from __future__ import annotations

from genesis.data.kinds.base import DATA_KINDS, DataKind, DataPlan, DataRequest, ResolvedData, register_kind, resolve_data
from genesis.registry import import_submodules

import_submodules(__name__)

__all__ = ["DATA_KINDS", "DataKind", "DataPlan", "DataRequest", "ResolvedData", "register_kind", "resolve_data"]
