"""Shared CLI plumbing: user errors print one clear line and exit 2, never a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable

from genesis.errors import GenesisError


def user_errors_exit(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorator: a :class:`GenesisError` becomes ``error: message`` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except GenesisError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
