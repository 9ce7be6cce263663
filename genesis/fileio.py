"""Atomic file writes: a kill at any moment leaves either the old file or the new one, and a failed
write (a full disk...) is a :class:`~genesis.errors.FileWriteError` naming the file."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from genesis.errors import FileWriteError


def write_failure(exc: OSError, path: str | Path, tmp: str | Path | None = None) -> FileWriteError:
    """The :class:`FileWriteError` for an OSError while writing ``path`` (through ``tmp``).

    The message names ``path`` and the reason, and says whether an earlier ``path`` is still there;
    a file the OSError names other than ``path`` or ``tmp`` (something the writer read) is named too.
    """
    path = Path(path)
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    other = exc.filename if exc.filename not in (None, str(path), str(tmp) if tmp else None) else None
    kept = f"the previous {path.name} is kept" if path.is_file() else "nothing was written"
    error = FileWriteError(f"cannot write the file ({reason}{f': {other}' if other else ''}); {kept}", path)
    error.errno, error.strerror, error.filename = exc.errno, reason, str(path)
    return error


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same directory; rename it onto ``path`` on success.

    The temporary file is removed if the body raises, so no partial file is ever left behind.

    Raises:
        FileWriteError: any OSError while writing (disk full, permission, I/O error), from the
            body, the flush to disk or the rename, naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_failure(exc, path) from exc
    tmp = Path(tmp_name)
    try:
        try:
            # mkstemp creates 0600 files; give the result the permissions a plain open() would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            yield tmp
            with open(tmp, "rb+") as handle:  # make the bytes durable before the rename
                os.fsync(handle.fileno())  # a full disk may only say so here (delayed allocation)
            os.replace(tmp, path)
        except FileWriteError:  # a nested write already named its file
            raise
        except OSError as exc:
            raise write_failure(exc, path, tmp) from exc
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
