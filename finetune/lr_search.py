"""``--lr-search``: the learning rate chosen as Ke et al. (2023) chose it.

Ke et al. search "an exponentially sampled grid of learning rates over 1e-1 to 1e-5, choosing the
learning rate that achieves the highest validation [AUC] on 10% of a dataset ... and using that
learning rate for 100% of the same dataset". Each grid point trains one run (seed ``cfg.seed``) on
``lr_search_fraction`` of the training split (studies for ``pe``) and is scored by its best
validation metric over the epochs (the early-stopping metric, AUC for classification targets); the
full experiment then runs at the winner. The runs live under ``OUT/lr-search/lr-<rate>/`` and the
choice goes into ``metrics.json`` (``lr_search``).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import torch

from finetune.config import FinetuneConfig
from finetune.data import TargetData, subset_fraction
from finetune.targets.base import Target
from genesis.errors import TrainingDivergedError

Log = Callable[[str], None]


def best_validation(result: dict[str, Any], metric: str) -> float:
    """The best finite validation ``metric`` of a run's history (NaN when none is defined)."""
    values = [h.get(f"val_{metric}") for h in result.get("history", [])]
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return max(finite) if finite else math.nan


def search_learning_rate(
    cfg: FinetuneConfig, target: Target, data: TargetData, device: torch.device, out: Path, log: Log = print, *,
    run_one: Callable[..., dict[str, Any]],
) -> dict[str, Any]:
    """Train one short run per ``cfg.lr_grid`` rate and return the record with the ``chosen`` rate.

    ``run_one`` trains and scores one run (:func:`finetune.engine.train_run`: the engine passes
    it, so this module does not import the engine that imports it). Ties go to the earlier grid
    point; a rate whose run diverges is no candidate (listed under ``diverged``); when no rate
    gives a defined validation metric (e.g. a one-class validation split) the configured
    ``cfg.optim.lr`` is kept and the record says so.
    """
    train = subset_fraction(data.train, cfg.lr_search_fraction, cfg.seed, by_group=target.fraction_by_group)
    scores: dict[str, float] = {}
    diverged: list[float] = []
    for lr in cfg.lr_grid:
        trial = copy.deepcopy(cfg)
        trial.optim.lr = float(lr)
        trial.repeats, trial.compare = 1, None
        run_dir = out / "lr-search" / f"lr-{lr:g}"
        log(f"lr search: rate {lr:g} on {len(train)} training units ({cfg.lr_search_fraction:g} of the split)")
        try:
            result = run_one(target, data, train, trial, cfg.seed, run_dir, device, log)
        except TrainingDivergedError as exc:  # a rate too high for this data: out of the running, not fatal
            log(f"lr search: rate {lr:g} diverged at step {exc.step}; not a candidate")
            diverged.append(float(lr))
            scores[f"{lr:g}"] = math.nan
            continue
        scores[f"{lr:g}"] = best_validation(result, target.val_metric)
    defined = [(s, i) for i, s in enumerate(scores.values()) if not math.isnan(s)]
    if defined:
        best_index = max(defined, key=lambda si: (si[0], -si[1]))[1]
        chosen, reason = float(cfg.lr_grid[best_index]), f"highest validation {target.val_metric}"
    else:
        chosen, reason = float(cfg.optim.lr), f"no rate gave a defined validation {target.val_metric}; kept optim.lr"
    log(f"lr search: chose {chosen:g} ({reason})")
    return {"grid": [float(v) for v in cfg.lr_grid], "fraction": cfg.lr_search_fraction,
            "n_train": len(train), "val_metric": target.val_metric,
            "scores": {k: (None if math.isnan(v) else v) for k, v in scores.items()},
            "diverged": diverged, "chosen": chosen, "reason": reason, "runs": str(out / "lr-search")}
