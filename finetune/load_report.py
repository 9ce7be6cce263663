"""What ``--weights`` put into the network: printed once and written to ``OUT/load_report.json``.

Built before any run trains (so a wrong file fails in seconds), from the same
:func:`finetune.transfer.build_model` every run uses: tensors loaded, missing from the file,
skipped (in the file, not in the network), shape mismatches and 2D kernels inflated to 3D.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from genesis.errors import CheckpointError
from genesis.fileio import atomic_write_text


def _write(path: Path, details: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(details, indent=2) + "\n")


def summary_lines(details: dict[str, Any], path: Path) -> list[str]:
    """A few lines for the console; the full lists are in the JSON file."""
    lines = [f"weights: {details['summary']}"]
    if details["missing"]:
        shown = ", ".join(details["missing"][:4]) + (" ..." if len(details["missing"]) > 4 else "")
        lines.append(f"  not in the file (initialised with --init): {shown}")
    if details["skipped_unexpected"]:
        shown = ", ".join(details["skipped_unexpected"][:4]) + (" ..." if len(details["skipped_unexpected"]) > 4 else "")
        lines.append(f"  in the file but not used by this network: {shown}")
    lines.append(f"  full load report: {path}")
    return lines


def write_load_report(cfg: Any, task: str, out: Path, log: Callable[[str], None] = print,
                      **network: Any) -> dict[str, Any] | None:
    """Build the network with ``cfg.weights`` once, log the load report and write ``out/load_report.json``.

    ``network``: ``spatial_dims`` / ``in_channels`` of the run's network when the target knows them
    before its data (2D/2.5D ``ncs``), passed to :func:`finetune.transfer.build_model`.

    Returns:
        The report (None without ``--weights``).
    Raises:
        CheckpointError: the weights do not fit (the report is written first; the message points to it).
    """
    if not cfg.weights:
        return None
    import torch

    from finetune.transfer import build_model

    path = out / "load_report.json"
    try:
        with torch.random.fork_rng(devices=[]):
            _, _, _, info = build_model(task, cfg, **network)
    except CheckpointError as exc:
        details = getattr(exc, "load_report", None)
        if details is None:
            raise
        _write(path, details)
        raise CheckpointError(f"{exc} (load report: {path})") from None
    details = info.get("load_report")
    if details is None:  # a baseline loader that reports counts only
        details = {k: v for k, v in info.items() if k != "model_kwargs"}
        details.setdefault("summary", f"loaded {info.get('loaded', '?')} tensors from {info.get('weights_source')}")
        details.setdefault("missing", [])
        details.setdefault("skipped_unexpected", [])
    _write(path, details)
    for line in summary_lines(details, path):
        log(line)
    return details
