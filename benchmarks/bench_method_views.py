"""Cost of the masked image modelling views (MAE, SimMIM, SparK) next to the Models Genesis transforms.

Batches of the reference cube (1, 32, 64, 64) on one CPU thread, in process CPU time per sample
(``time.process_time``: the machine may be busy), all functions measured in alternating blocks
(``bench_proxy_transforms.measure_blocks``) so they share the machine's load:

* ``<method> mask``: the patch mask alone (``random_patch_mask`` on the method's default grid);
* ``<method> views``: what the method does per step before the network: ``method.views`` (image,
  mask, per-patch normalised target where the loss uses one) plus the voxel-resolution mask and
  the masked input;
* the Models Genesis transforms (ours, as ``bench_proxy_transforms`` times them) and the memory
  floor (one clone and one elementwise pass of the batch).

Method settings are the papers' defaults: MAE patch 16 (ViT form: normalised targets; CNN form:
raw), SimMIM mask patch 32, SparK on ``unet3d`` (mask patch = total stride 8, normalised targets).

Run: ``python benchmarks/bench_method_views.py [--repeats 12] [--out benchmarks/results]``.
Writes ``method_views.json`` and ``method_views.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_proxy_transforms import SHAPE, cube_batch, floor_fn, measure_blocks, ours_fn

from genesis.fileio import write_report
from genesis.methods import METHODS
from genesis.methods._masking import patch_grid, random_patch_mask
from genesis.methods.base import NetworkRequest

BATCHES = (6, 32)
#: label -> (method, parameters, --model)
METHODS_TIMED = {
    "mae (ViT)": ("mae", {}, "vit"),
    "mae (CNN)": ("mae", {}, "unet3d"),
    "simmim": ("simmim", {}, "vit"),
    "spark": ("spark", {}, "unet3d"),
}
TRANSFORMS = ("combined", "local_shuffle", "nonlinear", "inner_cutout", "outer_cutout")


def method_fns(label: str, cubes: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The mask-only and the whole-views functions of one method on ``cubes``."""
    name, params, model = METHODS_TIMED[label]
    method = METHODS.get(name)(**params)
    method.network(NetworkRequest(model, 3, 32, crop=SHAPE))
    patch = method.patch(3)
    grid = patch_grid(SHAPE, patch)
    gen = torch.Generator(device=cubes.device).manual_seed(0)

    def views() -> object:
        v = method.views(cubes, gen, 3)
        return v.voxel_mask, v.input, v.target

    return {f"{label} mask": lambda: random_patch_mask(cubes.shape[0], grid, method.mask_ratio, gen, cubes.device),
            f"{label} views": views}


def run(repeats: int, out_dir: Path, batches: tuple[int, ...] = BATCHES) -> dict:
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows: dict[str, dict[str, float]] = {}
    for b in batches:
        cubes = torch.from_numpy(cube_batch(b))
        fns: dict[str, Callable[[], object]] = {}
        for label in METHODS_TIMED:
            fns.update(method_fns(label, cubes))
        for name in TRANSFORMS:
            fns[f"models genesis {name}"] = ours_fn(name, cubes, 1)
        fns["floor"] = floor_fn(cubes)
        for key, t in measure_blocks(fns, repeats).items():
            rows.setdefault(key, {})[str(b)] = 1e3 * t["cpu_median_s"] / b
            print(f"{key:32s} batch {b:3d}: {1e3 * t['cpu_median_s'] / b:8.4f} ms/sample", flush=True)
    result = {
        "benchmark": "masked image modelling views vs the Models Genesis transforms, CPU ms per sample",
        "command": f"python benchmarks/bench_method_views.py --repeats {repeats}",
        "cube_dhw": list(SHAPE),
        "batches": list(batches),
        "threads": torch.get_num_threads(),
        "timing": "process CPU time per batch / batch size, median of the repeats, functions in alternating blocks",
        "repeats": repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "ms_per_sample": rows,
    }
    write_report(out_dir, "method_views", result, to_markdown(result))
    return result


def to_markdown(result: dict) -> str:
    batches = result["batches"]
    load = ", ".join("unknown" if v is None else f"{v:.1f}" for v in result["load_average_1min"])
    lines = [
        "# Masked image modelling views vs Models Genesis transforms (CPU ms per sample)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Cubes (1, {', '.join(map(str, result['cube_dhw']))}), {result['threads']} CPU thread, torch "
        f"{result['torch']}, {result['repeats']} repeats; {result['timing']}. `mask`: the patch mask alone; "
        "`views`: the method's views plus the voxel mask and the masked input. Machine: "
        f"{result['cpu_count']} cores, 1-minute load average {load} (start, end).",
        "",
        "| what | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- | " + " | ".join("---:" for _ in batches) + " |",
    ]
    for key, row in result["ms_per_sample"].items():
        lines.append(f"| {key} | " + " | ".join(f"{row[str(b)]:.4f}" for b in batches) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    run(args.repeats, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
