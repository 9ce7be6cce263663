"""Released weights: registry of manifests, verified download, conversion and loading.

* :mod:`~genesis.weights.manifest` - ``WeightsEntry``, ``WeightsRegistry``, ``WeightsSettings``
  (cache dir ``GENESIS_CACHE``, extra registry files ``GENESIS_WEIGHTS_REGISTRY``, ``GENESIS_OFFLINE``).
* :mod:`~genesis.weights.download` - resumable, checksum-verified downloads (trust-on-first-use
  when upstream publishes no digest).
* :mod:`~genesis.weights.convert` - the official Models Genesis PyTorch/Keras files to our layout.
* :mod:`~genesis.weights.load` - ``load_weights(model, path_or_name, part="full"|"encoder")``.
* :mod:`~genesis.weights.export` - our checkpoints to safetensors + model card + manifest entry.
"""

from __future__ import annotations

from typing import Any

from genesis.weights.download import download, ensure, verify_cached
from genesis.weights.manifest import WeightsEntry, WeightsRegistry, WeightsSettings

# Loading and export need torch; import them on first use so `genesis-weights list` stays quick.
_LAZY = {
    "load_weights": "genesis.weights.load",
    "read_state": "genesis.weights.load",
    "LoadReport": "genesis.weights.load",
    "export_checkpoint": "genesis.weights.export",
    "read_card": "genesis.weights.export",
    "ExportResult": "genesis.weights.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'genesis.weights' has no attribute {name!r}")

__all__ = [
    "WeightsEntry",
    "WeightsRegistry",
    "WeightsSettings",
    "download",
    "ensure",
    "verify_cached",
    "load_weights",
    "read_state",
    "LoadReport",
    "export_checkpoint",
    "read_card",
    "ExportResult",
]
