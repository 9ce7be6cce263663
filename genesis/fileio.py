"""Atomic file writes: a kill at any moment leaves either the old file or the new one."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same directory; rename it onto ``path`` on success.

    The temporary file is removed if the body raises, so no partial file is ever left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # make the bytes durable before the rename
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and atomically move the result onto ``path``."""
    with atomic_path(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomic, indented JSON with NaN/inf written as null (strict JSON) and numpy scalars as numbers."""
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2) + "\n")


def write_report(out_dir: str | Path, stem: str, data: Any, markdown: str) -> tuple[Path, Path]:
    """Write ``stem.json`` (for tools) and ``stem.md`` (for people) into ``out_dir``, each atomically.

    Returns the two paths.
    """
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_json(json_path, data)
    atomic_write_text(md_path, markdown if markdown.endswith("\n") else markdown + "\n")
    return json_path, md_path
