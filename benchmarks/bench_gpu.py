"""GPU check in one run (under 5 minutes on one GPU): transforms, AMP training steps, data-pipeline share.

On a CUDA machine this measures, and writes ``<out>/gpu.json`` and ``<out>/gpu.md``:

1. the ``combined`` Models Genesis transform on the device at batch 6, 32 and 128 of 64x64x32
   cubes (samples/s; target at least 5,000 samples/s);
2. a pretraining step (forward, MSE on the sigmoid, backward, SGD) of the width-32 U-Net under
   ``--precision auto`` (bf16 autocast where the GPU supports it, else fp16 with loss scaling) at
   batch 6 and 32: samples/s and peak allocated memory;
3. the real pipeline (memory-mapped cache of synthetic scans -> ``CubeDataset`` -> ``make_loader``
   with 0, 4 and 8 workers -> transform on the device -> step), exactly as the engine runs it:
   samples/s, the share of the step spent waiting for data (target at most 10%) and the slow-down
   against pre-made pairs.

Without a GPU it prints a message and exits 0 (nothing is written). Run::

    python benchmarks/bench_gpu.py                   # defaults fit in about 3 minutes on an H100/H200
    python benchmarks/bench_gpu.py --steps 10 --volumes 8
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
CROP = (32, 64, 64)  # (D, H, W): the Models Genesis 64x64x32 cube
TRANSFORM_BATCHES = (6, 32, 128)
STEP_BATCHES = (6, 32)
PIPELINE_WORKERS = (0, 4, 8)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_transform(batch: int, repeats: int, device: Any) -> dict[str, float]:
    """Samples/s of the ``combined`` transform on ``device`` (median of ``repeats`` timed calls)."""
    import proxy_tasks
    import torch

    task = proxy_tasks.TASKS.get("combined")()
    cubes = torch.rand((batch, 1, *CROP), device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    for _ in range(3):  # warm-up: kernels, caches
        task(cubes, generator=gen)
    _sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        pair = task(cubes, generator=gen)
        _ = pair.input  # some transforms are lazy: make sure the work is done
        _sync()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"batch": batch, "median_ms": median * 1e3, "samples_per_s": batch / median}


def build_step(width: int, device: Any) -> tuple[Callable[[Any, Any], float], str]:
    """A training step of the U-Net as the engine runs it (precision ``auto``)."""
    import torch

    from genesis.device import autocast, needs_grad_scaler, resolve_precision
    from genesis.models import unpack_output
    from genesis.training.pretrain import build_model

    model = build_model("unet3d", {"in_channels": 1, "out_channels": 1, "base_width": width}, seed=0).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device))
    precision = resolve_precision("auto", device)

    def step(x: Any, target: Any) -> None:
        with autocast(device):
            logits = unpack_output(model(x)).output
        loss = torch.mean((torch.sigmoid(logits.float()) - target) ** 2)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, precision


def time_steps(batch: int, steps: int, width: int, device: Any) -> dict[str, float]:
    """Samples/s and peak memory of training steps on pre-made pairs (compute only)."""
    import proxy_tasks
    import torch

    step, precision = build_step(width, device)
    task = proxy_tasks.TASKS.get("combined")()
    gen = torch.Generator(device=device)
    gen.manual_seed(1)
    pair = task(torch.rand((batch, 1, *CROP), device=device), generator=gen)
    x, target = pair.input.contiguous(), pair.target.contiguous()
    for _ in range(3):
        step(x, target)
    _sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, target)
    _sync()
    seconds = time.perf_counter() - start
    return {"batch": batch, "precision": precision, "step_ms": seconds / steps * 1e3,
            "samples_per_s": batch * steps / seconds,
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")}


def time_pipeline(batch: int, steps: int, width: int, workers: int, source: Any, device: Any,
                  compute_step_ms: float) -> dict[str, float]:
    """The engine's path: loader (``workers``) -> device -> transform -> step; data wait share."""
    import proxy_tasks
    import torch

    from genesis.data.datasets import CubeDataset, make_loader
    from genesis.data.sampler import SamplerConfig

    step, _ = build_step(width, device)
    task = proxy_tasks.TASKS.get("combined")()
    warmup = 3
    ds = CubeDataset(source, SamplerConfig.models_genesis(crop=CROP), cubes_per_epoch=batch * (steps + warmup), seed=0)
    loader = make_loader(ds, batch, epoch=0, workers=workers, pin_memory=device.type == "cuda")
    it = iter(loader)
    start_first = time.perf_counter()
    first = next(it)
    first_batch_s = time.perf_counter() - start_first
    gen = torch.Generator(device=device)
    gen.manual_seed(2)
    cubes = first
    wait = 0.0
    for i in range(steps + warmup - 1):
        if i == warmup - 1:
            _sync()
            wait, start = 0.0, time.perf_counter()
        pair = task(cubes.to(device, non_blocking=True), generator=gen)
        step(pair.input, pair.target)
        t = time.perf_counter()
        cubes = next(it)
        wait += time.perf_counter() - t
    _sync()
    seconds = time.perf_counter() - start
    timed = steps
    step_ms = seconds / timed * 1e3
    return {"workers": workers, "batch": batch, "samples_per_s": batch * timed / seconds, "step_ms": step_ms,
            "data_wait_fraction": wait / seconds, "slowdown_vs_compute": 1 - compute_step_ms / step_ms,
            "first_batch_s": first_batch_s}


