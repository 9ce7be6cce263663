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
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write ("file write failed") as RuntimeError
        raise write_error(exc, path, "checkpoint") from exc
    return path


def write_error(exc: BaseException, path: str | Path, what: str = "file") -> CheckpointError:
    """The one-line error for a failed atomic write of ``path`` (any OSError: disk full, I/O error,
    permission, or one without an errno), saying whether the previous file is still there."""
    path = Path(path)
    kept = f"the previous {path.name} is kept" if path.is_file() else f"no {path.name} was written"
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
    return CheckpointError(f"cannot write {what} ({reason}); {kept}", path)


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
        what = describe_non_checkpoint(path)
        if what is not None:  # not a checkpoint at all: say what it is instead of "unsafe pickle"
            raise CheckpointError(f"not a PyTorch checkpoint: this file looks like {what}", path) from None
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


#: Leading bytes of files people pass by mistake where a checkpoint is expected.
_SIGNATURES = (
    (0, b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model? genesis-finetune --weights reads those)"),
    (0, b"\x93NUMPY", "a NumPy .npy array"),
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"NRRD", "an NRRD image volume"),
    (0, b"ObjectType", "a MetaImage (.mhd) header"),
    (128, b"DICM", "a DICOM file"),
    (344, b"n+1\x00", "a NIfTI image volume"),
    (344, b"ni1\x00", "a NIfTI image header"),
    (0, b"\x1f\x8b", "a gzip-compressed file (e.g. a .nii.gz volume)"),
)


def describe_non_checkpoint(path: str | Path) -> str | None:
    """What a file that is not a PyTorch checkpoint looks like (an image, HTML, text...), or None."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    for offset, magic, what in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return what
    if not head:
        return "an empty file"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 27):
        return "a safetensors file (give it a .safetensors name)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lowered = text.lstrip().lower()
    if lowered.startswith(("<!doctype html", "<html")):
        return "an HTML page (a failed download or a login page?)"
    return f"a text file starting {text.strip().splitlines()[0][:40]!r}" if text.strip() else "a blank text file"


#: Pretraining checkpoint formats this version reads (older ones are migrated on load).
PRETRAIN_FORMATS = ("genesis-pretrain/1", "genesis-pretrain/2")


def checkpoint_parts(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Where the backbone, heads and teacher are in a pretraining checkpoint's ``model`` state.

    Format 2 checkpoints record it (``parts``, written from the method's
    :class:`~genesis.methods.base.Parts`); format 1 (before the method core) is migrated: an
    ``encoder_classifier`` (label tasks, Barlow Twins) has its encoder under ``backbone.`` and its
    head under ``head.``; any other network is the backbone itself.

    Raises:
        CheckpointError: no ``model_name`` to derive the parts from.
    """
    parts = ckpt.get("parts")
    if isinstance(parts, dict) and "backbone" in parts:
        return dict(parts)
    name, kwargs = ckpt.get("model_name"), ckpt.get("model_kwargs") or {}
    if not isinstance(name, str):
        raise CheckpointError("not a genesis-pretrain checkpoint (no model_name to find its backbone)")
    if name == "encoder_classifier":
        return {"backbone": "backbone.", "model_name": kwargs.get("encoder", "unet3d"),
                "model_kwargs": dict(kwargs.get("encoder_kwargs") or {}), "heads": ["head."], "teacher": None}
    return {"backbone": "", "model_name": name, "model_kwargs": dict(kwargs), "heads": [], "teacher": None}


def pretrained_backbone(ckpt: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], list[str]]:
    """The pretrained network of any method's checkpoint, without the method's own parts.

    Returns:
        ``(model_name, model_kwargs, state_dict, left_out)``: the backbone's registered name and
        arguments (``create_model(name, **kwargs)`` rebuilds it), its state dict with its own key
        names, and the keys of the checkpoint's module that belong to the method only (heads,
        projectors, decoders of masked image modelling, an EMA teacher), for load reports.
    """
    parts = checkpoint_parts(ckpt)
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise CheckpointError("no 'model' state dict in this checkpoint")
    prefix = str(parts.get("backbone") or "")
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    left_out = sorted(k for k in state if not k.startswith(prefix))
    heads = [str(h) for h in parts.get("heads") or []]
    if prefix == "" and heads:  # the module is the network with extra heads beside it
        backbone = {k: v for k, v in backbone.items() if not any(k.startswith(h) for h in heads)}
        left_out = sorted(k for k in state if any(k.startswith(h) for h in heads))
    teacher = parts.get("teacher")
    if teacher and prefix == "":
        backbone = {k: v for k, v in backbone.items() if not k.startswith(str(teacher))}
        left_out = sorted(set(left_out) | {k for k in state if k.startswith(str(teacher))})
    return str(parts["model_name"]), dict(parts.get("model_kwargs") or {}), backbone, left_out
