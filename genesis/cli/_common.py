"""Shared CLI plumbing: user errors print one clear line and exit 2, never a traceback."""

from __future__ import annotations

import errno
import functools
import sys
from typing import Callable

from genesis.errors import GenesisError

#: OSErrors the user can cause or fix (a full disk, a read-only or forbidden folder, a failing disk
#: or network mount: EIO): one line, exit 2.
USER_OS_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                            errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EIO})


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line.

    A DataLoader worker re-raises a dataset error in the main process as the same type whose
    message is the whole worker traceback ("Caught VolumeReadError in DataLoader worker process
    0. Original Traceback ..."): its original message is the traceback's last line, minus the
    exception's qualified name. Library messages (nibabel, YAML, ITK) spanning lines are joined.
    """
    text = str(exc)
    if "Original Traceback" in text:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        last = lines[-1].strip() if lines else text
        name, sep, rest = last.partition(": ")
        if sep and name.split(".")[-1] == type(exc).__name__:
            last = rest
        text = last
    return " ".join(text.split())


def os_error_line(exc: OSError) -> str:
    """``OSError`` as ``what: file`` (e.g. ``No space left on device: runs/x/.last.pt.tmp``)."""
    what = exc.strerror or str(exc)
    where = f": {exc.filename}" if exc.filename else ""
    return f"{what}{where}"


def user_errors_exit(main: Callable[..., int | None]) -> Callable[..., int]:
    """Decorator: a :class:`GenesisError` becomes ``error: message`` on stderr and exit code 2.

    So do OSErrors the user can fix (disk full, permission denied, a file where a folder is
    expected; :data:`USER_OS_ERRORS`).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return int(main(*args, **kwargs) or 0)
        except GenesisError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return 2
        except OSError as exc:
            if exc.errno not in USER_OS_ERRORS:
                raise
            print(f"error: {os_error_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
