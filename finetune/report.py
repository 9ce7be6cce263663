"""Aggregate runs and write ``metrics.json``, ``metrics.md`` and ``metrics.png``.

The statistical unit is the test *patient* (:mod:`finetune.stats`). Per label fraction: the mean
and sample s.d. over runs (seeds), and the headline 95% CI of the run-averaged metric from a
bootstrap that resamples the runs and the test patients together (1,000 times by default,
seeded): every drawn run's metric is recomputed on the drawn patients (AUC recomputed, not
averaged) and averaged over the drawn runs, so the interval holds the variation between runs
(labelled draws, initialisations) as well as between test patients. Next to it: the t-interval
over runs and the CI with the runs held fixed (test patients only). Each run carries its own
patient-bootstrap CI and the patients it trained and validated on.

``--compare OTHER_OUT``: :mod:`finetune.compare` (paired tests, Holm correction, refused when the
test set or evaluation differ).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from finetune.compare import IOU_THRESHOLDS_DEFINITION, compare_with, draw_digest
from finetune.config import FinetuneConfig
from finetune.data import TargetData
from finetune.stats import joint_bootstrap_ci, mean_sd, n_units, t_interval, unit_statistic
from finetune.targets import Target
from genesis.config import config_to_dict
from genesis.fileio import write_report


def describe(cfg: FinetuneConfig, model: str = "unet3d") -> str:
    """Short label of the network and initialisation, e.g. ``pretrained best.pt``, ``random (xavier)``
    (the Models Genesis U-Net) or ``r3d_18: pretrained r3d_18.kinetics400`` (a baseline)."""
    if cfg.weights:
        label = f"pretrained {Path(cfg.weights).name}"
    else:
        label = f"random ({cfg.init})"
    if cfg.linear_probe:
        label += ", linear probe"
    elif cfg.freeze == "encoder":
        label += ", frozen encoder"
    return label if model == "unet3d" else f"{model}: {label}"


def model_record(cfg: FinetuneConfig, target: Target, runs: dict[float, list[dict[str, Any]]]) -> dict[str, Any]:
    """The network and the weights' origin of the runs, so compared experiments are labelled."""
    from finetune.baselines import resolve_model

    transfer = next((r.get("transfer") or {} for fr in runs.values() for r in fr), {})
    choice = resolve_model(cfg, target.task)
    name = transfer.get("model", choice.name)
    return {
        "model": name,
        "model_kwargs": transfer.get("model_kwargs"),
        "model_family": "models-genesis-unet3d" if name == "unet3d" else "baseline",
        "weights_architecture": choice.weights_architecture,
        "weights_source": transfer.get("weights_source"),
    }


def aggregate_runs(task: str, metrics: tuple[str, ...], runs: list[dict[str, Any]], cfg: FinetuneConfig) -> dict[str, Any]:
    """Mean, s.d., t-interval over runs and the runs-and-patients bootstrap CI of each metric over
    the runs of one label fraction (see the module docstring)."""
    out: dict[str, Any] = {}
    n = n_units(runs[0]["test_units"]) if runs else 0
    same_units = all(r["test_units"]["names"] == runs[0]["test_units"]["names"] for r in runs)
    ev = cfg.evaluation
    boot = {"n_resamples": ev.bootstrap_resamples, "confidence": ev.confidence, "seed": cfg.seed}
    for m in metrics:
        values = [r["metrics"][m] if r["metrics"][m] is not None else float("nan") for r in runs]
        mean, sd = mean_sd(values)
        t = t_interval(values, ev.confidence)
        entry: dict[str, Any] = {"mean": mean, "sd": sd, "n_runs": len(runs), "values": values,
                                 "t_low": t["low"], "t_high": t["high"]}
        if same_units and n:
            fns = [unit_statistic(task, r["test_units"], m) for r in runs]
            joint = joint_bootstrap_ci(fns, n, resample_runs=True, **boot)
            fixed = joint_bootstrap_ci(fns, n, resample_runs=False, **boot)
            entry.update(ci_low=joint["low"], ci_high=joint["high"], ci_invalid_resamples=joint["n_invalid"],
                         ci_test_only_low=fixed["low"], ci_test_only_high=fixed["high"])
        if all("metrics_all_cases" in r for r in runs):  # segmentation: empty masks included
            entry["mean_all_cases"] = mean_sd([r["metrics_all_cases"][m] for r in runs
                                               if r["metrics_all_cases"][m] is not None])[0]
        out[m] = entry
    return out


