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
  2021, Table 3) with Student's (equal variances, as in the paper) and Welch's versions;
  :func:`paired_runs` — the paired t-test over runs that share a seed (and its labelled draw);
  :func:`paired_bootstrap` — the bootstrap of the paired difference over test patients;
  :func:`holm` — Holm's step-down correction when several comparisons are made at once.

**The unit is the patient.** Samples (patches, slices, nodules) of one patient are correlated, so
every interval and test resamples or pairs *patients* (:class:`Clusters`): a resampled patient
brings all its samples, and the metric is recomputed on the pooled samples (the cluster
bootstrap; Field & Welsh 2007). :func:`sample_statistic` is a metric on sample indices,
:func:`unit_statistic` the same metric on patient indices, :func:`n_units` the number of patients.
For segmentation the headline metric is the mean over test cases whose ground truth has
foreground (cases without foreground have no object to overlap: Dice would be 1 for an empty
prediction and 0 for any false positive); the mean over all cases, with that convention, is
reported next to it (``all_cases=True``).

Between-run variance: :func:`joint_bootstrap_ci` resamples runs and test patients together for the
CI of a run-averaged metric; :func:`t_interval` is the t-interval over runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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


def auroc_ovr(probs: np.ndarray, labels: np.ndarray) -> float:
    """Macro one-vs-rest AUC of (N, K) class probabilities: the mean of :func:`auroc` of each
    class against the rest over the classes that can be scored (present and not alone); ``nan``
    when none can."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    aucs = [auroc(labels == c, probs[:, c]) for c in range(probs.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


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
    """Percentile bootstrap confidence interval over ``n`` test units (patients: give it
    :func:`unit_statistic` and :func:`n_units`).

    Each resample draws ``n`` unit indices with replacement and calls ``statistic(indices)``,
    which recomputes the metric on those units (for AUC: the AUC of the resampled cases, not an
    average of anything). Resamples where the statistic is undefined (``nan``, e.g. an AUC
    resample with one class only) are left out and counted in ``n_invalid``.

    Args:
        statistic: maps an int array of case indices to the metric.
        n: number of test units.
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
    return _percentiles(np.array([statistic(idx) for idx in indices], dtype=np.float64), confidence, n_resamples)


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


def paired_runs(a: Sequence[float], b: Sequence[float]) -> dict[str, float | int]:
    """Paired t-test (``scipy.stats.ttest_rel``) of per-run metrics that share a seed, in order.

    Runs of two configurations with the same seed share the labelled draw and the test cases, so
    their difference removes the variation between draws. Pairs with a ``nan`` on either side are
    left out; fewer than two pairs give ``nan``.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired runs differ in number: {x.size} vs {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    out: dict[str, float | int] = {"n_pairs": int(x.size),
                                   "mean_difference": float(np.mean(x - y)) if x.size else float("nan")}
    if x.size < 2:
        out.update(t_paired=float("nan"), p_paired=float("nan"))
        return out
    test = _scipy_stats.ttest_rel(x, y)
    out.update(t_paired=float(test.statistic), p_paired=float(test.pvalue))
    return out


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control for several comparisons).

    Written here: scipy.stats offers only Benjamini-Hochberg (``false_discovery_control``) and
    statsmodels is no dependency. ``nan`` entries stay ``nan`` and do not count as comparisons.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order])) if m else np.empty(0)
    out[order] = adjusted
    return out.tolist()


def t_interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Student t confidence interval of the mean of per-run values (``nan`` with fewer than two)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size < 2:
        return {"low": float("nan"), "high": float("nan")}
    half = _scipy_stats.t.ppf(0.5 + confidence / 2.0, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return {"low": float(v.mean() - half), "high": float(v.mean() + half)}


# ------------------------------------------------------------------------------ units: patients
@dataclass(frozen=True)
class Clusters:
    """Test samples grouped into units (patients): resampling a unit takes all of its samples.

    Attributes:
        names: unit names, sorted (unit ``k`` is ``names[k]``).
        order: sample indices sorted by unit.
        starts: where each unit's samples begin in ``order``.
        counts: how many samples each unit has.
    """

    names: tuple[str, ...]
    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, groups: Sequence[str]) -> "Clusters":
        """Units from the group (patient) name of every sample."""
        names, inverse = np.unique(np.asarray([str(g) for g in groups], dtype=str), return_inverse=True)
        counts = np.bincount(inverse.reshape(-1), minlength=names.size)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        return cls(tuple(names.tolist()), np.argsort(inverse.reshape(-1), kind="stable"), starts, counts)

    @property
    def n(self) -> int:
        return len(self.names)

    def samples(self, units: np.ndarray) -> np.ndarray:
        """Sample indices of the units ``units`` (with repeats), unit after unit."""
        units = np.asarray(units, dtype=np.int64)
        lengths = self.counts[units]
        before = np.cumsum(lengths) - lengths  # where each unit's samples start in the output
        return self.order[np.repeat(self.starts[units] - before, lengths) + np.arange(int(lengths.sum()))]


def clusters(values: dict[str, Any]) -> Clusters:
    """The units of per-sample test values: their ``groups`` (patients), else every sample its own."""
    return Clusters.of(values.get("groups") or values["names"])


def n_units(values: dict[str, Any]) -> int:
    """Number of statistical units (patients) of per-sample test values."""
    return clusters(values).n if values.get("names") else 0


def _foreground(values: dict[str, Any], metric: str) -> np.ndarray | None:
    """Which cases have foreground for ``metric``: its class's flags (``dice_<class>``), else any."""
    for prefix in ("dice_", "iou_"):
        key = f"foreground_{metric[len(prefix):]}"
        if metric.startswith(prefix) and key in values:
            return np.asarray(values[key], dtype=bool)
    return np.asarray(values["foreground"], dtype=bool) if "foreground" in values else None


