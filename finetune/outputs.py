"""Writes of a fine-tuning run whose failures name the file (a full disk, a read-only folder).

An ``OSError`` raised while writing through an open file carries no file name ("No space left on
device"); every write of ``genesis-finetune`` (``config.yaml``, ``load_report.json``,
``result.json``, ``metrics.*``) goes through :func:`naming_write_errors`, so the one-line error
says which file and whether the previous one is kept. Checkpoints do the same in
:func:`genesis.training.checkpoint.save_checkpoint`. An error that already names its file (a
:class:`~genesis.errors.GenesisError`, e.g. from a writer that names its destination itself) passes
unchanged.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from genesis.errors import GenesisError
from genesis.training.checkpoint import write_error


@contextlib.contextmanager
def naming_write_errors(path: str | Path, what: str = "file") -> Iterator[None]:
    """Turn an ``OSError`` of the writes in this block into a one-line error naming ``path``.

    Raises:
        CheckpointError: from :func:`genesis.training.checkpoint.write_error`.
    """
    try:
        yield
    except GenesisError:  # already one line naming its file
        raise
    except OSError as exc:
        raise write_error(exc, path, what) from exc
