"""Label-efficiency study on your own dataset: does self-supervised pretraining help, and where?

Pretrains each proxy task of ``--tasks`` on the dataset's images (labels unused), then fine-tunes
from scratch and from every pretrained model at each label fraction with ``--seeds`` seeds, and
compares each pretrained configuration with scratch (``genesis-finetune --compare``,
:mod:`finetune.compare`). The runs are paired: the same seed draws the same labelled patients in
every arm and all arms are scored on the same test patients, so the primary test is the paired
t-test over seeds; next to it the paired bootstrap over test patients (and run pairs) of the
difference, and Welch's test. All (task, fraction) comparisons are made at once, so their paired
p-values are Holm-corrected together. Intervals resample test *patients* (and runs, for the
headline CI of a fraction). Writes ``study.json``, ``study.md`` and ``study.png`` (primary metric
vs label fraction, 95% CIs) into ``--out`` and says plainly, per task and fraction, whether
pretraining helped (Holm-corrected paired p < 0.05, higher mean), hurt, or had no detectable effect.

Example (the MSD lung-tumour patches: 13 patients x 10 patches in order)::

    python benchmarks/study_label_efficiency.py --data ../shared/data/real/msd_lung_2mm_patches/val_patches.h5 \\
        --group-size 10 --dims 2 --tasks combined masked_region --fractions 0.1 1.0 --seeds 5 \\
        --out benchmarks/results/label_efficiency_msd_lung

Any method of ``genesis-pretrain --list-tasks`` can be a task, e.g. ``--tasks combined masked_region
mae spark simclr voco``: the masked image modelling methods pretrain their U-Net form (the network
the fine-tuning U-Net takes; :data:`PRETRAIN_FLAGS`), the contrastive ones the U-Net's encoder
(fine-tuning then trains a new decoder, and ``load_report.json`` says so).

Every step is a plain ``genesis-pretrain`` / ``genesis-finetune`` run under ``--out`` (rerun with
the same ``--out`` to resume); a task that cannot pretrain on these data (e.g. a 3D-only task with
``--dims 2``) is reported as such, not dropped silently. On a CPU shared with other jobs, run it with
``OMP_NUM_THREADS=1``: with torch's default threads each fine-tuning step of the tiny 2D U-Net cost
about 15x the CPU time (and 10x the wall time) on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from finetune.stats import holm

ALPHA = 0.05

#: extra ``genesis-pretrain`` flags per task (``{dims}``: 2 or 3): the U-Net forms of the methods
#: whose default network is another one, so that the fine-tuning U-Net can take their backbone
PRETRAIN_FLAGS: dict[str, list[str]] = {
    "mae": ["--set", "task_params={{patch_size: 8}}"],  # the U-Net form is MAE's default
    "simmim": ["--model", "unet{dims}d", "--set", "task_params={{mask_patch_size: 16}}"],
    "spark": ["--model", "unet{dims}d"],
    "voco": ["--set", "task_params={{grid: [1, 2, 2]}}"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="DATASET (any layout genesis-finetune --data takes)")
    p.add_argument("--test-data", help="separate labelled test set")
    p.add_argument("--group-size", type=int, help="arrays without groups: N consecutive samples = one patient")
    p.add_argument("--target", choices=("segmentation", "classification"), default="segmentation")
    p.add_argument("--dims", type=int, choices=(2, 3), help="2D or 3D (default: the data's; needed for 2D pretraining)")
    p.add_argument("--tasks", nargs="+", default=["combined", "masked_region"], help="proxy tasks to pretrain")
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--seeds", type=int, default=5, help="fine-tuning repeats per fraction (at least 5)")
    p.add_argument("--width", type=int, default=8, help="U-Net base width (paper: 32)")
    p.add_argument("--pretrain-epochs", type=int, default=10)
    p.add_argument("--pretrain-steps", type=int, default=20, help="pretraining steps per epoch")
    p.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    p.add_argument("--steps-per-epoch", type=int, default=10, help="fine-tuning steps per epoch")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=float, nargs=2, help="CT window for HU data")
    p.add_argument("--crop", type=int, nargs="+", help="fine-tuning crop (D H W, or H W for 2D; default: fitted to the "
                   "images) and pretraining crop (3D; 2D pretraining uses its H W)")
    p.add_argument("--device", default="auto")
    p.add_argument("--note", action="append", default=[], help="a line about the data for the report (repeatable), "
                   "e.g. the window the images were made with")
    p.add_argument("--out", default="benchmarks/results/label_efficiency")
    args = p.parse_args(argv)
    if args.seeds < 5:
        p.error("--seeds must be at least 5 (a t-test on fewer runs says little)")
    return args


def pretrain(args: argparse.Namespace, task: str, out: Path) -> dict[str, Any]:
    """Run genesis-pretrain for ``task``; returns ``{"checkpoint"}`` or ``{"error"}``."""
    from genesis.cli.pretrain import main

    best = out / "best.pt"
    if best.is_file():
        return {"checkpoint": str(best)}
    argv = ["--task", task, "--data", args.data, "--out", str(out), "--width", str(args.width),
            "--epochs", str(args.pretrain_epochs), "--steps-per-epoch", str(args.pretrain_steps),
            "--batch-size", str(args.batch_size), "--device", args.device, "--no-progress",
            "--crop", *_pretrain_crop(args)]
    if args.dims:
        argv += ["--dims", str(args.dims)]
    if args.group_size:  # pretraining validates on held-out patients too
        argv += ["--group-size", str(args.group_size)]
    argv += [flag.format(dims=args.dims or 3) for flag in PRETRAIN_FLAGS.get(task, [])]
    import contextlib
    import io

    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        code = main(argv)
    sys.stderr.write(captured.getvalue())
    if code != 0 or not best.is_file():
        errors = [line for line in captured.getvalue().splitlines() if line.startswith("error:")]
        return {"error": f"genesis-pretrain --task {task} exited with {code}: "
                         f"{errors[-1][len('error: '):] if errors else 'no message'}"}
    return {"checkpoint": str(best)}


def _pretrain_crop(args: argparse.Namespace) -> list[str]:
    if args.crop:
        return [str(c) for c in ([1, *args.crop[-2:]] if args.dims == 2 else args.crop)]
    return ["16", "32", "32"] if args.dims == 2 else ["32", "64", "64"]


def finetune(args: argparse.Namespace, out: Path, weights: str | None, compare: Path | None) -> dict[str, Any]:
    from genesis.cli.finetune import main

    argv = ["--target", args.target, "--data", args.data, "--out", str(out), "--width", str(args.width),
            "--epochs", str(args.epochs), "--steps-per-epoch", str(args.steps_per_epoch),
            "--batch-size", str(args.batch_size), "--repeats", str(args.seeds), "--device", args.device,
            "--label-fraction", *map(str, args.fractions), "--resume", "--set", "precise_bn_batches=4"]
    for flag, value in (("--test-data", args.test_data), ("--group-size", args.group_size), ("--dims", args.dims),
                        ("--weights", weights), ("--compare", compare and str(compare))):
        if value is not None:
            argv += [flag, str(value)]
    if args.window:
        argv += ["--window", *map(str, args.window)]
    if args.crop:
        argv += ["--crop", *map(str, args.crop)]
    if main(argv) != 0:
        raise SystemExit(f"genesis-finetune failed for {out}")
    return json.loads((out / "metrics.json").read_text())


def verdict(comparison: dict[str, Any] | None, p_corrected: float | None) -> str:
    """helped / hurt / no significant effect, from the Holm-corrected paired p-value."""
    if comparison is None or p_corrected is None or math.isnan(p_corrected):
        return "undetermined (too few runs)"
    if p_corrected < ALPHA:
        return "pretraining helped" if comparison["mean_difference"] > 0 else "pretraining hurt"
    return "no significant effect"


def study_rows(configs: dict[str, dict[str, Any]], primary: str) -> list[dict[str, Any]]:
    """One row per (configuration, fraction), with the comparison against scratch and the Holm
    correction over every (task, fraction) comparison of the study."""
    rows = []
    for name, conf in configs.items():
        if "metrics" not in conf:
            continue
        comparison = conf["metrics"].get("comparison") or {}
        comp = {c["fraction"]: c[primary] for c in comparison.get("fractions", [])}
        for f in sorted(conf["metrics"]["label_fractions"], key=lambda f: f["fraction"]):
            a = f["aggregate"][primary]
            rows.append({"config": name, "fraction": f["fraction"], "mean": a["mean"], "sd": a["sd"],
                         "ci_low": a.get("ci_low"), "ci_high": a.get("ci_high"), "t_low": a.get("t_low"),
                         "t_high": a.get("t_high"), "n_runs": a["n_runs"],
                         "n_train_patients": f.get("n_train_patients"), "warnings": f.get("warnings", []),
                         "vs_scratch": comp.get(f["fraction"])})
    tested = [r for r in rows if r["vs_scratch"] is not None]
    for r, p in zip(tested, holm([r["vs_scratch"]["p_paired"] for r in tested])):
        r["p_paired_holm"] = p
    for r in rows:
        r["verdict"] = verdict(r["vs_scratch"], r.get("p_paired_holm")) if r["vs_scratch"] is not None else None
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = finetune(args, out / "finetune-scratch", None, None)
    primary = scratch["primary_metric"]
    configs: dict[str, dict[str, Any]] = {"scratch": {"metrics": scratch}}
    for task in args.tasks:
        pre = pretrain(args, task, out / f"pretrain-{task}")
        if "error" in pre:
            configs[task] = {"error": pre["error"]}
            continue
        configs[task] = {"checkpoint": pre["checkpoint"],
                         "metrics": finetune(args, out / f"finetune-{task}", pre["checkpoint"], out / "finetune-scratch")}

    rows = study_rows(configs, primary)
    nan = float("nan")
    curves = {}
    for name in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == name]
        curves[name] = ([r["fraction"] for r in mine], [nan if r["mean"] is None else r["mean"] for r in mine],
                        [nan if r["ci_low"] is None else r["ci_low"] for r in mine],
                        [nan if r["ci_high"] is None else r["ci_high"] for r in mine])
    summary = {
        "data": args.data, "test_data": args.test_data, "group_size": args.group_size, "target": args.target,
        "primary_metric": primary, "fractions": args.fractions, "seeds": args.seeds, "tasks": args.tasks,
        "settings": {k: getattr(args, k) for k in ("width", "pretrain_epochs", "pretrain_steps", "epochs",
                                                    "steps_per_epoch", "batch_size", "dims", "window", "crop")},
        "data_source": scratch["data_source"], "notes": [*(scratch.get("notes") or []), *args.note],
        "test_unit": scratch.get("test_unit"), "n_test_units": scratch.get("n_test_units"),
        "n_test_samples": scratch.get("n_test_samples"), "empty_masks": scratch.get("empty_masks"),
        "ci_method": scratch.get("ci_method"),
        "test": ("paired t-test over seeds vs scratch (same labelled patients and test patients per seed), "
                 "Holm-corrected over all (task, fraction) comparisons; alpha 0.05. Also: paired bootstrap "
                 "over test patients and run pairs of the difference, and Welch's t-test"),
        "configs": {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in configs.items()},
        "rows": rows,
    }
    (out / "study.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "study.md").write_text(markdown(summary))
    from genesis.viz import save_curves

    save_curves(curves, out / "study.png", xlabel="fraction of training labels", ylabel=primary,
                title=f"{Path(args.data).name}: {primary} (95% CI: runs + test patients)")
    print((out / "study.md").read_text())
    print(f"wrote {out / 'study.json'}, {out / 'study.md'}, {out / 'study.png'}", file=sys.stderr)
    return 0


def markdown(s: dict[str, Any]) -> str:
    def f(x: Any, d: int = 4) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    def span(v: list[int] | None) -> str:
        return "?" if not v else str(v[0]) if len(set(v)) == 1 else f"{min(v)}-{max(v)}"

    unit = s.get("test_unit") or "patients"
    lines = [f"# Label efficiency: {s['target']} on `{s['data']}`", "",
             f"Data: {s['data_source']}. Notes: {'; '.join(s['notes'] or []) or 'none'}.",
             f"Settings: {s['settings']}; {s['seeds']} seeds per fraction.", "",
             f"Test set: {s.get('n_test_units')} {unit} ({s.get('n_test_samples')} samples). CI: {s.get('ci_method')}.",
             f"Tests: {s['test']}.", ""]
    empty = s.get("empty_masks")
    if empty and empty.get("n_test_cases_without_foreground"):
        lines += [f"Empty masks: {empty['n_test_cases_without_foreground']} of {empty['n_test_cases']} test cases have "
                  "no foreground; the metrics are over the cases with foreground.", ""]
    lines += [f"| configuration | label fraction | runs | train {unit} | {s['primary_metric']} mean ± s.d. [95% CI] | "
              "t-interval over runs | difference vs scratch [paired bootstrap 95% CI] | p paired t | p paired t, Holm | "
              "p paired bootstrap | p Welch | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in s["rows"]:
        c = r["vs_scratch"] or {}
        b = c.get("bootstrap") or {}
        diff = f"{f(c.get('mean_difference'))} [{f(b.get('low'))}, {f(b.get('high'))}]" if c else "-"
        lines.append(f"| {r['config']} | {r['fraction']:g} | {r['n_runs']} | {span(r.get('n_train_patients'))} | "
                     f"{f(r['mean'])} ± {f(r['sd'])} [{f(r['ci_low'])}, {f(r['ci_high'])}] | "
                     f"[{f(r.get('t_low'))}, {f(r.get('t_high'))}] | {diff} | "
                     + (f"{f(c.get('p_paired'))} | {f(r.get('p_paired_holm'))} | {f(b.get('p'))} | {f(c.get('p_welch'))}"
                        if c else "- | - | - | -")
                     + f" | {r['verdict'] or '-'} |")
    for name, conf in s["configs"].items():
        if "error" in conf:
            lines += ["", f"**{name}**: not run: {conf['error']}."]
    warnings = sorted({w for r in s["rows"] for w in r.get("warnings") or []})
    if warnings:
        lines += [""] + [f"**Warning**: {w}" for w in warnings]
    helped = [r for r in s["rows"] if r["verdict"] == "pretraining helped"]
    hurt = [r for r in s["rows"] if r["verdict"] == "pretraining hurt"]
    n_tests = sum(1 for r in s["rows"] if r["vs_scratch"] is not None)
    lines += ["", "**Verdict** (paired t-test, Holm-corrected over the "
              f"{n_tests} comparisons): " + (
                  "pretraining helped for " + ", ".join(f"{r['config']} at {r['fraction']:g}" for r in helped) if helped
                  else "pretraining did not help detectably at any fraction")
              + ("; it hurt for " + ", ".join(f"{r['config']} at {r['fraction']:g}" for r in hurt) if hurt else "") + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
