"""Multi-label classification (CheXpert-style): masked loss, per-label AUCs and their means.

A multi-label sample's ``label`` is a float vector with one entry per observation: 1 positive,
0 negative, ``nan`` ignored (an uncertain label under U-Ignore, Irvin et al. 2019). The loss is
binary cross-entropy per label, averaged over the labels that are not ignored; an AUC is computed
per observation over the units whose label for it is not ignored.

Test values (``evaluate``) are ``{"names", "labels", "scores", "columns"}`` with (units x labels)
lists; ``columns`` marks them as multi-label for :func:`finetune.stats.sample_statistic`.
Metric names: ``auc_<observation>`` (lower case, spaces as ``_``) and ``mean_auc_<set>`` for the
named sets of the target (e.g. ``mean_auc_competition``: the five CheXpert competition tasks).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

# the metric name of an observation and the metrics of these test values live with the statistics
from finetune.stats import multilabel_statistic as statistic
from finetune.stats import observation_metric as metric_key

__all__ = ["masked_bce", "metric_key", "score_units", "statistic"]


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the labels that are not ``nan`` (U-Ignore masks the rest)."""
    targets = targets.reshape(logits.shape).float()
    keep = ~torch.isnan(targets)
    if not bool(keep.any()):
        return logits.sum() * 0.0  # a batch with every label ignored: no signal, but a graph
    losses = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(targets), reduction="none")
    return (losses * keep).sum() / keep.sum()


def score_units(samples: Sequence[Any], probs: np.ndarray, columns: Sequence[str], aggregate: bool) -> dict[str, Any]:
    """Test values of multi-label samples; with ``aggregate`` one unit per group (study): the
    maximum probability over its views and, per label, its maximum label (ignored if all are).
    ``groups`` is the group of every unit, what the bootstrap resamples."""
    labels = np.stack([np.asarray(s.label, dtype=np.float64) for s in samples])
    names = [s.name for s in samples]
    if aggregate:
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(s.group, []).append(i)
        names = sorted(groups)
        probs = np.stack([probs[groups[g]].max(axis=0) for g in names])
        with np.errstate(all="ignore"):
            labels = np.stack([_nanmax(labels[groups[g]]) for g in names])
    labels_out = [[None if np.isnan(v) else float(v) for v in row] for row in labels]
    units = names if aggregate else [s.group for s in samples]  # the statistics resample these
    return {"names": names, "groups": units, "labels": labels_out, "scores": probs.tolist(), "columns": list(columns)}


def _nanmax(rows: np.ndarray) -> np.ndarray:
    out = np.full(rows.shape[1], np.nan)
    for j in range(rows.shape[1]):
        col = rows[:, j][~np.isnan(rows[:, j])]
        if col.size:
            out[j] = col.max()
    return out
