"""Speed of the Models Genesis transforms: ours (batched torch, compiled CPU loops) against the reference loops.

Batches of sub-volumes (1, 32, 64, 64) -- the reference cube -- on one CPU thread
(``torch.set_num_threads(1)``), each transform forced on (``prob=1``) and the combined scheme with
the reference probabilities. Three measurements, side by side in one run, in process CPU time
(``time.process_time``: the machine may be busy):

1. **ratio**: batch 6 (the reference batch size), ours against the numpy port of the published
   per-sample loops in ``benchmarks/_reference_genesis.py``, in alternating blocks so that both
   share the machine's load;
2. **linearity**: our CPU time per sample at batch 1, 6 and 32 (a fixed per-call cost shows as a
   higher per-sample cost at batch 1);
3. **memory floor**: one clone plus one elementwise pass of the same batch (what any transform that
   returns a new tensor must at least do), at batch 1, 6 and 32.

Our pairs compute ``pair.mask`` (changed voxels, which the reference does not produce) on first
read; ``combined+mask`` times the combined scheme with the mask read as well. With a GPU, samples
per second on the device are reported too (batch 6 and 32).

Run: ``python benchmarks/bench_proxy_transforms.py [--repeats 12] [--out benchmarks/results]``.
Writes ``proxy_transforms.json`` and ``proxy_transforms.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _reference_genesis as ref

import proxy_tasks
from genesis.fileio import write_report

BATCH = 6
BATCHES = (1, 6, 32)
SHAPE = (32, 64, 64)
TRANSFORMS = ("local_shuffle", "nonlinear", "inner_cutout", "outer_cutout", "combined", "combined+mask")
NO_KERNELS = ("inner_cutout",)  # no compiled CPU loop: nothing to compare against its torch ops


def cube_batch(batch: int, seed: int = 0) -> np.ndarray:
    """A smooth random batch in [0, 1] (the transforms' cost does not depend on the content)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    vol = gaussian_filter(rng.random((batch, 1, *SHAPE)), sigma=(0, 0, 2, 2, 2))
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    return vol.astype(np.float32)


def measure_blocks(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None, rounds: int = 3
) -> dict[str, dict[str, float]]:
    """Median and min process-CPU and wall seconds of each function over ``repeats`` runs.

    ``rounds`` times, each function runs a warm-up and then ``repeats // rounds`` times back to
    back (as in a training loop, so its caches are warm), then the next function: all functions
    share the machine's changing load, so their medians stay comparable on a busy machine.
    """
    block = max(1, repeats // rounds)
    times: dict[str, list[tuple[float, float, int]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            fn()
            sync()
            for _ in range(block):
                f0 = minor_faults()
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                sync()
                times[key].append((time.perf_counter() - w0, time.process_time() - c0, minor_faults() - f0))
    out = {}
    for key, ts in times.items():
        wall, cpu = [t[0] for t in ts], [t[1] for t in ts]
        out[key] = {
            "cpu_median_s": statistics.median(cpu),
            "cpu_min_s": min(cpu),
            "wall_median_s": statistics.median(wall),
            "minor_faults_median": statistics.median(t[2] for t in ts),
        }
    return out


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where ``resource`` is missing): fresh output
    memory is faulted in page by page, which dominates at large batches without allocator tuning."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def reference_fn(name: str, batch: np.ndarray, seed: int) -> Callable[[], object]:
    rng, nprng = random.Random(seed), np.random.RandomState(seed)
    b64 = batch.astype(np.float64)  # the reference works on float64 cubes

    def per_sample(transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[], object]:
        return lambda: [transform(b64[i].copy()) for i in range(len(b64))]

    name = name.removesuffix("+mask")
    if name == "local_shuffle":
        return per_sample(lambda x: ref.local_shuffle(x, rng, nprng, prob=1.0))
    if name == "nonlinear":
        return per_sample(lambda x: ref.nonlinear(x, rng, prob=1.0))
    if name == "inner_cutout":
        return per_sample(lambda x: ref.inner_cutout(x, rng, nprng))
    if name == "outer_cutout":
        return per_sample(lambda x: ref.outer_cutout(x, rng, nprng))
    return lambda: ref.combined(b64, rng, nprng)


def ours_fn(name: str, batch: torch.Tensor, seed: int, use_kernels: bool = True) -> Callable[[], object]:
    """Our transform; ``combined+mask`` also reads ``pair.mask`` (computed on first read).
    ``use_kernels=False``: the torch ops instead of the compiled CPU loops (same draws)."""
    with_mask = name.endswith("+mask")
    name = name.removesuffix("+mask")
    options = {} if name in NO_KERNELS else {"use_kernels": use_kernels}
    task = proxy_tasks.build(name, **options) if name == "combined" else proxy_tasks.build(name, prob=1.0, **options)
    gen = torch.Generator(device=batch.device)
    gen.manual_seed(seed)
    if with_mask:
        return lambda: task(batch, generator=gen).mask
    return lambda: task(batch, generator=gen)


def floor_fn(batch: torch.Tensor) -> Callable[[], object]:
    """The memory floor: one clone and one elementwise pass of the batch."""
    return lambda: batch.clone().mul_(1.0)


def run(repeats: int, out_dir: Path, skip_reference: bool = False) -> dict:
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    batches = {b: torch.from_numpy(cube_batch(b)) for b in BATCHES}
    # 1. ratio against the reference at batch 6 (the floor runs in the same blocks)
    ratio = {}
    for name in TRANSFORMS:
        fns = {"ours": ours_fn(name, batches[BATCH], 1), "floor": floor_fn(batches[BATCH])}
        if name.removesuffix("+mask") not in NO_KERNELS:
            fns["torch"] = ours_fn(name, batches[BATCH], 1, use_kernels=False)
        if not skip_reference:
            fns["ref"] = reference_fn(name, batches[BATCH].numpy(), 1)
        t = measure_blocks(fns, repeats)
        o, f = t["ours"], t["floor"]
        row = {
            "ours_ms_per_sample": 1e3 * o["cpu_median_s"] / BATCH,
            "ours_min_ms_per_sample": 1e3 * o["cpu_min_s"] / BATCH,
            "floor_ms_per_sample": 1e3 * f["cpu_median_s"] / BATCH,
            "x_floor": o["cpu_median_s"] / f["cpu_median_s"],
        }
        if "torch" in t:
            row.update(
                torch_ops_ms_per_sample=1e3 * t["torch"]["cpu_median_s"] / BATCH,
                loops_vs_torch_ops=t["torch"]["cpu_median_s"] / o["cpu_median_s"],
            )
        if "ref" in t:
            r = t["ref"]
            row.update(
                reference_ms_per_sample=1e3 * r["cpu_median_s"] / BATCH,
                speedup=r["cpu_median_s"] / o["cpu_median_s"],
                speedup_min=r["cpu_min_s"] / o["cpu_min_s"],
                speedup_wall=r["wall_median_s"] / o["wall_median_s"],
            )
        ratio[name] = row
        print(
            f"{name:14s} ours {row['ours_ms_per_sample']:6.3f} ms/sample  "
            + (f"reference {row['reference_ms_per_sample']:8.2f}  speed-up {row['speedup']:6.1f}x  " if "ref" in t else "")
            + f"floor {row['floor_ms_per_sample']:.3f} ({row['x_floor']:.0f}x floor)"
            + (f"  torch ops {row['torch_ops_ms_per_sample']:.3f} (loops x{row['loops_vs_torch_ops']:.2f})" if "torch" in t else ""),
            flush=True,
        )
    # 2. + 3. per-sample cost at batch 1 / 6 / 32 against the floor, measured side by side
    linearity = {}
    for name in TRANSFORMS[:-1]:
        fns = {}
        for b in BATCHES:
            fns[f"ours{b}"] = ours_fn(name, batches[b], 2)
            fns[f"floor{b}"] = floor_fn(batches[b])
        t = measure_blocks(fns, max(3, repeats // 2))
        linearity[name] = {
            str(b): {
                "ours_ms_per_sample": 1e3 * t[f"ours{b}"]["cpu_median_s"] / b,
                "floor_ms_per_sample": 1e3 * t[f"floor{b}"]["cpu_median_s"] / b,
                "ours_minor_faults_per_call": t[f"ours{b}"]["minor_faults_median"],
            }
            for b in BATCHES
        }
        print(
            f"{name:14s} ms/sample at batch " + ", ".join(
                f"{b}: {linearity[name][str(b)]['ours_ms_per_sample']:.3f} (floor {linearity[name][str(b)]['floor_ms_per_sample']:.3f})"
                for b in BATCHES
            ),
            flush=True,
        )
    gpu = {}
    if torch.cuda.is_available():
        for b in (6, 32):
            cuda_batch = batches[b].cuda()
            for name in TRANSFORMS:
                g = measure_blocks({"x": ours_fn(name, cuda_batch, 1)}, repeats, sync=torch.cuda.synchronize)["x"]
                gpu[f"{name}@{b}"] = {"samples_per_s": b / g["wall_median_s"], "ms_per_batch": 1e3 * g["wall_median_s"]}
                print(f"{name:14s} GPU batch {b}: {gpu[f'{name}@{b}']['samples_per_s']:10.0f} samples/s", flush=True)
    result = {
        "benchmark": "Models Genesis transforms, ours (batched torch, compiled CPU loops) vs reference loops",
        "command": "python benchmarks/bench_proxy_transforms.py --repeats " + str(repeats)
        + (" --skip-reference" if skip_reference else ""),
        "batch": BATCH,
        "batches": list(BATCHES),
        "cube_dhw": list(SHAPE),
        "threads": torch.get_num_threads(),
        "timing": "process CPU time (time.process_time) per batch / batch size, median of the repeats; "
        "functions compared run in alternating blocks (3 rounds, each a warm-up plus repeats/3 runs)",
        "floor": "one clone + one elementwise pass (x.clone().mul_(1.0)) of the same batch",
        "repeats": repeats,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "malloc_env": {k: os.environ[k] for k in sorted(os.environ) if k.startswith("MALLOC_") or k == "LD_PRELOAD"},
        "cpu": ratio,
        "linearity": linearity,
        "gpu": gpu or None,
        "gpu_device": torch.cuda.get_device_name(0) if gpu else None,
    }
    write_report(out_dir, "proxy_transforms", result, to_markdown(result))
    return result


def _fmt(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def to_markdown(result: dict) -> str:
    lines = [
        "# Models Genesis transforms: ours vs reference loops",
        "",
        f"Command: `{result['command']}`",
        "",
        (
            f"Cubes (1, {', '.join(map(str, result['cube_dhw']))}), {result['threads']} CPU thread, torch "
            f"{result['torch']}, {result['repeats']} repeats; {result['timing']}. Floor: {result['floor']}. "
            "`combined+mask` also reads `pair.mask` (computed on first read; the reference makes no mask)."
        ),
        "",
        (
            f"Machine: {result['cpu_count']} CPU cores, 1-minute load average {_fmt(result['load_average_1min'][0])} at "
            f"the start and {_fmt(result['load_average_1min'][1])} at the end of the run"
            + ("; other jobs share the cores and their memory bandwidth, so ratios are lower than on a quiet machine."
               if max(result["load_average_1min"]) > 1.5 else ". `combined` draws which transforms each sample gets, "
               "so its per-call cost varies from call to call: runs of this script vary by about 20% for it.")
        ),
        "",
        f"## Against the reference loops (batch {result['batch']})",
        "",
        "`ours` is the default: compiled CPU loops where a transform has them (`_cpu_kernels`, numba); "
        "`torch ops` is the same transform with `use_kernels=False` (the same draws, the path a GPU takes), "
        "timed in the same blocks.",
        "",
        "| transform | reference ms/sample | ours ms/sample | speed-up (median CPU) | speed-up (best CPU) | speed-up (median wall) | floor ms/sample | ours / floor | torch ops ms/sample | loops vs torch ops |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in result["cpu"].items():
        torch_ops = (
            f"{row['torch_ops_ms_per_sample']:.3f} | {row['loops_vs_torch_ops']:.2f}x"
            if "torch_ops_ms_per_sample" in row else "- | -"
        )
        if "speedup" in row:
            lines.append(
                f"| {name} | {row['reference_ms_per_sample']:.2f} | {row['ours_ms_per_sample']:.3f} | "
                f"{row['speedup']:.1f}x | {row['speedup_min']:.1f}x | {row['speedup_wall']:.1f}x | "
                f"{row['floor_ms_per_sample']:.3f} | {row['x_floor']:.0f}x | {torch_ops} |"
            )
        else:
            lines.append(
                f"| {name} | - | {row['ours_ms_per_sample']:.3f} | - | - | - | {row['floor_ms_per_sample']:.3f} | "
                f"{row['x_floor']:.0f}x | {torch_ops} |"
            )
    batches = result["batches"]
    lines += [
        "",
        "## Per-sample cost against the batch size (ms/sample; floor in brackets)",
        "",
        "| transform | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- | " + " | ".join("---:" for _ in batches) + " |",
    ]
    for name, row in result["linearity"].items():
        cells = [f"{row[str(b)]['ours_ms_per_sample']:.3f} ({row[str(b)]['floor_ms_per_sample']:.3f})" for b in batches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    malloc = ", ".join(f"{k}={v}" for k, v in result.get("malloc_env", {}).items()) or "glibc defaults"
    lines += [
        "",
        f"Minor page faults per call (median; allocator: {malloc}). Each call returns fresh tensors, "
        "and memory the allocator hands back to the kernel is faulted in again page by page; the "
        "README's glibc thresholds keep it in the heap.",
        "",
        "| transform | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "| --- | " + " | ".join("---:" for _ in batches) + " |",
    ]
    for name, row in result["linearity"].items():
        lines.append(f"| {name} | " + " | ".join(f"{row[str(b)].get('ours_minor_faults_per_call', 0):.0f}" for b in batches) + " |")
    if result["gpu"]:
        lines += ["", f"GPU ({result['gpu_device']}):", "", "| transform@batch | samples/s |", "| --- | ---: |"]
        lines += [f"| {k} | {v['samples_per_s']:.0f} |" for k, v in result["gpu"].items()]
    else:
        lines += ["", "GPU: not available on the machine that ran this benchmark."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--skip-reference", action="store_true", help="only our transforms and the floor (fast)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    run(args.repeats, args.out, args.skip_reference)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
