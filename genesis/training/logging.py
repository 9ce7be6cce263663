"""Training logs: a CSV per run, TensorBoard when installed, a tqdm progress bar.

The CSV is rewritten (atomically) from the run's history after every epoch, so a resumed run's
log has exactly one row per finished epoch, however often the run was interrupted.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from genesis.fileio import atomic_write_text

LOG_COLUMNS: tuple[str, ...] = (
    "epoch", "step", "train_loss", "val_loss", "val_mse", "val_masked_mse", "val_ce", "val_acc", "lr",
    "samples_per_s", "seconds", "val_identity_mse", "val_mean_mse", "val_fill_mse", "val_masked_fill_mse",
    "val_output_std", "val_patients", "val_mean_margin", "val_mean_margin_se", "val_identity_margin",
    "val_identity_margin_se", "val_fill_margin", "val_fill_margin_se", "collapse",
)


def write_csv_log(history: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] = LOG_COLUMNS) -> None:
    """Write one row per epoch record (missing values left empty); a method's own validation
    metrics (e.g. ``val_top1``, ``val_chance``) follow the standard columns."""
    extra = [k for k in dict.fromkeys(k for row in history for k in row)
             if k not in columns and isinstance(history[0].get(k, 0.0), (int, float))]
    columns = [*columns, *extra]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(Path(path), buffer.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


class TensorBoardLogger:
    """Scalars to TensorBoard if ``tensorboard`` is installed (optional dependency), else nothing."""

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the optional extra ``genesis-ssl[tensorboard]`` is not installed
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def scalars(self, values: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step"):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> Iterator:
    """A tqdm bar (loss and samples/s set by the caller via ``set_postfix``) or the bare iterable."""
    if not enabled:
        return iter(iterable)
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


#: Above this many epochs (the paper's 10000 = "until early stopping") no run ETA is shown.
MAX_ETA_EPOCHS = 1000


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: compact durations for the progress bar and epoch lines."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def epoch_line(record: dict[str, Any], epochs: int, stage: Any = None, eta_s: float | None = None) -> str:
    """One line per finished epoch: stage, epoch, losses, the method's headline metrics and the
    baselines they must beat (``Method.log_keys``), speed, ETA and any collapse warning."""
    where = f"{stage_name(stage)}, " if stage is not None and getattr(stage, "n_stages", 1) > 1 else ""
    parts = [f"{where}epoch {record.get('epoch')}/{epochs}"]
    shown = ("train_loss", "val_loss", "val_mse", "val_acc",
             *tuple(getattr(getattr(stage, "method", None), "log_keys", ()) or ()))
    for key in dict.fromkeys(shown):
        if isinstance(record.get(key), float):
            parts.append(f"{key} {record[key]:.4g}")
    if record.get("seconds") is not None:
        parts.append(f"{record['seconds']:.1f}s")
    if eta_s is not None and record.get("epoch", 0) < epochs:
        parts.append(f"ETA {format_seconds(eta_s)} (at most)")
    line = "  ".join(parts)
    return line + (f"  WARNING: {record['collapse']}" if record.get("collapse") else "")


def stage_label(task: Any) -> str:
    """A short description of a stage's task (``mask 10%`` for masked curriculum stages)."""
    if task is None:
        return ""
    describe = getattr(task, "describe", None)
    if callable(describe):
        return str(describe())
    for attr in ("mask_ratio", "ratio", "mask_fraction", "fraction"):
        value = getattr(task, attr, None)
        if isinstance(value, (int, float)) and 0 < value <= 1:
            return f"mask {value * 100:g}%"
    return ""


def stage_name(stage: Any) -> str:
    """``stage 2/4, mask 10%``: the position and task of a stage of a multi-stage scheme."""
    method = getattr(stage, "method", None)
    label = stage_label(getattr(method, "task", method))
    return f"stage {stage.index + 1}/{stage.n_stages}" + (f", {label}" if label else "")
