"""Speed of the Models Genesis transforms: ours (batched torch) against the reference loops.

Batches of 6 sub-volumes (1, 32, 64, 64) -- the reference batch size and cube -- on one CPU thread
(``torch.set_num_threads(1)``), each transform forced on (``prob=1``) and the combined scheme with
the reference probabilities. The reference is the numpy port of the published per-sample loops in
``benchmarks/_reference_genesis.py``, timed in the same run. On a GPU (when there is one) we report
samples per second. Our pairs compute ``pair.mask`` (changed voxels, which the reference does not
produce) on first read; ``combined+mask`` times the combined scheme with the mask read as well.

Run: ``python benchmarks/bench_proxy_transforms.py [--repeats 15] [--out benchmarks/results]``.
Writes ``proxy_transforms.json`` and ``proxy_transforms.md``.
"""

from __future__ import annotations

import argparse
import json
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
from genesis.fileio import atomic_write_text

BATCH = 6
SHAPE = (32, 64, 64)
TRANSFORMS = ("local_shuffle", "nonlinear", "inner_cutout", "outer_cutout", "combined", "combined+mask")


def cube_batch(seed: int = 0) -> np.ndarray:
    """A smooth random batch in [0, 1] (the transforms' cost does not depend on the content)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    vol = gaussian_filter(rng.random((BATCH, 1, *SHAPE)), sigma=(0, 0, 2, 2, 2))
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    return vol.astype(np.float32)


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    sync()
    return time.perf_counter() - w0, time.thread_time() - c0


def measure(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median and min wall-clock and thread-CPU seconds of ``fn`` over ``repeats`` runs (after one warm-up)."""
    return measure_pair({"x": fn}, repeats, sync)["x"]


