"""Cost of the contrastive methods' views (SimCLR/BYOL, VoCo) per sample, next to the Models Genesis
combined transform.

Per method, dims and batch size: the process CPU time of one ``method.views(cubes, generator, dims)``
call on one CPU thread, divided by the batch size (median over the repeats; functions measured in
alternating blocks with :func:`bench_proxy_transforms.measure_blocks`, so they share the machine's
load). Inputs: sub-volumes (1, 32, 64, 64), the reference cube (2D: one axial slice of each), and for
VoCo the region its default grid asks of the sampler (``sample_crop``: (1, 32, 256, 256), 16 base
crops and 4 random crops of (32, 64, 64)). BYOL's views are SimCLR's (the same function). The
Models Genesis ``combined`` transform on the same cubes (batch 6) and the memory floor (one clone
and one elementwise pass of what the views return) are timed in the same blocks.

Run: ``python benchmarks/bench_method_views_contrastive.py [--repeats 12] [--out benchmarks/results]``.
Writes ``method_views_contrastive.json`` and ``method_views_contrastive.md``.
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

from bench_proxy_transforms import measure_blocks  # noqa: E402

import proxy_tasks  # noqa: E402
from genesis.fileio import write_report  # noqa: E402
from genesis.methods.simclr import SimCLR  # noqa: E402
from genesis.methods.voco import VoCo  # noqa: E402

CROP = (32, 64, 64)
CASES: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    ("simclr", 3, (1, 6, 32)), ("simclr", 2, (1, 6, 32)), ("voco", 3, (1, 6)), ("voco", 2, (1, 6, 32)))


def views_fn(method, cubes: torch.Tensor, dims: int) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(0)
    return lambda: method.views(cubes, gen, dims)


def floor_fn(out: torch.Tensor) -> Callable[[], object]:
    """One clone and one elementwise pass of what the views return (any transform's minimum)."""
    return lambda: out.clone().mul_(1.0)


def run(repeats: int, out_dir: Path) -> dict:
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    methods = {"simclr": SimCLR(), "voco": VoCo()}
    genesis = proxy_tasks.build("combined")
    rows = []
    for name, dims, batches in CASES:
        method = methods[name]
        fns, outputs = {}, {}
        for b in batches:
            cubes = torch.rand((b, 1, *method.sample_crop(CROP)), generator=torch.Generator().manual_seed(b))
            fns[f"views{b}"] = views_fn(method, cubes, dims)
            out = fns[f"views{b}"]().input
            outputs[b] = tuple(out.shape)
            fns[f"floor{b}"] = floor_fn(out)
        cubes6 = torch.rand((6, 1, *CROP), generator=torch.Generator().manual_seed(6))
        gen = torch.Generator().manual_seed(1)
        fns["genesis6"] = lambda: genesis(cubes6, generator=gen)
        t = measure_blocks(fns, repeats)
        for b in batches:
            ms = 1e3 * t[f"views{b}"]["cpu_median_s"] / b
            voxels = 1
            for s in outputs[b]:
                voxels *= s
            row = {"method": name, "dims": dims, "batch": b, "views_shape": list(outputs[b]),
                   "ms_per_sample": ms, "min_ms_per_sample": 1e3 * t[f"views{b}"]["cpu_min_s"] / b,
                   "floor_ms_per_sample": 1e3 * t[f"floor{b}"]["cpu_median_s"] / b,
                   "ns_per_output_voxel": 1e9 * t[f"views{b}"]["cpu_median_s"] / voxels,
                   "genesis_combined_ms_per_sample": 1e3 * t["genesis6"]["cpu_median_s"] / 6}
            rows.append(row)
            print(f"{name:6s} {dims}D batch {b:2d}: {ms:8.3f} ms/sample (floor {row['floor_ms_per_sample']:.3f}; "
                  f"Models Genesis combined {row['genesis_combined_ms_per_sample']:.3f}) views {outputs[b]}", flush=True)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    data = {"crop": list(CROP), "repeats": repeats, "torch": torch.__version__, "threads": 1,
            "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
            "load_average": [load_before, load_after], "rows": rows}
    write_report(out_dir, "method_views_contrastive", data, markdown(data, repeats))
    return data


def markdown(data: dict, repeats: int) -> str:
    lines = ["# Views of the contrastive methods: CPU cost per sample", "",
             f"Command: `python benchmarks/bench_method_views_contrastive.py --repeats {repeats}`", "",
             f"Sub-volumes {tuple(data['crop'])}, 1 CPU thread, torch {data['torch']}, {repeats} repeats; process CPU "
             "time per call / batch size, median (and best) of the repeats, in alternating blocks with the floor "
             "(one clone + one elementwise pass of the views) and the Models Genesis `combined` transform at "
             "batch 6 on the reference cubes. VoCo's input is the region of its default 4 x 4 grid "
             "(32, 256, 256); its views are 16 base crops and 4 random crops per sample. "
             f"Machine: {data['machine']}, 1-minute load average {data['load_average'][0]} at the start and "
             f"{data['load_average'][1]} at the end.", "",
             "| method | dims | batch | views per sample | ms/sample (median) | best | floor ms/sample | ns / output voxel | "
             "Models Genesis combined ms/sample |", "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["rows"]:
        shape = r["views_shape"]
        per = f"{shape[0] // r['batch']} x {tuple(shape[1:])}"
        lines.append(f"| {r['method']} | {r['dims']} | {r['batch']} | {per} | {r['ms_per_sample']:.3f} | "
                     f"{r['min_ms_per_sample']:.3f} | {r['floor_ms_per_sample']:.3f} | {r['ns_per_output_voxel']:.2f} | "
                     f"{r['genesis_combined_ms_per_sample']:.3f} |")
    lines += ["", "BYOL uses SimCLR's views (the same function): its cost is SimCLR's row."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    run(args.repeats, args.out)


if __name__ == "__main__":
    main()
