"""An output folder is never silently overwritten, and a run is only resumed with its own settings.

* :func:`check_out_dir`: ``out`` already holding a run needs ``resume`` (continue it) or
  ``overwrite`` (replace it); otherwise a one-line :class:`~genesis.errors.ConfigError`.
* :func:`settings_mismatch`: the settings that differ between a checkpoint and the command,
  so ``--resume --width 4`` on a width-2 run is a clear error, not a size-mismatch traceback.
* :func:`finished_epochs`: whether a resumed run has nothing left to do ("already at epoch N of N").
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from genesis.errors import ConfigError

#: Files and folders a pretraining run writes into ``out`` (what ``--overwrite`` removes).
RUN_FILES = ("last.pt", "best.pt", "log.csv", "config.yaml", "data.csv", "SYNTHETIC.txt")
RUN_DIRS = ("grids", "tensorboard")
#: Settings that may change when a run is resumed (where it runs, how long, what it logs).
RESUMABLE = ("epochs", "out", "resume", "overwrite", "device", "amp", "data.workers", "data.cache_dir",
             "log.", "early_stop.")


def _stage_dirs(out: Path) -> list[Path]:
    return sorted((p for p in out.glob("stage*") if p.is_dir() and p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))


def holds_run(out: str | Path) -> bool:
    """True when ``out`` holds checkpoints or a log of an earlier run."""
    out = Path(out)
    return any((out / f).exists() for f in ("last.pt", "best.pt", "log.csv")) or any(
        (d / "last.pt").exists() for d in _stage_dirs(out))


def check_out_dir(out: str | Path, resume: bool, overwrite: bool, remove: bool = True) -> None:
    """Refuse to write into a folder holding a run unless ``resume`` or ``overwrite``.

    With ``overwrite`` (and ``remove``, on the process that writes files) the earlier run's files
    are deleted first, so no stale stage or checkpoint can mix with the new run. Other files in
    ``out`` are left alone.

    Raises:
        ConfigError: ``out`` holds a run and neither flag is given; or both flags are given.
    """
    out = Path(out)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if resume or not holds_run(out):
        return
    if not overwrite:
        raise ConfigError(f"{out} already holds a run (last.pt/log.csv); add --resume to continue it or "
                          "--overwrite to replace it, or choose another --out")
    if remove:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for path in [out / d for d in RUN_DIRS] + _stage_dirs(out):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        flat: dict[str, Any] = {}
        for key, value in obj.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and name not in ("task_params", "model_kwargs"):
                flat.update(_flatten(value, name + "."))
            else:
                flat[name] = plain(value)
        return flat
    return {prefix.rstrip("."): plain(obj)}


def plain(value: Any) -> Any:
    """Tuples as lists and mapping keys as strings, recursively (how YAML/JSON give them back)."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def settings_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"width (run: 2, now: 4)"`` for every setting that differs and cannot change on resume.

    Unset or ``auto`` values of the command (resolved when the run started) are not compared.
    """
    old, new = _flatten(saved), _flatten(current)
    diffs = []
    for key, value in new.items():
        if any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE):
            continue
        if value is None or value == "auto" or key not in old:
            continue
        if old[key] != value:
            diffs.append(f"{key} (run: {old[key]!r}, now: {value!r})")
    return diffs


def check_resume_settings(saved: Mapping[str, Any], current: Mapping[str, Any], path: str | Path) -> None:
    """Raise a one-line :class:`ConfigError` naming the settings that differ from the run's."""
    diffs = settings_mismatch(saved, current)
    if diffs:
        raise ConfigError(f"--resume: settings differ from the run being resumed: {'; '.join(diffs)}; "
                          "drop them to continue that run, or use another --out (or --overwrite)", Path(path))


def finished_epochs(ckpt: Mapping[str, Any], epochs: int) -> bool:
    """The checkpoint's run has nothing left to do at ``epochs`` (finished or stopped early)."""
    return bool(ckpt.get("stopped_early")) or int(ckpt.get("epoch", 0)) >= epochs
