"""Label-efficiency study on your own dataset: does self-supervised pretraining help, and where?

Pretrains each proxy task of ``--tasks`` on the dataset's images (labels unused), then fine-tunes
from scratch and from every pretrained model at each label fraction with ``--seeds`` seeds, and
compares each pretrained configuration with scratch by independent two-sample t-tests (Student and
Welch, :func:`finetune.stats.compare_runs`) per fraction. Writes ``study.json``, ``study.md`` and
``study.png`` (primary metric vs label fraction, bootstrap 95% CIs) into ``--out`` and says plainly,
per task and fraction, whether pretraining helped (higher mean and Welch p < 0.05), hurt, or had no
detectable effect.

Example (the MSD lung-tumour patches: 13 patients x 10 patches in order)::

    python benchmarks/study_label_efficiency.py --data ../shared/data/real/msd_lung_2mm_patches/val_patches.h5 \\
        --group-size 10 --dims 2 --tasks combined masked_region --fractions 0.1 1.0 --seeds 5 \\
        --out benchmarks/results/label_efficiency_msd_lung

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

ALPHA = 0.05


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


def verdict(comparison: dict[str, Any]) -> str:
    p, a, b = comparison.get("p_welch"), comparison.get("mean_a"), comparison.get("mean_b")
    if p is None or a is None or b is None or any(isinstance(v, float) and math.isnan(v) for v in (p, a, b)):
        return "undetermined (too few runs)"
    if p < ALPHA:
        return "pretraining helped" if a > b else "pretraining hurt"
    return "no significant effect"


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

    rows, curves = [], {}
    for name, conf in configs.items():
        if "metrics" not in conf:
            continue
        fr = sorted(conf["metrics"]["label_fractions"], key=lambda f: f["fraction"])
        agg = [f["aggregate"][primary] for f in fr]
        nan = float("nan")
        curves[name] = ([f["fraction"] for f in fr], [a["mean"] if a["mean"] is not None else nan for a in agg],
                        [a.get("ci_low", nan) or nan for a in agg], [a.get("ci_high", nan) or nan for a in agg])
        comp = {c["fraction"]: c[primary] for c in (conf["metrics"].get("comparison") or {}).get("fractions", [])}
        for f, a in zip(fr, agg):
            c = comp.get(f["fraction"])
            rows.append({"config": name, "fraction": f["fraction"], "mean": a["mean"], "sd": a["sd"],
                         "ci_low": a.get("ci_low"), "ci_high": a.get("ci_high"), "n_runs": a["n_runs"],
                         "vs_scratch": c, "verdict": verdict(c) if c else None})
    summary = {
        "data": args.data, "test_data": args.test_data, "group_size": args.group_size, "target": args.target,
        "primary_metric": primary, "fractions": args.fractions, "seeds": args.seeds, "tasks": args.tasks,
        "settings": {k: getattr(args, k) for k in ("width", "pretrain_epochs", "pretrain_steps", "epochs",
                                                    "steps_per_epoch", "batch_size", "dims", "window", "crop")},
        "data_source": scratch["data_source"], "notes": [*(scratch.get("notes") or []), *args.note],
        "test": "independent two-sample t-tests vs scratch per fraction (Welch p shown); alpha 0.05",
        "configs": {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in configs.items()},
        "rows": rows,
    }
    (out / "study.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (out / "study.md").write_text(markdown(summary))
    from genesis.viz import save_curves

    save_curves(curves, out / "study.png", xlabel="fraction of training labels", ylabel=primary,
                title=f"{args.target} on {Path(args.data).name}: {primary} (95% bootstrap CI)")
    print((out / "study.md").read_text())
    print(f"wrote {out / 'study.json'}, {out / 'study.md'}, {out / 'study.png'}", file=sys.stderr)
    return 0


def markdown(s: dict[str, Any]) -> str:
    def f(x: Any, d: int = 4) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"

    lines = [f"# Label efficiency: {s['target']} on `{s['data']}`", "",
             f"Data: {s['data_source']}. Notes: {'; '.join(s['notes'] or []) or 'none'}.",
             f"Settings: {s['settings']}; {s['seeds']} seeds per fraction. {s['test']}.", "",
             f"| configuration | label fraction | runs | {s['primary_metric']} mean ± s.d. [95% CI] | p (Welch) vs scratch | verdict |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in s["rows"]:
        p = f(r["vs_scratch"]["p_welch"]) if r["vs_scratch"] else "-"
        lines.append(f"| {r['config']} | {r['fraction']:g} | {r['n_runs']} | {f(r['mean'])} ± {f(r['sd'])} "
                     f"[{f(r['ci_low'])}, {f(r['ci_high'])}] | {p} | {r['verdict'] or '-'} |")
    for name, conf in s["configs"].items():
        if "error" in conf:
            lines += ["", f"**{name}**: not run: {conf['error']}."]
    helped = [r for r in s["rows"] if r["verdict"] == "pretraining helped"]
    hurt = [r for r in s["rows"] if r["verdict"] == "pretraining hurt"]
    lines += ["", "**Verdict**: " + (
        "pretraining helped for " + ", ".join(f"{r['config']} at {r['fraction']:g}" for r in helped) if helped else
        "pretraining did not help detectably at any fraction")
        + ("; it hurt for " + ", ".join(f"{r['config']} at {r['fraction']:g}" for r in hurt) if hurt else "") + "."]
    # each row is its own test; with several, say how many survive a Bonferroni correction
    tested = [r for r in s["rows"] if r["vs_scratch"] and r["vs_scratch"].get("p_welch") is not None]
    if len(tested) > 1:
        strict = ALPHA / len(tested)
        kept = [r for r in tested if r["vs_scratch"]["p_welch"] < strict]
        lines.append(f"{len(tested)} comparisons: at a Bonferroni-corrected alpha of {strict:.4g}, "
                     + (", ".join(f"{r['config']} at {r['fraction']:g}" for r in kept) if kept else "none")
                     + " remain significant.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