def sample_statistic(task: str, values: dict[str, Any], metric: str,
                     all_cases: bool = False) -> Callable[[np.ndarray], float]:
    """``metric`` recomputed on a set of sample indices (repeats allowed, as a bootstrap draws them).

    Segmentation: the mean per-case value over the cases with foreground (``all_cases``: over
    every case, empty ground truth scored 1 for an empty prediction and 0 otherwise); ``nan`` when
    the set has no such case. Classification: the AUC (or accuracy) of the samples, recomputed.
    """
    if task == "segmentation":
        arr = np.asarray(values[metric], dtype=np.float64)
        fg = None if all_cases else _foreground(values, metric)
        if fg is None:
            return lambda idx: float(arr[idx].mean()) if len(idx) else float("nan")
        return lambda idx: float(arr[idx][fg[idx]].mean()) if fg[idx].any() else float("nan")
    if "columns" in values:  # multi-label test values (finetune.multilabel)
        return multilabel_statistic(values, metric, values.get("sets", {}))
    labels = np.asarray(values["labels"])
    scores = np.asarray(values["scores"], dtype=np.float64)
    if scores.ndim == 2:  # K classes: softmax vectors; macro one-vs-rest AUC and accuracy
        if metric == "accuracy":
            return lambda idx: float(np.mean(scores[idx].argmax(1) == labels[idx])) if len(idx) else float("nan")
        return lambda idx: auroc_ovr(scores[idx], labels[idx])
    if metric == "accuracy":
        return lambda idx: float(np.mean((scores[idx] > 0.5) == (labels[idx] == 1))) if len(idx) else float("nan")
    return lambda idx: auroc(labels[idx], scores[idx])


def unit_statistic(task: str, values: dict[str, Any], metric: str,
                   all_cases: bool = False) -> Callable[[np.ndarray], float]:
    """:func:`sample_statistic` on a set of *unit* (patient) indices: each brings all its samples."""
    units, statistic = clusters(values), sample_statistic(task, values, metric, all_cases)
    return lambda idx: statistic(units.samples(idx))


def metric_values(task: str, values: dict[str, Any], metrics: Sequence[str],
                  all_cases: bool = False) -> dict[str, float]:
    """Point estimates of every metric on all test samples."""
    idx = np.arange(len(values["names"]))
    return {m: sample_statistic(task, values, m, all_cases)(idx) if idx.size else float("nan") for m in metrics}


def multilabel_statistic(values: dict[str, Any], metric: str,
                         sets: dict[str, Sequence[str]]) -> Callable[[np.ndarray], float]:
    """Multi-label test values (:mod:`finetune.multilabel`): ``metric`` recomputed on unit indices:
    one observation's AUC (``auc_<observation>``), or the mean AUC of a set (``mean_auc_<set>``:
    the mean of the observations whose AUC is defined on those units; ``nan`` if none is)."""
    columns = list(values["columns"])
    labels = np.array([[np.nan if v is None else v for v in row] for row in values["labels"]], dtype=np.float64)
    labels = labels.reshape(len(values["names"]), len(columns))
    scores = np.asarray(values["scores"], dtype=np.float64).reshape(labels.shape)

    def auc(j: int, idx: np.ndarray) -> float:
        y, s = labels[idx, j], scores[idx, j]
        keep = ~np.isnan(y)
        return auroc(y[keep].astype(int), s[keep])

    keys = {observation_metric(c): j for j, c in enumerate(columns)}
    if metric in keys:
        j = keys[metric]
        return lambda idx: auc(j, np.asarray(idx))
    if metric.startswith("mean_auc_") and metric[len("mean_auc_"):] in sets:
        members = [columns.index(c) for c in sets[metric[len("mean_auc_"):]] if c in columns]

        def mean(idx: np.ndarray) -> float:
            aucs = [auc(j, np.asarray(idx)) for j in members]
            aucs = [a for a in aucs if not np.isnan(a)]
            return float(np.mean(aucs)) if aucs else float("nan")

        return mean
    raise KeyError(f"unknown multi-label metric {metric!r}")


