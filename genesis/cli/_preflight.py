"""Checks a command runs before its heavy imports (torch, MONAI), so a typo fails in a moment.

Registered names are read from the registering modules' source (``@register_task("name")``),
which is what the registries hold once those modules are imported (a test keeps the two equal);
unknown names get a "did you mean" suggestion (:func:`did_you_mean`).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Iterable

from genesis.errors import ConfigError, InputFileError, UnknownNameError

_ROOT = Path(__file__).resolve().parents[2]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'combined'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), sorted(set(choices)), n=2, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def static_names(package: str, decorator: str) -> list[str]:
    """Names registered with ``@decorator("name")`` in the modules of ``package`` (not imported)."""
    folder = _ROOT / package.replace(".", "/")
    pattern = re.compile(rf"^@{re.escape(decorator)}\(\s*[\"']([^\"']+)[\"']", re.MULTILINE)
    names: set[str] = set()
    for path in folder.glob("*.py"):
        try:
            names.update(pattern.findall(path.read_text(encoding="utf-8")))
        except OSError:
            continue
    return sorted(names)


def check_name(kind: str, name: str | None, package: str, decorator: str, list_hint: str = "") -> None:
    """Raise :class:`UnknownNameError` (with a suggestion) when ``name`` is not registered.

    Does nothing when the package's names cannot be read from source (then the registry checks).
    """
    if name is None:
        return
    names = static_names(package, decorator)
    if names and name not in names:
        hint = did_you_mean(name, names) or f"; available: {', '.join(names)}"
        raise UnknownNameError(f"unknown {kind} {name!r}{hint}{list_hint}")


def check_file(path: str | Path | None, what: str) -> None:
    """An existing regular file, or a one-line :class:`InputFileError`."""
    if path is None:
        return
    p = Path(path).expanduser()
    if not p.exists():
        raise InputFileError(f"{what} does not exist", p)
    if not p.is_file():
        raise InputFileError(f"{what} {'is a directory' if p.is_dir() else 'is not a regular file'}", p)


def check_exists(path: str | Path | None, what: str) -> None:
    """An existing path (file or folder), or a one-line :class:`InputFileError`."""
    if path is not None and not Path(path).expanduser().exists():
        raise InputFileError(f"{what} does not exist", Path(path).expanduser())


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set (torchrun sets it), else the CPU cores this process may use
    (its affinity mask), shared among the local torchrun processes."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(local, 1))


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (transforms and small convolutions slow down when threads
    outnumber free cores); returns the number used."""
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ConfigError(f"--threads must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)
    return n


def raise_open_file_limit(target: int = 65536) -> None:
    """Raise this process's soft limit on open files towards its hard limit (at most ``target``).

    The CLI owns its process: memory maps of cached volumes each hold a file descriptor, and the
    dataset keeps as many open as a share of this limit allows (``default_lru_volumes``); a soft
    limit of 1024, common on Linux, would keep 85 open and re-open maps on most cubes beyond that.
    """
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = target if hard == resource.RLIM_INFINITY else min(hard, target)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, OSError, ValueError):  # no POSIX limits, or not allowed: keep the default
        pass