def synthetic_source(volumes: int, workdir: Path) -> Any:
    """``volumes`` default synthetic chest CTs, prepared into a memory-mapped cache in parallel."""
    from genesis.data.prepare import prepare_source
    from genesis.data.sources import SyntheticVolumeSource

    source = SyntheticVolumeSource(volumes, seed=0, cache_dir=workdir / "cache")
    prepare_source(source, workers=min(volumes, os.cpu_count() or 1), progress=False)
    return source


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# GPU check",
        "",
        f"{report['date']} on {m['gpu']} ({m['cpus']} CPUs), torch {m['torch']}; total {report['total_s']:.0f} s.",
        f"Command: `{report['command']}`",
        "",
        "## Combined transform on the device (64x64x32 cubes; target >= 5,000 samples/s)",
        "",
        "| Batch | Median per call | Samples/s |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {r['batch']} | {r['median_ms']:.2f} ms | {r['samples_per_s']:.0f} |" for r in report["transform"]]
    lines += ["", f"## Training step, width-{report['width']} U-Net, precision auto (pre-made pairs)", "",
              "| Batch | Precision | Step | Samples/s | Peak memory |", "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['precision']} | {r['step_ms']:.1f} ms | {r['samples_per_s']:.0f} | "
              f"{r['peak_memory_gb']:.2f} GiB |" for r in report["steps"]]
    lines += ["", f"## Full pipeline at batch {report['pipeline_batch']} ({report['volumes']} synthetic scans, "
              "memory-mapped cache; target: data wait <= 10% of the step)", "",
              "| Workers | Samples/s | Step | Data wait share | Slow-down vs pre-made pairs | First batch |",
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['workers']} | {r['samples_per_s']:.0f} | {r['step_ms']:.1f} ms | {r['data_wait_fraction']:.1%} | "
              f"{r['slowdown_vs_compute']:.1%} | {r['first_batch_s']:.2f} s |" for r in report["pipeline"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu.json / gpu.md")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--repeats", type=int, default=20, help="timed transform calls per batch size")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--volumes", type=int, default=16, help="synthetic scans for the pipeline measurement")
    p.add_argument("--pipeline-batch", type=int, default=6)
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # "cpu": smoke test of the code only
    args = p.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device available; skipped (nothing measured, nothing written)")
        return 0
    from genesis.fileio import write_report

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "gpu",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke test)", "cpus": os.cpu_count(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "width": args.width, "pipeline_batch": args.pipeline_batch, "volumes": args.volumes,
    }
    report["transform"] = []
    for batch in TRANSFORM_BATCHES:
        report["transform"].append(time_transform(batch, args.repeats, device))
        print(f"transform batch {batch}: {report['transform'][-1]['samples_per_s']:.0f} samples/s", flush=True)
    report["steps"] = []
    for batch in STEP_BATCHES:
        report["steps"].append(time_steps(batch, args.steps, args.width, device))
        r = report["steps"][-1]
        print(f"step batch {batch} ({r['precision']}): {r['samples_per_s']:.0f} samples/s, "
              f"{r['peak_memory_gb']:.2f} GiB", flush=True)
    compute = time_steps(args.pipeline_batch, args.steps, args.width, device)["step_ms"]
    report["pipeline"] = []
    with tempfile.TemporaryDirectory(prefix="genesis-bench-gpu-") as tmp:
        source = synthetic_source(args.volumes, Path(tmp))
        print(f"prepared {args.volumes} synthetic scans", flush=True)
        for workers in PIPELINE_WORKERS:
            r = time_pipeline(args.pipeline_batch, args.steps, args.width, workers, source, device, compute)
            report["pipeline"].append(r)
            print(f"pipeline workers={workers}: {r['samples_per_s']:.0f} samples/s, data wait "
                  f"{r['data_wait_fraction']:.1%}", flush=True)
    report["total_s"] = time.perf_counter() - started
    write_report(args.out, "gpu", report, markdown(report))
    print(markdown(report))
    print(f"wrote {args.out / 'gpu.json'} and {args.out / 'gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