def measure_pair(
    fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None, rounds: int = 3
) -> dict[str, dict[str, float]]:
    """Time several functions in alternating blocks: ``rounds`` times, each function runs
    ``repeats // rounds`` times back to back (as in a training loop, so its caches are warm), then
    the next function. Alternating blocks lets all functions share the machine's changing load, so
    the medians and minima stay comparable on a busy machine."""
    for fn in fns.values():
        fn()
        sync()
    block = max(1, repeats // rounds)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            fn()  # warm-up of the block
            sync()
            for _ in range(block):
                times[k].append(_timed(fn, sync))
    out = {}
    for k, ts in times.items():
        wall, cpu = [t[0] for t in ts], [t[1] for t in ts]
        out[k] = {
            "wall_median_s": statistics.median(wall),
            "wall_min_s": min(wall),
            "cpu_median_s": statistics.median(cpu),
            "cpu_min_s": min(cpu),
        }
    return out


def reference_fn(name: str, batch: np.ndarray, seed: int) -> Callable[[], object]:
    rng, nprng = random.Random(seed), np.random.RandomState(seed)
    b64 = batch.astype(np.float64)  # the reference works on float64 cubes

    def per_sample(transform: Callable[[np.ndarray], np.ndarray]) -> Callable[[], object]:
        return lambda: [transform(b64[i].copy()) for i in range(BATCH)]

    if name == "local_shuffle":
        return per_sample(lambda x: ref.local_shuffle(x, rng, nprng, prob=1.0))
    if name == "nonlinear":
        return per_sample(lambda x: ref.nonlinear(x, rng, prob=1.0))
    if name == "inner_cutout":
        return per_sample(lambda x: ref.inner_cutout(x, rng, nprng))
    if name == "outer_cutout":
        return per_sample(lambda x: ref.outer_cutout(x, rng, nprng))
    return lambda: ref.combined(b64, rng, nprng)


def ours_fn(name: str, batch: torch.Tensor, seed: int) -> Callable[[], object]:
    """Our transform; ``combined+mask`` also reads ``pair.mask`` (computed on first read)."""
    with_mask = name.endswith("+mask")
    name = name.removesuffix("+mask")
    task = proxy_tasks.build(name) if name == "combined" else proxy_tasks.build(name, prob=1.0)
    gen = torch.Generator(device=batch.device)
    gen.manual_seed(seed)
    if with_mask:
        return lambda: task(batch, generator=gen).mask
    return lambda: task(batch, generator=gen)


def run(repeats: int, out_dir: Path) -> dict:
    torch.set_num_threads(1)
    batch_np = cube_batch()
    batch = torch.from_numpy(batch_np)
    rows = {}
    for name in TRANSFORMS:
        t = measure_pair({"ref": reference_fn(name, batch_np, 1), "ours": ours_fn(name, batch, 1)}, repeats)
        r, o = t["ref"], t["ours"]
        rows[name] = {
            "reference_ms_per_sample": 1e3 * r["cpu_median_s"] / BATCH,
            "ours_ms_per_sample": 1e3 * o["cpu_median_s"] / BATCH,
            "speedup": r["cpu_median_s"] / o["cpu_median_s"],
            "reference_min_ms_per_sample": 1e3 * r["cpu_min_s"] / BATCH,
            "ours_min_ms_per_sample": 1e3 * o["cpu_min_s"] / BATCH,
            "speedup_min": r["cpu_min_s"] / o["cpu_min_s"],
            "reference_wall_ms_per_sample": 1e3 * r["wall_median_s"] / BATCH,
            "ours_wall_ms_per_sample": 1e3 * o["wall_median_s"] / BATCH,
            "speedup_wall": r["wall_median_s"] / o["wall_median_s"],
        }
        print(
            f"{name:14s} reference {rows[name]['reference_ms_per_sample']:8.2f} ms/sample   "
            f"ours {rows[name]['ours_ms_per_sample']:6.2f} ms/sample   speed-up {rows[name]['speedup']:6.1f}x "
            f"(best-of-{repeats} {rows[name]['speedup_min']:.1f}x, wall {rows[name]['speedup_wall']:.1f}x)",
            flush=True,
        )
    gpu = {}
    if torch.cuda.is_available():
        cuda_batch = batch.cuda()
        for name in TRANSFORMS:
            g = measure(ours_fn(name, cuda_batch, 1), repeats, sync=torch.cuda.synchronize)
            gpu[name] = {"samples_per_s": BATCH / g["wall_median_s"], "ms_per_batch": 1e3 * g["wall_median_s"]}
            print(f"{name:14s} GPU {gpu[name]['samples_per_s']:10.0f} samples/s", flush=True)
    result = {
        "benchmark": "Models Genesis transforms, batched torch vs reference loops",
        "batch": BATCH,
        "cube_dhw": list(SHAPE),
        "threads": torch.get_num_threads(),
        "timing": "thread CPU time (time.thread_time) per batch / batch size; reference and ours run in "
        "alternating blocks (3 rounds, each a warm-up plus repeats/3 back-to-back runs); median (and best) "
        "of the repeats; wall-clock also given",
        "repeats": repeats,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "cpu": rows,
        "gpu": gpu or None,
        "gpu_device": torch.cuda.get_device_name(0) if gpu else None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "proxy_transforms.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / "proxy_transforms.md", to_markdown(result))
    return result


def to_markdown(result: dict) -> str:
    lines = [
        "# Models Genesis transforms: batched torch vs reference loops",
        "",
        (
            f"Batch {result['batch']} x (1, {', '.join(map(str, result['cube_dhw']))}), {result['threads']} CPU thread, "
            f"torch {result['torch']}, {result['repeats']} repeats; {result['timing']}."
        ),
        (
            f"Command: `python benchmarks/bench_proxy_transforms.py --repeats {result['repeats']}`. "
            "`combined+mask` also reads `pair.mask` (computed on first read; the reference makes no mask)."
        ),
        "",
        "| transform | reference ms/sample | ours ms/sample | speed-up (median CPU) | speed-up (best CPU) | speed-up (median wall) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in result["cpu"].items():
        lines.append(
            f"| {name} | {row['reference_ms_per_sample']:.2f} | {row['ours_ms_per_sample']:.2f} | "
            f"{row['speedup']:.1f}x | {row['speedup_min']:.1f}x | {row['speedup_wall']:.1f}x |"
        )
    if result["gpu"]:
        lines += ["", f"GPU ({result['gpu_device']}):", "", "| transform | samples/s |", "| --- | ---: |"]
        lines += [f"| {k} | {v['samples_per_s']:.0f} |" for k, v in result["gpu"].items()]
    else:
        lines += ["", "GPU: not available on the machine that ran this benchmark."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    run(args.repeats, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
