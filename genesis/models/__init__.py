"""Network registry: ``create_model(name, **kw)``, ``list_models()``.

Each network lives in one module of this package and registers its constructor with
``@register_model("name")``; every module here is imported on first use.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from genesis.models.base import MODELS, ModelOutput, count_parameters, register_model, unpack_output
from genesis.registry import import_submodules

import_submodules(__name__)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered network ``name`` with constructor arguments ``kwargs``."""
    return MODELS.get(name)(**kwargs)


def list_models() -> list[str]:
    return MODELS.names()


__all__ = ["create_model", "list_models", "register_model", "ModelOutput", "unpack_output", "count_parameters"]
