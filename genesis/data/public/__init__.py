"""Loaders for public datasets in their real on-disk layouts (records as dataclasses, plain csv).

Submodules (imported on first use): ``luna16``, ``lidc``, ``medmnist``, ``rsna_pe``, ``lits``,
``brats``, ``folder``, ``manifest``. Each raises :class:`genesis.errors.DatasetLayoutError` naming
the directory and what is missing.
"""

from __future__ import annotations

import importlib

SUBMODULES = ("luna16", "lidc", "medmnist", "rsna_pe", "lits", "brats", "folder", "manifest")


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(SUBMODULES)
