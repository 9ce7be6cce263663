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
    "samples_per_s", "seconds",
)


def write_csv_log(history: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] = LOG_COLUMNS) -> None:
    """Write one row per epoch record (missing values left empty)."""
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
