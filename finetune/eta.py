"""How long a fine-tuning experiment will take, from its first measured training steps.

An estimate made before training from a stand-in network was 100x off (issue 25: "2250 steps at
about 103.7 s each, up to 64.8 h" for a width-8 2D U-Net whose steps took about 1 s; a width-32 3D
U-Net's cold first pass, times the batch size). Timing the real steps of the real network, crop and
batch after a warm-up step measures what the run will do, and costs nothing extra.
"""

from __future__ import annotations

from typing import Any, Callable

#: steps timed after the warm-up step (the first allocates buffers and picks kernels: slower)
MEASURED_STEPS = 3
#: warn when the measured steps put the experiment above this many seconds on a CPU
WARN_SECONDS = 1800.0


def total_steps(cfg: Any) -> int:
    """Training steps of every run of the experiment (early stopping may end runs sooner); the
    ``--lr-search`` runs come before and are not counted."""
    return cfg.epochs * cfg.steps_per_epoch * cfg.repeats * len(cfg.label_fractions)


class StepTimer:
    """Times the first training steps of an experiment and warns once when a CPU would take long.

    Args:
        total: training steps of the whole experiment (:func:`total_steps`).
        device_type: ``"cpu"`` warns; other devices only record the measurement.
        log: where the warning goes (the experiment's log).
        warn_seconds: warn above this estimated total (default :data:`WARN_SECONDS`).
    """

    def __init__(self, total: int, device_type: str, log: Callable[[str], None],
                 warn_seconds: float | None = None) -> None:
        self.total, self.device_type, self.log = int(total), device_type, log
        self.warn_seconds = WARN_SECONDS if warn_seconds is None else float(warn_seconds)
        self.times: list[float] = []
        self.seconds_per_step: float | None = None  # set once measured

    def record(self, seconds: float) -> None:
        """One training step took ``seconds`` (the first one is a warm-up and not counted)."""
        if self.seconds_per_step is not None:
            return
        self.times.append(float(seconds))
        if len(self.times) > MEASURED_STEPS:
            self.finish()

    def finish(self) -> None:
        """Estimate from the steps timed so far (called at the end of a short first epoch too)."""
        if self.seconds_per_step is not None or not self.times:
            return
        timed = self.times[1:] or self.times  # a one-step epoch: its single (warm-up) step
        self.seconds_per_step = sum(timed) / len(timed)
        hours = self.total * self.seconds_per_step / 3600
        if self.device_type == "cpu" and self.total * self.seconds_per_step > self.warn_seconds:
            self.log(f"warning: fine-tuning with these settings on a CPU: {self.total} steps at about "
                     f"{self.seconds_per_step:.2f} s each (measured over {len(timed)} steps), up to {hours:.1f} h "
                     "plus validation (early stopping may end sooner); --preset quick runs in about a minute")