RUN_FIELDS = ("seed", "n_train", "train_groups", "val_groups", "epochs_run", "best_epoch", "train_seconds",
              "metrics", "ci", "metrics_all_cases", "result")


def build_metrics(
    cfg: FinetuneConfig, target: Target, data: TargetData, runs: dict[float, list[dict[str, Any]]],
    draws: dict[float, dict[str, Any]] | None = None, comparability: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``metrics.json`` (without the comparison, added by :func:`write_reports`).

    ``draws``: per fraction, how many distinct labelled subsets exist and were drawn, and its
    warnings (:func:`finetune.engine.fraction_warnings`); ``comparability``: the record
    :func:`finetune.compare.comparability` made of the test set and evaluation, completed here
    with the draw of every run.
    """
    model = model_record(cfg, target, runs)
    draws = draws or {}
    comparability = dict(comparability or {}, draws={})
    fractions = []
    for fraction, fruns in runs.items():
        info = draws.get(fraction, {})
        fractions.append({
            "fraction": fraction,
            "n_train": [r["n_train"] for r in fruns],
            "n_train_patients": [len(r.get("train_groups", [])) for r in fruns],
            "n_distinct_draws": info.get("n_distinct"),
            "n_possible_draws": info.get("n_possible"),
            "warnings": list(info.get("warnings", [])),
            "runs": [{k: r[k] for k in RUN_FIELDS if k in r} for r in fruns],
            "aggregate": aggregate_runs(target.task, target.metrics, fruns, cfg),
        })
        # a run reused from an older result.json may not say whom it trained on: never paired then
        comparability["draws"][f"{fraction:g}"] = {str(r["seed"]): draw_digest(r["train_groups"]) if "train_groups" in r
                                                   else None for r in fruns}
    first = next(iter(runs.values()))[0] if runs else None
    units = first["test_units"] if first else {"names": []}
    unit = getattr(data, "test_unit", "patients")
    empty = first.get("cases_without_foreground") if first else None
    ev = cfg.evaluation
    return {
        "target": target.name,
        "title": target.title,
        "task": target.task,
        "synthetic": bool(data.synthetic),
        "data_source": data.source,
        "n_val": len(data.val),
        "spatial_dims": target.spatial_dims,
        "classes": list(getattr(target, "class_names", None) or []) or None,
        "notes": list(data.notes),
        "test_unit": unit,
        "n_test_units": n_units(units),
        "n_test_samples": len(units["names"]),
        "empty_masks": None if empty is None else {
            "n_test_cases_without_foreground": empty["n"],
            "n_test_cases": len(units["names"]),
            "cases": empty["names"],
            # per run (every fraction): how many of those cases it predicted empty (scored 1 in the all-cases mean)
            "predicted_empty": [r["cases_without_foreground"]["predicted_empty"] for fr in runs.values() for r in fr
                                if "cases_without_foreground" in r],
            "headline": "cases with foreground",
            "convention": comparability.get("metric_definitions", {}).get("foreground"),
        },
        "metrics": list(target.metrics),
        "primary_metric": target.primary_metric,
        "iou_mean_thresholds_definition": IOU_THRESHOLDS_DEFINITION if target.task == "segmentation" else None,
        "evaluation": (
            getattr(target, "slices").describe() if getattr(target, "slices", None) is not None  # 2D/2.5D ncs
            else "sliding-window inference over whole test volumes/regions" if target.task == "segmentation"
            else (f"study-level: {cfg.aggregate} over window predictions" if target.aggregate else "sample-level")
        ),
        "configuration": describe(cfg, model["model"]),
        **model,
        "weights": cfg.weights,
        "init": cfg.init,
        "freeze": cfg.freeze,
        "linear_probe": cfg.linear_probe,
        "channels": cfg.channels,
        "view": cfg.view,
        "aggregate": cfg.aggregate if (target.aggregate or model.get("model_family") == "baseline") else None,
        "repeats": cfg.repeats,
        "ci_method": (f"{ev.confidence:.0%} percentile bootstrap over test {unit} ({n_units(units)}), "
                      f"{ev.bootstrap_resamples} resamples (seed {cfg.seed}); a resampled {unit[:-1]} brings all "
                      f"its samples. Label-fraction CI: runs and test {unit} resampled together (between-run "
                      "variance included); also the t-interval over runs and the CI with runs held fixed. "
                      f"Per-run CI: test {unit} only"),
        "config": config_to_dict(cfg),
        "comparability": comparability,
        "label_fractions": fractions,
        "comparison": None,
    }


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def markdown(metrics: dict[str, Any]) -> str:
    """The Markdown table of ``metrics.md``."""
    synthetic = " (SYNTHETIC DATA)" if metrics["synthetic"] else ""
    lines = [f"# {metrics['target']}: {metrics['title']}{synthetic}", ""]
    if metrics["synthetic"]:
        lines += ["**Synthetic data**: the embedded synthetic chest CT stand-in, not patient data; "
                  "these numbers demonstrate the pipeline only.", ""]
    lines += [f"Configuration: {metrics['configuration']}. Data: {metrics['data_source']}. "
              f"Evaluation: {metrics['evaluation']}. CI: {metrics['ci_method']}.", ""]
    if metrics.get("model"):
        source = metrics.get("weights_source") or metrics.get("weights") or f"none (random init: {metrics['init']})"
        lines += [f"Model: {metrics['model']}. Weights: {source}.", ""]
    unit = metrics.get("test_unit", "patients")
    lines += [f"Test set: {metrics.get('n_test_units')} {unit} ({metrics.get('n_test_samples')} samples); every CI "
              f"resamples {unit}.", ""]
    empty = metrics.get("empty_masks")
    if empty and empty["n_test_cases_without_foreground"]:
        lines += [f"**Empty masks**: {empty['n_test_cases_without_foreground']} of {empty['n_test_cases']} test cases "
                  f"have no foreground; the runs predicted none on {_span(empty['predicted_empty'])} of them. The table is "
                  f"over the cases with foreground (the headline, the convention of the segmentation challenges); "
                  f"the last column is the primary metric over all cases, empty ones scored 1 for an empty prediction "
                  f"and 0 otherwise.", ""]
    warnings = [*metrics.get("label_warnings", []), *(w for f in metrics["label_fractions"] for w in f.get("warnings", []))]
    if warnings:
        lines += [f"**Warning**: {w}" for w in warnings] + [""]
    names = metrics["metrics"]
    primary = metrics["primary_metric"]
    all_cases = bool(empty and empty["n_test_cases_without_foreground"])
    lines.append("| label fraction | runs | train units (patients) | distinct draws | "
                 + " | ".join(f"{m} mean ± s.d. [95% CI]" for m in names)
                 + f" | {primary} t-interval over runs | {primary} CI, runs fixed |"
                 + (f" {primary} all cases |" if all_cases else ""))
    lines.append("| --- | --- | --- | --- | " + " | ".join("---" for _ in names) + " | --- | --- |"
                 + (" --- |" if all_cases else ""))
    for f in metrics["label_fractions"]:
        cells = []
        for m in names:
            a = f["aggregate"][m]
            cells.append(f"{_fmt(a['mean'])} ± {_fmt(a['sd'])} [{_fmt(a.get('ci_low'))}, {_fmt(a.get('ci_high'))}]")
        a = f["aggregate"][primary]
        n_train = _span(f["n_train"])
        patients = _span(f.get("n_train_patients") or [])
        possible = f.get("n_possible_draws")
        draws = (f"{f.get('n_distinct_draws')} (of {possible:.3g} possible)" if isinstance(possible, (int, float))
                 else "-")
        lines.append(f"| {f['fraction']:g} | {len(f['runs'])} | {n_train} ({patients}) | {draws} | " + " | ".join(cells)
                     + f" | [{_fmt(a.get('t_low'))}, {_fmt(a.get('t_high'))}]"
                     + f" | [{_fmt(a.get('ci_test_only_low'))}, {_fmt(a.get('ci_test_only_high'))}] |"
                     + (f" {_fmt(a.get('mean_all_cases'))} |" if all_cases else ""))
    lines += ["", "95% CI: runs and test patients resampled together (it holds the variation between runs: labelled "
              "draws and initialisations). t-interval over runs: the runs' spread alone; CI with runs fixed: the test "
              "patients' alone."]
    if metrics["task"] == "segmentation":
        lines += ["", f"iou_mean_thresholds: {metrics['iou_mean_thresholds_definition']}."]
    comp = metrics.get("comparison")
    if comp:
        lines += ["", f"## Comparison with {comp['other']} ({comp['other_configuration']})", "",
                  f"Primary test: {comp['primary_test']}. Correction: {comp['correction']}.", "",
                  "| label fraction | metric | ours | other | difference [95% paired bootstrap CI] | p (paired t) "
                  "| p (paired t, Holm) | p (paired bootstrap) | p (Welch) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in comp["fractions"]:
            for m in names:
                c = row[m]
                b = c.get("bootstrap") or {}
                lines.append(f"| {row['fraction']:g} | {m} | {_fmt(c['mean_a'])} (n={c['n_a']}) | {_fmt(c['mean_b'])} "
                             f"(n={c['n_b']}) | {_fmt(c.get('mean_difference'))} [{_fmt(b.get('low'))}, "
                             f"{_fmt(b.get('high'))}] | {_fmt(c.get('p_paired'))} | {_fmt(c.get('p_paired_holm'))} | "
                             f"{_fmt(b.get('p'))} | {_fmt(c['p_welch'])} |")
        lines += ["", "Runs are paired by seed (same labelled patients, same test patients); p-values need at least "
                  "two pairs (--repeats)."]
        if comp.get("left_out"):
            lines += ["", "Left out (not comparable): " + "; ".join(comp["left_out"]) + "."]
    return "\n".join(lines) + "\n"


def _span(values: list[int]) -> str:
    """``20`` when every run has the same count, else ``8-12``."""
    if not values:
        return "?"
    return str(values[0]) if len(set(values)) == 1 else f"{min(values)}-{max(values)}"


def plot(metrics: dict[str, Any], path: Path, other: dict[str, Any] | None = None) -> Path:
    """Primary metric vs label fraction with CI bands (and the compared configuration)."""
    from genesis.viz import save_curves

    m = metrics["primary_metric"]

    def series(doc: dict[str, Any]):
        fr = sorted(doc["label_fractions"], key=lambda f: f["fraction"])
        agg = [f["aggregate"].get(m, {}) for f in fr]
        ys = [a.get("mean") for a in agg]
        lo = [a.get("ci_low") for a in agg]
        hi = [a.get("ci_high") for a in agg]
        nan = float("nan")
        clean = lambda v: [nan if x is None else x for x in v]  # noqa: E731
        has_ci = all(x is not None for x in lo + hi)
        return ([f["fraction"] for f in fr], clean(ys), clean(lo) if has_ci else None, clean(hi) if has_ci else None)

    docs = {metrics["configuration"]: metrics}
    if other is not None and other.get("primary_metric") == m:
        docs[f"{other.get('configuration', 'other')} (compared)"] = other
    if all(len(d["label_fractions"]) == 1 for d in docs.values()):
        # one label fraction: a curve would be one point per configuration; show every run instead
        from genesis.viz import save_points

        groups = {}
        for name, doc in docs.items():
            agg = doc["label_fractions"][0]["aggregate"].get(m, {})
            groups[name] = (agg.get("values", []), agg.get("mean"), agg.get("ci_low"), agg.get("ci_high"))
        fraction = metrics["label_fractions"][0]["fraction"]
        title = (f"{metrics['target']}: {m} at label fraction {fraction:g}"
                 + (" (SYNTHETIC DATA)" if metrics["synthetic"] else ""))
        return save_points(groups, path, ylabel=m, title=title)
    curves = {metrics["configuration"]: series(metrics)}
    if other is not None and other.get("primary_metric") == m:
        curves[f"{other.get('configuration', 'other')} (compared)"] = series(other)
    title = f"{metrics['target']}: {m} vs label fraction" + (" (SYNTHETIC DATA)" if metrics["synthetic"] else "")
    return save_curves(curves, path, xlabel="fraction of training labels", ylabel=m, title=title)


def write_reports(metrics: dict[str, Any], out: Path, target: Target, compare: str | None = None) -> None:
    """Write metrics.json, metrics.md and metrics.png into ``out`` (atomically)."""
    other = None
    if compare:
        metrics["comparison"] = compare_with(metrics, compare, out)
        other = json.loads(Path(metrics["comparison"]["other"]).read_text())
    write_report(out, "metrics", metrics, markdown(metrics))
    plot(metrics, out / "metrics.png", other)
