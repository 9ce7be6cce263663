"""A small name -> constructor registry, shared by networks, proxy tasks, targets and weights.

Adding a network, proxy task or target is one file: the module registers itself with a decorator
and its package imports every module it contains (:func:`import_submodules`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

from genesis.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes or factory functions)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (default: ``obj.__name__``)."""

        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return decorator

    def register_named(self, name: str) -> Callable[[T], T]:
        """Class decorator: register under ``name`` and give the class that ``name`` when it has none."""

        def decorator(cls: T) -> T:
            if not getattr(cls, "name", ""):
                setattr(cls, "name", name)
            return self.register(name)(cls)

        return decorator

    def get(self, name: str) -> T:
        """Return the entry called ``name``; the error lists the available names."""
        try:
            return self._entries[name]
        except KeyError:
            import difflib

            available = ", ".join(sorted(self._entries)) or "none"
            close = difflib.get_close_matches(str(name), sorted(self._entries), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint}; available: {available}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that their registration decorators run."""
    package = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
