"""``genesis-demo``: the whole workflow, small, on the embedded synthetic chest CT.

1. pretrain a small 3D U-Net with the Models Genesis ``combined`` proxy task,
2. fine-tune it on nodule segmentation (``ncs``), and the same network from scratch,
3. print both results with bootstrap CIs and a t-test, and say where the files and pictures are.

It runs the same code paths as ``genesis-pretrain`` and ``genesis-finetune`` (it calls their
``main`` functions with flags), in a few minutes on a 2-core CPU. The numbers are from tiny
networks trained briefly on synthetic data: they show the pipeline works end to end, not what
Models Genesis achieves at the paper's settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from genesis.cli._common import user_errors_exit
from genesis.errors import GenesisError

BANNER = (
    "genesis demo: pretrain -> fine-tune -> compare, on SYNTHETIC chest CT generated on the fly\n"
    "(no real patient data; numbers are for a tiny CPU configuration, not the paper's results)"
)

# Small enough for a 2-core CPU in minutes, large enough that the segmentation metric moves.
PRETRAIN_FLAGS = ["--preset", "quick", "--task", "combined", "--epochs", "12", "--steps-per-epoch", "20"]
FINETUNE_FLAGS = [
    "--preset", "quick", "--epochs", "8", "--steps-per-epoch", "32", "--batch-size", "4", "--lr", "3e-3",
    "--patience", "8", "--repeats", "2", "--set", "synthetic.n_train=4",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genesis-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--target", default="ncs", help="fine-tuning target (default ncs: nodule segmentation)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda[:n]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    from genesis.cli._help import document_defaults

    return document_defaults(p)


def _run(step: str, main, argv: list[str]) -> None:
    print(f"\n== {step}\n   {' '.join(argv)}", flush=True)
    code = main(argv)
    if code:
        raise GenesisError(f"demo step '{step}' failed (exit code {code}); see the message above")


def _aggregate_lines(metrics_path: Path) -> list[str]:
    """One line per label fraction and metric: mean +- s.d. [95% CI] over the repeated runs."""
    result = json.loads(metrics_path.read_text())
    lines = []
    for entry in result.get("label_fractions", []):
        for name, agg in entry.get("aggregate", {}).items():
            lines.append(
                f"   {name:>20}: {agg['mean']:.3f} +- {agg.get('sd', 0.0):.3f} "
                f"[95% CI {agg.get('ci_low', float('nan')):.3f}, {agg.get('ci_high', float('nan')):.3f}] "
                f"over {agg.get('n_runs', '?')} runs (label fraction {entry.get('fraction')})"
            )
    return lines


def ttest_lines(result: dict) -> list[str]:
    """The comparison table of ``metrics.json`` as text: the paired t-test over seeds (the primary
    test: both sides share seeds and test patients), the paired bootstrap over patients, Welch's."""
    comp = result.get("comparison") or {}
    lines = [f"   {'metric':>20}  {'pretrained':>10}  {'scratch':>10}  {'p (paired)':>10}  {'p (bootstrap)':>13}  "
             f"{'p (Welch)':>9}"]
    for row in comp.get("fractions", []):
        for name in result.get("metrics", []):
            c = row.get(name) or {}
            cells = [c.get("mean_a"), c.get("mean_b"), c.get("p_paired"), (c.get("bootstrap") or {}).get("p"),
                     c.get("p_welch")]
            shown = ["n/a" if v is None or v != v else f"{v:.3f}" for v in cells]
            lines.append(f"   {name:>20}  {shown[0]:>10}  {shown[1]:>10}  {shown[2]:>10}  {shown[3]:>13}  {shown[4]:>9}")
    return lines


def verdict(result: dict, alpha: float = 0.05) -> str:
    """One line: whether these runs show pretraining helping on the primary metric, said plainly."""
    primary = result.get("primary_metric")
    rows = (result.get("comparison") or {}).get("fractions", [])
    c = rows[0].get(primary, {}) if rows else {}
    p, a, b = c.get("p_paired"), c.get("mean_a"), c.get("mean_b")
    if p is not None and p == p and p < alpha and a is not None and b is not None and a > b:
        return (f"Result: the pretrained network is better on {primary} ({a:.3f} vs {b:.3f}, paired p = {p:.3g}), "
                "on synthetic data with a tiny network.")
    shown = "n/a" if p is None or p != p else f"{p:.2g}"
    return (f"Result: no difference shown (paired p = {shown}): two runs each of a tiny network trained for minutes "
            "cannot show one; use real data, the paper's settings and --repeats 10 to test it.")


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    from genesis.cli import finetune as finetune_cli
    from genesis.cli import pretrain as pretrain_cli

    args = build_parser().parse_args(argv)
    out: Path = args.out
    common = ["--device", args.device, "--overwrite"]  # a demo run again replaces its own earlier outputs
    quiet = ["--no-progress"] if args.no_progress else []
    print(BANNER, flush=True)
    start = time.perf_counter()

    pre_out = out / "pretrain"
    _run("1/3 pretraining (Models Genesis combined proxy task)", pretrain_cli.main,
         PRETRAIN_FLAGS + ["--out", str(pre_out)] + common + quiet)
    best = pre_out / "best.pt"

    scratch_out, genesis_out = out / f"{args.target}-scratch", out / f"{args.target}-genesis"
    ft_common = ["--target", args.target] + FINETUNE_FLAGS + common
    _run("2/3 fine-tuning from scratch", finetune_cli.main, ft_common + ["--out", str(scratch_out)])
    _run("3/3 fine-tuning from the pretrained weights", finetune_cli.main,
         ft_common + ["--weights", str(best), "--out", str(genesis_out), "--compare", str(scratch_out)])

    print(f"\n== Result ({args.target}, SYNTHETIC data, {time.perf_counter() - start:.0f} s)")
    print(" from scratch:")
    print("\n".join(_aggregate_lines(scratch_out / "metrics.json")))
    print(" from Models Genesis pretraining:")
    print("\n".join(_aggregate_lines(genesis_out / "metrics.json")))
    result = json.loads((genesis_out / "metrics.json").read_text())
    print(" comparison (pretrained vs scratch; paired over seeds and test patients):")
    print("\n".join(ttest_lines(result)))
    print(verdict(result))
    print(f"\nFiles: {pre_out}/grids/*.png (restorations), {genesis_out}/metrics.md, {genesis_out}/metrics.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
