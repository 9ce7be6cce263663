"""Metrics and statistics for honest evaluation of fine-tuned models.

* :func:`auroc` — area under the ROC curve from ranks (the Mann-Whitney U statistic), so the
  runtime does not need scikit-learn (a dev-only dependency used by the tests to check this).
* :func:`dice`, :func:`iou`, :func:`iou_over_thresholds` — overlap of binary masks; the last one is
  the NCS metric of Models Genesis (Zhou et al. 2021, sec. 3.2.2): the *predicted probability map*
  is thresholded at 0.50, 0.55, ..., 0.95 and the foreground IoU against the ground-truth mask is
  averaged over those ten thresholds.
* :func:`bootstrap_ci` — non-parametric percentile bootstrap over test cases (Ke et al. 2023:
  1,000 resamples, 2.5/97.5 percentiles); resamples are drawn exactly as
  ``scipy.stats.bootstrap`` draws them, so both agree for the same seed.
* :func:`compare_runs` — independent two-sample t-test between two sets of runs (Zhou et al.
  2021, Table 3) with Student's (equal variances, as in the paper) and Welch's versions.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import stats as _scipy_stats

#: Thresholds of the NCS metric: 0.50, 0.55, ..., 0.95 (ten values).
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 positive, 0 negative).

    Computed as the Mann-Whitney U statistic divided by ``n_pos * n_neg``, with average ranks for
    ties, which equals the trapezoidal ROC area (and ``sklearn.metrics.roc_auc_score``).

    Returns:
        The AUC in [0, 1], or ``nan`` when only one class is present (AUC is undefined).

    Raises:
        ValueError: labels and scores differ in length, or labels are not 0/1.
    """
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _scipy_stats.rankdata(s)  # average ranks for ties
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two binary masks; 1.0 when both are empty."""
    a, b = _as_bool(pred), _as_bool(truth)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard index) of two binary masks; 1.0 when both are empty."""
    a, b = _as_bool(pred), _as_bool(truth)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def iou_over_thresholds(
    prob: np.ndarray, truth: np.ndarray, thresholds: Sequence[float] = IOU_THRESHOLDS
) -> float:
    """Mean foreground IoU of ``prob > t`` against ``truth`` over ``thresholds`` (NCS metric).

    ``prob`` is the predicted foreground *probability* map (after the sigmoid). The Models Genesis
    reference Keras code averaged a two-class (background + foreground) mean IoU at each
    threshold; we report the foreground IoU only, which is stricter and does not depend on how
    much background a crop holds.
    """
    p = np.asarray(prob, dtype=np.float32)
    t = _as_bool(truth)
    return float(np.mean([iou(p > thr, t) for thr in thresholds]))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) ignoring NaNs."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap confidence interval over ``n`` test cases.

    Each resample draws ``n`` case indices with replacement and calls ``statistic(indices)``,
    which recomputes the metric on those cases (for AUC: the AUC of the resampled cases, not an
    average of anything). Resamples where the statistic is undefined (``nan``, e.g. an AUC
    resample with one class only) are left out and counted in ``n_invalid``.

    Args:
        statistic: maps an int array of case indices to the metric.
        n: number of test cases.
        n_resamples: number of bootstrap resamples (1,000 as in Ke et al. 2023).
        confidence: two-sided confidence level.
        seed: seeds ``numpy.random.default_rng``; indices are drawn as ``rng.integers(0, n,
            (n_resamples, n))``, the same draw ``scipy.stats.bootstrap`` makes.

    Returns:
        ``{"low", "high", "confidence", "n_resamples", "n_invalid"}``.
    """
    if n <= 0:
        return {"low": float("nan"), "high": float("nan"), "confidence": confidence,
                "n_resamples": n_resamples, "n_invalid": n_resamples}
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, n, (n_resamples, n))
    values = np.array([statistic(idx) for idx in indices], dtype=np.float64)
    valid = values[~np.isnan(values)]
    alpha = (1.0 - confidence) / 2.0
    if valid.size == 0:
        low = high = float("nan")
    else:
        low, high = (float(q) for q in np.quantile(valid, [alpha, 1.0 - alpha]))
    return {"low": low, "high": high, "confidence": confidence,
            "n_resamples": n_resamples, "n_invalid": int(values.size - valid.size)}


def compare_runs(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Independent two-sample t-tests between the per-run metrics of two configurations.

    Returns Student's t-test (equal variances, the test of Zhou et al. 2021) and Welch's
    (unequal variances) statistics and two-sided p-values, via ``scipy.stats.ttest_ind``. With
    fewer than two runs on either side the test is undefined and the values are ``nan``.
    """
    x = np.asarray([v for v in a if not math.isnan(v)], dtype=np.float64)
    y = np.asarray([v for v in b if not math.isnan(v)], dtype=np.float64)
    out: dict[str, float | int] = {"n_a": int(x.size), "n_b": int(y.size),
                                   "mean_a": float(x.mean()) if x.size else float("nan"),
                                   "mean_b": float(y.mean()) if y.size else float("nan")}
    if x.size < 2 or y.size < 2:
        out.update(t_student=float("nan"), p_student=float("nan"), t_welch=float("nan"), p_welch=float("nan"))
        return out
    student = _scipy_stats.ttest_ind(x, y, equal_var=True)
    welch = _scipy_stats.ttest_ind(x, y, equal_var=False)
    out.update(t_student=float(student.statistic), p_student=float(student.pvalue),
               t_welch=float(welch.statistic), p_welch=float(welch.pvalue))
    return out
