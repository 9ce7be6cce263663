"""Do MAE, SimMIM and SparK learn on real CT? Validation error on the masked voxels against the
trivial baseline (the mean of the visible voxels), on held-out real images.

* 2D: the MSD Task06 lung patches (``msd_lung_2mm_patches/val_patches.h5``, 130 slices 48x48 in
  [0, 1]): the first 100 train, the last 30 validate (the file does not say which patient each
  patch is from, so the split is by position, not by patient).
* 3D: cubes 32^3 cut at random from two CT volumes (TotalSegmentator's ``example_ct``, its
  ``pulmonary_report/ct_cropped``) train; cubes from a third patient's chest CT (CIP's ``ct-64``,
  COPDGene) validate. HU clipped to [-1000, 1000] and scaled to [0, 1], no resampling.

Tiny networks (U-Net width 4, ViT 48 wide with 2 blocks), Adam lr 1e-3, batch 8, on the CPU
through the method contract (views, forward, loss, validation) only. Settings are the papers'
except where the small images need smaller patches (given in the table).

Run: ``python benchmarks/study_mim_real.py [--steps2d 300] [--steps3d 150] [--steps-vit 3000] [--real ../shared/data/real]``.
Writes ``mim_real.json`` and ``mim_real.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genesis.fileio import write_report
from genesis.methods import METHODS
from genesis.methods.base import NetworkRequest

VIT = {"hidden_size": 48, "num_layers": 2, "num_heads": 4, "mlp_dim": 96}
DECODER = {"decoder_width": 48, "decoder_depth": 1, "decoder_heads": 4}
#: label -> (method, parameters, --model, dims)
RUNS = {
    "mae vit 2d (patch 8)": ("mae", {"patch_size": 8, **DECODER}, "vit", 2),
    "mae unet2d (patch 8)": ("mae", {"patch_size": 8}, "unet2d", 2),
    "simmim unet2d (mask patch 16)": ("simmim", {"mask_patch_size": 16}, "unet2d", 2),
    "spark unet2d": ("spark", {}, "unet2d", 2),
    "mae vit 3d (patch 8)": ("mae", {"patch_size": 8, **DECODER}, "vit", 3),
    "mae unet3d (patch 8)": ("mae", {"patch_size": 8}, "unet3d", 3),
    "simmim unet3d (mask patch 16)": ("simmim", {"mask_patch_size": 16}, "unet3d", 3),
    "spark unet3d": ("spark", {}, "unet3d", 3),
}
CROP3 = (32, 32, 32)


def msd_patches(real: Path) -> tuple[torch.Tensor, torch.Tensor]:
    import h5py

    with h5py.File(real / "msd_lung_2mm_patches" / "val_patches.h5", "r") as f:
        images = torch.from_numpy(np.asarray(f["images"], dtype=np.float32))  # (130, 1, 48, 48)
    cubes = images.unsqueeze(2)  # (N, 1, 1, 48, 48): depth-1 cubes, 2D views
    return cubes[:100], cubes[100:]


def ct_cubes(paths: list[Path], n: int, seed: int) -> torch.Tensor:
    from genesis.io import load_volume

    rng = np.random.default_rng(seed)
    vols = [np.clip((load_volume(p).array.astype(np.float32) + 1000.0) / 2000.0, 0.0, 1.0) for p in paths]
    out = []
    for i in range(n):
        v = vols[i % len(vols)]
        z, y, x = (int(rng.integers(0, s - c + 1)) for s, c in zip(v.shape, CROP3))
        out.append(v[z:z + CROP3[0], y:y + CROP3[1], x:x + CROP3[2]])
    return torch.from_numpy(np.stack(out))[:, None]


def run_one(label: str, train: torch.Tensor, val: torch.Tensor, steps: int, seed: int = 0) -> dict:
    name, params, model_name, dims = RUNS[label]
    method = METHODS.get(name)(**params)
    crop = tuple(train.shape[2:])
    request = NetworkRequest(model_name, dims, 4, crop=crop, model_kwargs=VIT if model_name == "vit" else {})
    spec = method.network(request)
    torch.manual_seed(seed)
    model = method.build_model(spec)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pick = torch.Generator().manual_seed(seed)
    t0 = time.process_time()
    model.train()
    for step in range(steps):
        batch = train[torch.randint(0, len(train), (8,), generator=pick)]
        views = method.views(batch, torch.Generator().manual_seed(seed * 100000 + step), dims)
        loss, _ = method.loss(method.forward(model, views), views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.process_time() - t0
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    with torch.no_grad():
        for rep in range(4):  # four mask draws over the whole validation set
            for i in range(0, len(val), 16):
                views = method.views(val[i:i + 16], torch.Generator().manual_seed(10_000 + rep * 100 + i), dims)
                out = method.forward(model, views)
                for k, v in method.validation(out, views).items():
                    sums[k] = sums.get(k, 0.0) + v
                count += method.count(views)
    metrics = {k: v / count for k, v in sums.items()}
    model_key = "val_masked_l1" if method.loss_kind == "l1" else "val_masked_mse"
    base_key = "val_mask_mean_l1" if method.loss_kind == "l1" else "val_mask_mean_mse"
    # with per-patch normalised targets the visible mean maps to (c - mean) / std, huge on flat
    # patches (std ~ 1e-3): there the best constant per patch (predicting 0) is the baseline to beat
    best = min(metrics[base_key], metrics.get("val_patch_mean_mse", float("inf")))
    row = {"method": name, "model": model_name, "dims": dims, "steps": steps, "train_cpu_s": train_s,
           "settings": method.describe(), "metrics": metrics, "model_key": model_key, "baseline_key": base_key,
           "best_baseline": best, "ratio_to_best_baseline": metrics[model_key] / best}
    print(f"{label:32s} {model_key} {metrics[model_key]:.4f}  {base_key} {metrics[base_key]:.4f}  "
          f"patch mean {metrics.get('val_patch_mean_mse', float('nan')):.4f}  ratio {row['ratio_to_best_baseline']:.3f}"
          f"  ({train_s:.0f} s)", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps2d", type=int, default=300)
    parser.add_argument("--steps3d", type=int, default=150)
    parser.add_argument("--steps-vit", type=int, default=3000,
                        help="steps of the ViT runs (a tiny ViT costs a few ms per step; transformers need more)")
    parser.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real",
                        help="the real-data folder (default: ../shared/data/real next to the repository)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    train2, val2 = msd_patches(args.real)
    ts = args.real / "totalsegmentator"
    train3 = ct_cubes([ts / "example_ct.nii.gz", ts / "pulmonary_report" / "ct_cropped.nii.gz"], 64, 0)
    val3 = ct_cubes([args.real / "cip_copdgene" / "ct-64.nrrd"], 32, 1)
    rows = {}
    for label, (_, _, _, dims) in RUNS.items():
        train, val = (train2, val2) if dims == 2 else (train3, val3)
        steps = args.steps_vit if RUNS[label][2] == "vit" else (args.steps2d if dims == 2 else args.steps3d)
        rows[label] = run_one(label, train, val, steps)
    result = {"study": "masked image modelling on real CT: masked-voxel error vs the visible-mean baseline",
              "command": f"python benchmarks/study_mim_real.py --steps2d {args.steps2d} --steps3d {args.steps3d} "
                         f"--steps-vit {args.steps_vit}",
              "torch": torch.__version__, "runs": rows}
    lines = ["# Masked image modelling on real CT", "", f"Command: `{result['command']}`", "",
             "Validation error on the masked voxels (in each loss's target space: MSE of per-patch normalised "
             "targets for MAE-ViT and SparK, MSE of intensities for MAE's CNN form, L1 for SimMIM) against "
             "predicting the mean of the visible voxels and, with normalised targets, the best constant per "
             "patch (predicting 0, i.e. each patch's own mean). Ratio: model / the better baseline; < 1 beats both.",
             "",
             "| run | steps | model | visible-mean baseline | best constant per patch | ratio | train CPU s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, row in rows.items():
        m = row["metrics"]
        patch_mean = f"{m['val_patch_mean_mse']:.4f}" if "val_patch_mean_mse" in m else "-"
        lines.append(f"| {label} | {row['steps']} | {m[row['model_key']]:.4f} | {m[row['baseline_key']]:.4f} | "
                     f"{patch_mean} | {row['ratio_to_best_baseline']:.3f} | {row['train_cpu_s']:.0f} |")
    write_report(args.out, "mim_real", result, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
