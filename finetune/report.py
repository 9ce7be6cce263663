"""Aggregate runs and write ``metrics.json``, ``metrics.md`` and ``metrics.png``.

Aggregates per label fraction: mean and sample s.d. over runs (seeds), and a 95% bootstrap CI of
the run-averaged metric: the *test set* is resampled (1,000 times by default, seeded), every run's
metric is recomputed on the same resample (AUC recomputed, not averaged) and averaged over runs;
the 2.5/97.5 percentiles of those values are the CI. Each run also carries its own CI.

``--compare OTHER_OUT`` adds independent two-sample t-tests (Student and Welch) between the
per-run metrics of this experiment and of ``OTHER_OUT/metrics.json``, per fraction and metric.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from finetune.config import FinetuneConfig
from finetune.data import TargetData
from finetune.engine import n_units, unit_statistic
from finetune.outputs import naming_write_errors
from finetune.stats import bootstrap_ci, compare_runs, mean_sd
from finetune.targets import Target
from genesis.config import config_to_dict
from genesis.errors import ConfigError, InputFileError
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
    """Mean, s.d. and joint-bootstrap CI of each metric over the runs of one label fraction."""
    out: dict[str, Any] = {}
    n = n_units(runs[0]["test_units"]) if runs else 0
    same_units = all(r["test_units"]["names"] == runs[0]["test_units"]["names"] for r in runs)
    for m in metrics:
        values = [r["metrics"][m] if r["metrics"][m] is not None else float("nan") for r in runs]
        mean, sd = mean_sd(values)
        entry: dict[str, Any] = {"mean": mean, "sd": sd, "n_runs": len(runs), "values": values}
        if same_units and n:
            fns = [unit_statistic(task, r["test_units"], m) for r in runs]
            ci = bootstrap_ci(lambda idx: float(np.mean([f(idx) for f in fns])), n,
                              n_resamples=cfg.evaluation.bootstrap_resamples,
                              confidence=cfg.evaluation.confidence, seed=cfg.seed)
            entry.update(ci_low=ci["low"], ci_high=ci["high"], ci_invalid_resamples=ci["n_invalid"])
        out[m] = entry
    return out


def build_metrics(
    cfg: FinetuneConfig, target: Target, data: TargetData, runs: dict[float, list[dict[str, Any]]]
) -> dict[str, Any]:
    """The content of ``metrics.json`` (without the comparison, added by :func:`write_reports`)."""
    model = model_record(cfg, target, runs)
    fractions = []
    for fraction, fruns in runs.items():
        fractions.append({
            "fraction": fraction,
            "n_train": [r["n_train"] for r in fruns],
            "runs": [{k: r[k] for k in ("seed", "n_train", "epochs_run", "best_epoch", "train_seconds", "metrics", "ci")}
                     for r in fruns],
            "aggregate": aggregate_runs(target.task, target.metrics, fruns, cfg),
        })
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
        "n_test_units": n_units(next(iter(runs.values()))[0]["test_units"]) if runs else 0,
        "metrics": list(target.metrics),
        "primary_metric": target.primary_metric,
        "iou_mean_thresholds_definition": (
            "foreground IoU of (predicted probability > t) vs the ground-truth mask, averaged over "
            "t = 0.50, 0.55, ..., 0.95, per test case, then averaged over cases"
        ) if target.task == "segmentation" else None,
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
        "ci_method": (f"percentile bootstrap, {cfg.evaluation.bootstrap_resamples} resamples of the test set "
                      f"(seed {cfg.seed}), {cfg.evaluation.confidence:.0%}"),
        "config": config_to_dict(cfg),
        "label_fractions": fractions,
        "comparison": None,
    }


def compare_with(metrics: dict[str, Any], other_out: str | Path) -> dict[str, Any]:
    """Two-sample t-tests of our per-run metrics against ``other_out/metrics.json``, per fraction."""
    path = Path(other_out)
    path = path / "metrics.json" if path.is_dir() else path
    try:
        other = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError("no metrics.json to compare with (run genesis-finetune with --out there first)", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputFileError(f"not a metrics.json ({exc})", path) from None
    if other.get("target") != metrics["target"]:
        raise ConfigError(f"cannot compare target {metrics['target']!r} with target {other.get('target')!r}", path)
    theirs = {f["fraction"]: f for f in other.get("label_fractions", [])}
    rows = []
    for ours in metrics["label_fractions"]:
        if ours["fraction"] not in theirs:
            continue
        row: dict[str, Any] = {"fraction": ours["fraction"]}
        for m in metrics["metrics"]:
            a = [v for v in ours["aggregate"][m]["values"] if v is not None]
            b = [v for v in theirs[ours["fraction"]]["aggregate"].get(m, {}).get("values", []) if v is not None]
            row[m] = compare_runs(a, b)
        rows.append(row)
    return {"other": str(path), "other_configuration": other.get("configuration"), "other_model": other.get("model"),
            "other_synthetic": other.get("synthetic"), "test": "independent two-sample t-test (scipy.stats.ttest_ind)",
            "fractions": rows}


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
    names = metrics["metrics"]
    lines.append("| label fraction | runs | train units | " + " | ".join(f"{m} mean ± s.d. [95% CI]" for m in names) + " |")
    lines.append("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for f in metrics["label_fractions"]:
        cells = []
        for m in names:
            a = f["aggregate"][m]
            cells.append(f"{_fmt(a['mean'])} ± {_fmt(a['sd'])} [{_fmt(a.get('ci_low'))}, {_fmt(a.get('ci_high'))}]")
        n_train = f["n_train"][0] if len(set(f["n_train"])) == 1 else f["n_train"]
        lines.append(f"| {f['fraction']:g} | {len(f['runs'])} | {n_train} | " + " | ".join(cells) + " |")
    if metrics["task"] == "segmentation":
        lines += ["", f"iou_mean_thresholds: {metrics['iou_mean_thresholds_definition']}."]
    comp = metrics.get("comparison")
    if comp:
        lines += ["", f"## Comparison with {comp['other']} ({comp['other_configuration']})", "",
                  "| label fraction | metric | ours | other | t (Student) | p (Student) | t (Welch) | p (Welch) |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in comp["fractions"]:
            for m in names:
                c = row[m]
                lines.append(f"| {row['fraction']:g} | {m} | {_fmt(c['mean_a'])} (n={c['n_a']}) | {_fmt(c['mean_b'])} (n={c['n_b']}) | "
                             f"{_fmt(c['t_student'], 3)} | {_fmt(c['p_student'])} | {_fmt(c['t_welch'], 3)} | {_fmt(c['p_welch'])} |")
        lines += ["", "p-values need at least two runs per configuration (--repeats)."]
    return "\n".join(lines) + "\n"


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
        metrics["comparison"] = compare_with(metrics, compare)
        other = json.loads(Path(metrics["comparison"]["other"]).read_text())
    with naming_write_errors(out / "metrics.json", "metrics report (metrics.json, metrics.md)"):
        write_report(out, "metrics", metrics, markdown(metrics))
    with naming_write_errors(out / "metrics.png", "plot"):
        plot(metrics, out / "metrics.png", other)