def observation_metric(observation: str) -> str:
    """The metric name of a multi-label observation: ``Pleural Effusion`` -> ``auc_pleural_effusion``."""
    return "auc_" + observation.lower().replace(" ", "_").replace("/", "_")


# ------------------------------------------------------------------- resampling runs and patients
def _two_level(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n: int,
    n_runs: int,
    *,
    resample_runs: bool,
    n_resamples: int,
    seed: int,
) -> np.ndarray:
    """``statistic(units, runs)`` on bootstrap resamples of the ``n`` units and (with
    ``resample_runs``) of the ``n_runs`` runs. Units are drawn first, exactly as
    :func:`bootstrap_ci` draws them, so with runs fixed both give the same resamples."""
    rng = np.random.default_rng(seed)
    units = rng.integers(0, n, (n_resamples, n))
    runs = (rng.integers(0, n_runs, (n_resamples, n_runs)) if resample_runs and n_runs > 1
            else np.broadcast_to(np.arange(n_runs), (n_resamples, n_runs)))
    return np.array([statistic(u, r) for u, r in zip(units, runs)], dtype=np.float64)


def _percentiles(values: np.ndarray, confidence: float, n_resamples: int) -> dict[str, float]:
    valid = values[~np.isnan(values)]
    alpha = (1.0 - confidence) / 2.0
    low, high = ((float(q) for q in np.quantile(valid, [alpha, 1.0 - alpha])) if valid.size
                 else (float("nan"), float("nan")))
    return {"low": low, "high": high, "confidence": confidence, "n_resamples": n_resamples,
            "n_invalid": int(values.size - valid.size)}


def _run_mean(statistics: Sequence[Callable[[np.ndarray], float]]) -> Callable[[np.ndarray, np.ndarray], float]:
    """The mean over the drawn runs of each run's statistic on the drawn units (each distinct run
    computed once per resample)."""
    def mean(units: np.ndarray, runs: np.ndarray) -> float:
        drawn, counts = np.unique(runs, return_counts=True)
        return float(np.dot([statistics[k](units) for k in drawn], counts) / counts.sum())

    return mean


def joint_bootstrap_ci(
    statistics: Sequence[Callable[[np.ndarray], float]],
    n: int,
    *,
    resample_runs: bool = True,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Percentile bootstrap CI of a metric averaged over runs evaluated on the same ``n`` test units.

    Each resample draws ``n`` units with replacement and, with ``resample_runs``, as many runs with
    replacement; the value is the mean over the drawn runs of each run's ``statistic(units)``. So
    the interval holds the variation between test patients *and* between runs (labelled draws,
    initialisations); with ``resample_runs=False`` only the test set's. A resample where a drawn
    run's statistic is undefined (``nan``) is left out and counted in ``n_invalid``.
    """
    if n <= 0 or not statistics:
        return {"low": float("nan"), "high": float("nan"), "confidence": confidence,
                "n_resamples": n_resamples, "n_invalid": n_resamples}
    values = _two_level(_run_mean(statistics), n, len(statistics), resample_runs=resample_runs,
                        n_resamples=n_resamples, seed=seed)
    return _percentiles(values, confidence, n_resamples)


def paired_bootstrap(
    ours: Sequence[Callable[[np.ndarray], float]],
    theirs: Sequence[Callable[[np.ndarray], float]],
    n: int,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Bootstrap of the paired difference ``ours - theirs`` of a run-averaged metric.

    ``ours[k]`` and ``theirs[k]`` are runs with the same seed (and labelled draw) on the same ``n``
    test units. Each resample draws the units and the run pairs together (the same units for both
    sides), so the interval holds both sources of variation. The p-value is two-sided, by
    inverting the percentile interval: twice the smaller share of resampled differences on either
    side of zero.

    Returns:
        ``{"difference", "low", "high", "p", "confidence", "n_resamples", "n_invalid"}``.
    """
    if len(ours) != len(theirs):
        raise ValueError(f"paired runs differ in number: {len(ours)} vs {len(theirs)}")
    nan = float("nan")
    if n <= 0 or not ours:
        return {"difference": nan, "low": nan, "high": nan, "p": nan, "confidence": confidence,
                "n_resamples": n_resamples, "n_invalid": n_resamples}
    a, b = _run_mean(ours), _run_mean(theirs)
    everything = np.arange(n)
    all_runs = np.arange(len(ours))
    values = _two_level(lambda u, r: a(u, r) - b(u, r), n, len(ours), resample_runs=True,
                        n_resamples=n_resamples, seed=seed)
    out = {"difference": a(everything, all_runs) - b(everything, all_runs),
           **_percentiles(values, confidence, n_resamples)}
    valid = values[~np.isnan(values)]
    out["p"] = float(min(1.0, 2.0 * min(np.mean(valid <= 0.0), np.mean(valid >= 0.0)))) if valid.size else nan
    return out
