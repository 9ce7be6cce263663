"""finetune.stats against scipy / scikit-learn on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import jaccard_score, roc_auc_score

from finetune.stats import (
    IOU_THRESHOLDS,
    auroc,
    bootstrap_ci,
    compare_runs,
    dice,
    iou,
    iou_over_thresholds,
    mean_sd,
)


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_hand_example_and_edge_cases():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([1, 0], [0.9, 0.1]) == 1.0
    assert math.isnan(auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        auroc([0, 2], [0.1, 0.2])


def test_dice_iou_match_sklearn_and_identity():
    rng = np.random.default_rng(0)
    a = rng.random((6, 7, 8)) > 0.6
    b = rng.random((6, 7, 8)) > 0.5
    j = jaccard_score(b.ravel(), a.ravel())
    assert iou(a, b) == pytest.approx(j)
    assert dice(a, b) == pytest.approx(2 * j / (1 + j))  # Dice = 2J/(1+J)
    empty = np.zeros((3, 3, 3), bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_iou_over_thresholds_averages_ten_thresholds():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
    truth = np.zeros((1, 1, 4), bool)
    truth[0, 0, :2] = True
    prob = np.array([[[0.97, 0.72, 0.6, 0.1]]])
    # t in {.5,.55}: pred {0,1,2} -> 2/3; t in {.6,...,.7}: {0,1} -> 1; t in {.75,...,.95}: {0} -> 1/2
    expected = (2 * (2 / 3) + 3 * 1.0 + 5 * 0.5) / 10
    assert iou_over_thresholds(prob, truth) == pytest.approx(expected)


def test_bootstrap_ci_equals_scipy_percentile_bootstrap():
    x = np.random.default_rng(1).normal(size=40)
    ours = bootstrap_ci(lambda idx: float(np.mean(x[idx])), x.size, n_resamples=1000, seed=7)
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=1000, method="percentile",
                                confidence_level=0.95, rng=np.random.default_rng(7))
    assert ours["low"] == pytest.approx(ref.confidence_interval.low, rel=1e-10)
    assert ours["high"] == pytest.approx(ref.confidence_interval.high, rel=1e-10)
    assert ours["n_invalid"] == 0


def test_bootstrap_ci_of_auc_recomputes_auc_and_drops_one_class_resamples():
    labels = np.array([1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.2, 0.3, 0.1, 0.95, 0.4])
    ci = bootstrap_ci(lambda idx: auroc(labels[idx], scores[idx]), 6, n_resamples=300, seed=0)
    assert ci["n_invalid"] > 0  # resamples without the positive case
    assert 0.0 <= ci["low"] <= auroc(labels, scores) <= ci["high"] <= 1.0


def test_compare_runs_matches_ttest_ind_both_versions():
    a = [0.71, 0.74, 0.69, 0.75, 0.73]
    b = [0.66, 0.70, 0.61, 0.69]
    out = compare_runs(a, b)
    student = scipy_stats.ttest_ind(a, b)
    welch = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert out["t_student"] == pytest.approx(student.statistic)
    assert out["p_student"] == pytest.approx(student.pvalue)
    assert out["t_welch"] == pytest.approx(welch.statistic)
    assert out["p_welch"] == pytest.approx(welch.pvalue)
    assert math.isnan(compare_runs([0.5], [0.4, 0.3])["p_student"])


def test_mean_sd_sample_sd():
    m, s = mean_sd([1.0, 2.0, 3.0, float("nan")])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert mean_sd([4.0]) == (4.0, 0.0)
