"""Does each pretraining method learn on real data? Its validation metric against the trivial
baseline it must beat, on held-out patients, through ``genesis-pretrain`` itself.

* 2D: the MSD Task06 lung patches (``msd_lung_2mm_patches/val_patches.h5``: 13 patients x 10
  patches in order, so ``--group-size 10``); 4 patients (40 patches) are held out for validation.
* 3D: real chest CT volumes (TotalSegmentator's ``example_ct`` and ``pulmonary_report/ct_cropped``,
  CIP COPDGene's ``ct-64``) through a manifest with a ``group`` column (each its own patient); the
  last patient (``ct-64``) is held out.

Every run is a plain ``genesis-pretrain`` on the CPU (tiny networks, Adam at 1e-3, the methods'
paper defaults except where the small images need smaller patches or grids, given in the table);
the numbers are the last epoch's validation record in ``log.csv``/``last.pt``, i.e. exactly what a
user sees. "beats" compares the model with the baseline in the direction of the metric.

Run: ``python benchmarks/study_methods_real.py [--real ../shared/data/real] [--epochs 8] [--steps 20]``
(about 10-15 minutes of CPU on 2 cores). Writes ``benchmarks/results/methods_real.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genesis.fileio import write_report  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

#: label -> (task, extra flags, metric, baselines (the best of them counts), higher is better)
RUNS_2D: dict[str, tuple[str, list[str], str, tuple[str, ...], bool]] = {
    "combined (Models Genesis)": ("combined", [], "val_mse", ("val_mean_mse", "val_identity_mse"), False),
    "masked_region (Tariq)": ("masked_region", [], "val_masked_mse", ("val_masked_fill_mse",), False),
    "mae (U-Net form)": ("mae", ["--model", "unet2d", "--set", "task_params={patch_size: 8}"],
                         "val_masked_mse", ("val_mask_mean_mse",), False),
    "simmim (U-Net)": ("simmim", ["--model", "unet2d", "--set", "task_params={mask_patch_size: 16}"],
                       "val_masked_l1", ("val_mask_mean_l1",), False),
    "spark (U-Net)": ("spark", ["--model", "unet2d"], "val_masked_mse", ("val_patch_mean_mse", "val_mask_mean_mse"),
                      False),
    "simclr": ("simclr", [], "val_top1", ("val_chance",), True),
    "byol": ("byol", [], "val_top1", ("val_chance",), True),
    # the criterion for VoCo: its position prediction against chance (the overlap error
    # against predicting the mean overlap is reported next to it)
    "voco (grid 1x2x2)": ("voco", ["--set", "task_params={grid: [1, 2, 2]}"], "val_top1", ("val_chance",), True),
}
RUNS_3D = {
    "combined (Models Genesis)": RUNS_2D["combined (Models Genesis)"],
    "mae (U-Net form)": ("mae", ["--model", "unet3d", "--set", "task_params={patch_size: 8}"],
                         "val_masked_mse", ("val_mask_mean_mse",), False),
    "spark (U-Net)": ("spark", ["--model", "unet3d"], "val_masked_mse", ("val_patch_mean_mse", "val_mask_mean_mse"),
                      False),
    "simclr": RUNS_2D["simclr"],
    "voco (grid 1x2x2)": RUNS_2D["voco (grid 1x2x2)"],
}
CT_FILES = ("totalsegmentator/example_ct.nii.gz", "totalsegmentator/pulmonary_report/ct_cropped.nii.gz",
            "cip_copdgene/ct-64.nrrd")


def ct_manifest(real: Path, out: Path) -> Path:
    path = out / "ct.csv"
    out.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "group"])
        for i, rel in enumerate(CT_FILES):
            writer.writerow([str(real / rel), f"patient-{i}"])
    return path


#: further (metric, baseline) pairs shown next to the main one
ALSO = {"voco": ("val_overlap_mae", "val_mean_overlap_mae")}


def run(task: str, flags: list[str], data: list[str], out: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from genesis.cli.pretrain import main

    if args.reuse and (out / "last.pt").is_file():  # tabulate a finished run again (e.g. another criterion)
        last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["history"][-1]
        return {"record": {k: v for k, v in last.items() if isinstance(v, (int, float))}, "cpu_s": float("nan")}
    argv = ["--task", task, *data, *flags, "--out", str(out), "--overwrite", "--epochs", str(args.epochs),
            "--steps-per-epoch", str(args.steps), "--optimizer", "adam", "--lr", "1e-3", "--device", "cpu",
            "--precision", "fp32", "--no-progress", "--set", "log.tensorboard=false", "--set", "log.grids=false"]
    started = time.process_time()
    code = main(argv)
    seconds = time.process_time() - started
    if code != 0:
        return {"error": f"exit {code}", "cpu_s": seconds}
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["history"][-1]
    return {"record": {k: v for k, v in last.items() if isinstance(v, (int, float))}, "cpu_s": seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--work", type=Path, default=Path("/tmp/genesis_methods_real"))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--only", nargs="*", help="labels to run (default: all)")
    p.add_argument("--dims", type=int, nargs="*", default=[2, 3], help="which of the 2D / 3D studies to run")
    p.add_argument("--name", default="methods_real", help="file stem of the results")
    p.add_argument("--reuse", action="store_true", help="tabulate finished runs under --work again (no training)")
    args = p.parse_args(argv)
    h5 = args.real / "msd_lung_2mm_patches" / "val_patches.h5"
    data_2d = ["--data", str(h5), "--dims", "2", "--group-size", "10", "--width", "8", "--batch-size", "16",
               "--set", "data.val_fraction=0.3", "--set", "data.val_cubes=64"]
    data_3d = ["--data", str(ct_manifest(args.real, args.work)), "--width", "4", "--batch-size", "4",
               "--crop", "16", "32", "32", "--set", "data.val_fraction=0.34", "--set", "data.val_cubes=32",
               "--set", "data.models_genesis_sampler=false"]
    previous: dict[tuple[int, str], float] = {}
    if args.reuse and (args.out / f"{args.name}.json").is_file():  # keep the CPU time of the runs tabulated again
        import json

        for r in json.loads((args.out / f"{args.name}.json").read_text()).get("rows", []):
            previous[(r["dims"], r["task"])] = r.get("cpu_s")
    rows = []
    for dims, runs, data in ((2, RUNS_2D, data_2d), (3, RUNS_3D, data_3d)):
        if dims not in args.dims:
            continue
        for label, (task, flags, metric, baselines, higher) in runs.items():
            if args.only and label not in args.only:
                continue
            result = run(task, flags, data, args.work / f"{dims}d-{task}", args)
            row: dict[str, Any] = {"dims": dims, "method": label, "task": task, "metric": metric,
                                   "higher_is_better": higher, "cpu_s": round(result["cpu_s"], 1)}
            if previous.get((dims, task)) is not None and result["cpu_s"] != result["cpu_s"]:
                row["cpu_s"] = previous[(dims, task)]
            if "error" in result:
                row["error"] = result["error"]
            else:
                rec = result["record"]
                found = {b: rec[b] for b in baselines if b in rec}
                best = (max if higher else min)(found.values()) if found else None
                row.update(value=rec.get(metric), baseline=best,
                           baseline_name=min(found, key=lambda b: found[b] * (-1 if higher else 1)) if found else None,
                           beats=None if best is None or rec.get(metric) is None else
                           (rec[metric] > best if higher else rec[metric] < best),
                           val_patients=rec.get("val_patients"))
                if task in ALSO:
                    m2, b2 = ALSO[task]
                    row["also"] = {m2: rec.get(m2), b2: rec.get(b2)}
            rows.append(row)
            print(row, flush=True)
    lines = ["# Pretraining methods on real data", "",
             f"Command: `python benchmarks/study_methods_real.py --epochs {args.epochs} --steps {args.steps}"
             + (f" --dims {' '.join(map(str, args.dims))}" if args.dims != [2, 3] else "")
             + (f" --only {' '.join(repr(o) for o in args.only)}" if args.only else "")
             + (f" --name {args.name}" if args.name != "methods_real" else "") + "` "
             "(CPU, 2 cores, tiny networks: U-Net width 8 in 2D, 4 in 3D; Adam 1e-3).", "",
             "2D: MSD lung patches, 13 patients x 10 patches (`--group-size 10`), 4 patients held out. "
             "3D: 3 real chest CTs, one patient each, the last (CIP ct-64) held out. Numbers are the last epoch's "
             "validation record of `genesis-pretrain` (what `log.csv` shows).", "",
             "| dims | method | metric | model | trivial baseline | beats it | CPU s | also |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dims']}D | {r['method']} | {r['metric']} | {r['error']} | | | {r['cpu_s']} | |")
            continue
        also = "; ".join(f"{k} {v:.4g}" for k, v in (r.get("also") or {}).items() if v is not None)
        lines.append(f"| {r['dims']}D | {r['method']} | {r['metric']} | {r['value']:.4g} | "
                     f"{r['baseline']:.4g} ({r['baseline_name']}) | {'yes' if r['beats'] else 'no'} | {r['cpu_s']} |"
                     + (f" {also} |" if also else " |"))
    write_report(args.out, args.name, {"settings": vars(args) | {"real": str(args.real), "work": str(args.work),
                                                                       "out": str(args.out)}, "rows": rows},
                 "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
