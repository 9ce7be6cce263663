"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a plain dict (``{"model": state_dict, "optimizer": ..., "epoch": ...}``) of
tensors, numbers, strings, lists and dicts, so ``torch.load(..., weights_only=True)`` reads it.
A file that needs pickled code to load is refused with a :class:`CheckpointError`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from genesis.errors import CheckpointError
from genesis.fileio import atomic_write


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Save ``state`` to ``path`` atomically (temp file in the same folder, then rename).

    Raises:
        CheckpointError: the write failed (disk full, permission...); ``path`` is left as it was
            and the temporary file is removed.
    """
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as exc:
        kept = f"the previous {path.name} is kept" if path.is_file() else f"no {path.name} was written"
        raise CheckpointError(f"cannot write checkpoint ({exc.strerror or exc}); {kept}", path) from exc
    except RuntimeError as exc:  # torch.save reports a failed write ("file write failed") as RuntimeError
        kept = f"the previous {path.name} is kept" if path.is_file() else f"no {path.name} was written"
        reason = " ".join(str(exc).split())
        raise CheckpointError(f"cannot write checkpoint ({reason}); {kept}", path) from exc
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files left by checkpoint writes that were killed (``.last.pt.*.tmp``).

    :func:`genesis.fileio.atomic_path` removes its temporary file on any exception, but not after a
    SIGKILL or power loss; the next run calls this before it writes.

    Returns:
        The removed files.
    """
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for tmp in folder.glob(".*.pt.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``).

    Raises:
        CheckpointError: missing, truncated or corrupt file, or one that would need to unpickle
            arbitrary code (refused).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            "refused: this checkpoint needs arbitrary Python objects to load (unsafe pickle); "
            f"re-save it as a plain state_dict or safetensors ({str(exc).splitlines()[0]})",
            path,
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch raises anything (KeyError, RuntimeError...) on junk
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise CheckpointError(f"cannot read checkpoint (not a PyTorch file, corrupt or truncated?): {detail}", path) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict checkpoint, found {type(obj).__name__}", path)
    return obj
