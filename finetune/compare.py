"""``--compare OTHER_OUT``: compare like with like, paired where the runs are paired.

A comparison of two fine-tuning experiments means something only when both were scored on the
same test cases, with the same evaluation, and trained on the same draws of labelled patients.
Every ``metrics.json`` therefore records its :func:`comparability`: the target, a fingerprint of
the test split (every case's name, patient, image and label bytes), the test unit and count, the
crop, view, channels and aggregation, the metrics and their definitions, the sliding-window
settings, and a digest of the patients each (fraction, seed) trained on. :func:`check_comparable`
refuses, naming every differing field, when the test set or the evaluation differ;
:func:`compare_with` then compares, fraction by fraction, only the runs whose seed *and* labelled
draw match on both sides, and lists what it left out.

Matching runs are paired (same seed, same labelled patients, same test patients), so the primary
test is the paired t-test over seeds (:func:`finetune.stats.paired_runs`); next to it the paired
bootstrap of the difference over test patients and run pairs (:func:`finetune.stats.paired_bootstrap`)
and the independent Student / Welch t-tests (:func:`finetune.stats.compare_runs`). With several
fractions the p-values of each metric are Holm-corrected over the fractions (:func:`finetune.stats.holm`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from finetune.config import FinetuneConfig
from finetune.data import TargetData, fingerprint, unit_group
from finetune.stats import Clusters, compare_runs, holm, paired_bootstrap, paired_runs, unit_statistic
from finetune.targets import Target
from genesis.errors import ConfigError, InputFileError

#: fields of :func:`comparability` that must be equal on both sides (everything but the draws)
CHECKED = ("target", "task", "test_fingerprint", "test_unit", "n_test_units", "n_test_samples", "crop", "view",
           "channels", "aggregate", "metrics", "metric_definitions", "evaluation")

EMPTY_MASK_CONVENTION = (
    "segmentation metrics are means over the test cases whose ground truth has foreground (the "
    "convention of the segmentation challenges); cases without foreground are counted and reported "
    "apart, and the mean over all cases scores them 1 for an empty prediction and 0 otherwise"
)
IOU_THRESHOLDS_DEFINITION = (
    "foreground IoU of (predicted probability > t) vs the ground-truth mask, averaged over "
    "t = 0.50, 0.55, ..., 0.95, per test case, then averaged over cases"
)


def comparability(cfg: FinetuneConfig, target: Target, data: TargetData) -> dict[str, Any]:
    """What two experiments must share to be compared (the draws are added per run by the report)."""
    definitions: dict[str, str] = {}
    if target.task == "segmentation":
        definitions["foreground"] = EMPTY_MASK_CONVENTION
        if "iou_mean_thresholds" in target.metrics:
            definitions["iou_mean_thresholds"] = IOU_THRESHOLDS_DEFINITION
    ev = cfg.evaluation
    return {
        "target": target.name,
        "task": target.task,
        "test_fingerprint": fingerprint(data.test),
        "test_unit": data.test_unit,
        "n_test_units": Clusters.of([unit_group(s) for s in data.test]).n,
        "n_test_samples": len(data.test),
        "crop": list(target.crop(cfg)),
        "view": cfg.view,
        "channels": cfg.channels,
        "aggregate": cfg.aggregate,
        "metrics": list(target.metrics),
        "metric_definitions": definitions,
        "evaluation": {"sw_overlap": ev.sw_overlap, "sw_mode": ev.sw_mode, "region_scale": ev.region_scale},
        "draws": {},
    }


def draw_digest(groups: list[str]) -> str:
    """A short digest of the patients a run trained on (the full list is in the run's record)."""
    return hashlib.sha256("\n".join(sorted(groups)).encode()).hexdigest()[:16]


def load_metrics(other_out: str | Path) -> tuple[dict[str, Any], Path]:
    """``other_out/metrics.json`` (or the file itself) and its path."""
    path = Path(other_out)
    path = path / "metrics.json" if path.is_dir() else path
    try:
        return json.loads(path.read_text()), path
    except FileNotFoundError:
        raise InputFileError("no metrics.json to compare with (run genesis-finetune with --out there first)", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"not a metrics.json ({exc})", path) from None


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def check_comparable(ours: dict[str, Any], other_out: str | Path) -> dict[str, Any]:
    """The other side's ``metrics.json``, when it was scored as we are; else :class:`ConfigError`
    naming every field of :data:`CHECKED` that differs (the test set, its units, the evaluation)."""
    other, path = load_metrics(other_out)
    theirs = other.get("comparability")
    if not isinstance(theirs, dict):
        raise ConfigError("cannot compare: this metrics.json does not record its test set and evaluation "
                          "(written by an older genesis-finetune); run that experiment again", path)
    differing = [f"{key} (ours {_shown(ours.get(key))}, theirs {_shown(theirs.get(key))})"
                 for key in CHECKED if ours.get(key) != theirs.get(key)]
    if differing:
        raise ConfigError("cannot compare: the two experiments differ in " + "; ".join(differing)
                          + ". A comparison needs the same test cases, units and evaluation settings", path)
    return other


def _runs_by_seed(fraction: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(r["seed"]): r for r in fraction.get("runs", [])}


def _test_units(out: Path | None, run: dict[str, Any]) -> dict[str, Any] | None:
    """The per-case test values of a run (its ``result.json``), or None when they are not there."""
    if out is None or not run.get("result"):
        return None
    try:
        return json.loads((out / run["result"]).read_text())["test_units"]
    except (OSError, ValueError, KeyError):
        return None


def compare_with(metrics: dict[str, Any], other_out: str | Path, ours_out: str | Path | None = None) -> dict[str, Any]:
    """Compare our runs with ``other_out/metrics.json``, per label fraction and metric.

    Only the runs whose seed and labelled draw match on both sides are compared (paired by seed);
    fractions or seeds without a match are listed in ``left_out``. ``ours_out``: our output folder,
    where the runs' ``result.json`` (per-patient values, for the paired bootstrap) are.

    Raises:
        ConfigError: the test set or evaluation differ (:func:`check_comparable`), or no run pairs.
    """
    other = check_comparable(metrics["comparability"], other_out)
    path = Path(other_out) if Path(other_out).is_dir() else Path(other_out).parent
    ours_dir = Path(ours_out) if ours_out is not None else None
    ev = metrics.get("config", {}).get("evaluation", {})
    boot = {"n_resamples": int(ev.get("bootstrap_resamples", 1000)), "confidence": float(ev.get("confidence", 0.95)),
            "seed": int(metrics.get("config", {}).get("seed", 0))}
    theirs = {f["fraction"]: f for f in other.get("label_fractions", [])}
    ours_fr = {f["fraction"] for f in metrics["label_fractions"]}
    left_out = [f"fraction {f:g}: only in {path}" for f in sorted(set(theirs) - ours_fr)]
    rows = []
    for ours in metrics["label_fractions"]:
        fraction = ours["fraction"]
        if fraction not in theirs:
            left_out.append(f"fraction {fraction:g}: only in ours")
            continue
        a_runs, b_runs = _runs_by_seed(ours), _runs_by_seed(theirs[fraction])
        draws_a = metrics["comparability"]["draws"].get(f"{fraction:g}", {})
        draws_b = other["comparability"].get("draws", {}).get(f"{fraction:g}", {})
        seeds, other_draw = [], []
        for seed in sorted(set(a_runs) & set(b_runs)):
            same = draws_a.get(str(seed)) is not None and draws_a.get(str(seed)) == draws_b.get(str(seed))
            (seeds if same else other_draw).append(seed)
        only = sorted(set(a_runs) ^ set(b_runs))
        if other_draw:
            left_out.append(f"fraction {fraction:g}: seed(s) {other_draw} trained on other (or unrecorded) patients "
                            "on the two sides")
        if only:
            left_out.append(f"fraction {fraction:g}: seed(s) {only} run on one side only")
        if not seeds:
            left_out.append(f"fraction {fraction:g}: no run with the same seed and labelled patients on both sides")
            continue
        row: dict[str, Any] = {"fraction": fraction, "seeds": seeds}
        units_a = [_test_units(ours_dir, a_runs[s]) for s in seeds]
        units_b = [_test_units(path, b_runs[s]) for s in seeds]
        have_units = all(u is not None for u in units_a + units_b)
        for m in metrics["metrics"]:
            a = [_value(a_runs[s], m) for s in seeds]
            b = [_value(b_runs[s], m) for s in seeds]
            entry: dict[str, Any] = {**compare_runs(a, b), **paired_runs(a, b)}
            if have_units:
                task = metrics["task"]
                entry["bootstrap"] = paired_bootstrap([unit_statistic(task, u, m) for u in units_a],
                                                      [unit_statistic(task, u, m) for u in units_b],
                                                      Clusters.of(units_a[0].get("groups") or units_a[0]["names"]).n,
                                                      **boot)
            else:
                entry["bootstrap"] = None
            row[m] = entry
        rows.append(row)
    if not rows:
        raise ConfigError("cannot compare: no label fraction has runs with the same seed and labelled patients on "
                          "both sides (" + "; ".join(left_out) + ")", path)
    for m in metrics["metrics"]:  # Holm over the fractions compared, for each test and metric
        for key, get in (("p_paired", lambda e: e["p_paired"]), ("p_welch", lambda e: e["p_welch"]),
                         ("p_bootstrap", lambda e: (e["bootstrap"] or {}).get("p", float("nan")))):
            for row, adjusted in zip(rows, holm([get(row[m]) for row in rows])):
                row[m][f"{key}_holm"] = adjusted
    return {"other": str(path / "metrics.json"), "other_configuration": other.get("configuration"),
            "other_model": other.get("model"), "other_synthetic": other.get("synthetic"),
            "primary_test": "paired t-test over seeds (scipy.stats.ttest_rel): both sides share seeds, labelled "
                            "patients and test patients",
            "tests": ("paired t-test over seeds; paired bootstrap over test patients and run pairs of the difference "
                      "(ours - other); independent two-sample t-tests (Student, Welch; scipy.stats.ttest_ind)"),
            "correction": (f"Holm over the {len(rows)} label fractions compared, per metric" if len(rows) > 1
                           else "none (one label fraction compared)"),
            "left_out": left_out, "fractions": rows}


def _value(run: dict[str, Any], metric: str) -> float:
    value = run.get("metrics", {}).get(metric)
    return float("nan") if value is None else float(value)
