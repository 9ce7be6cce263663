"""Pretraining throughput: how much of a training step the data pipeline costs.

Three ways to feed the same network the same kind of batches, timed per optimizer step:

* ``compute``: pre-made proxy pairs already in memory (forward, loss, backward, SGD step only);
* ``compute+transforms``: pre-loaded cubes, proxy transform applied per step on the training
  device (what the engine does);
* ``pipeline (workers=N)``: the real path — ``CubeDataset`` + ``make_loader`` + proxy transform,
  exactly as ``genesis.training.engine`` runs it.

The pipeline overhead is ``1 - samples_per_s(pipeline) / samples_per_s(compute)``; the target is
at most 10%. Memory per batch: ``torch.cuda.max_memory_allocated`` on GPU, the peak RSS growth
on CPU. Writes ``benchmarks/results/pretrain.{json,md}``.

    python benchmarks/bench_pretrain.py            # CPU: width 4, crop 32x64x64, batch 4, 1 thread
    python benchmarks/bench_pretrain.py --device cuda --width 32 --batch-size 6
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from genesis.config import load_config
from genesis.device import autocast, resolve_device
from genesis.fileio import write_report
from genesis.training.config import PretrainConfig
from genesis.training.engine import make_generator, step_seed
from genesis.training.recipe import resolve_recipe
from genesis.training.rundata import SubsetSource, sampler_config

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--task", default="combined")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--crop", type=int, nargs=3, default=(32, 64, 64))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--volumes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (median reported)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (CPU default 1: steadier on shared machines)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    if args.threads or not gpu:
        torch.set_num_threads(args.threads or 1)
    width = args.width or (32 if gpu else 4)
    batch = args.batch_size or (6 if gpu else 4)
    steps = args.steps or (50 if gpu else 6)
    cfg = load_config(PretrainConfig, None, {
        "task": args.task, "width": width, "batch_size": batch, "data.crop": tuple(args.crop),
        "data.synthetic_volumes": args.volumes, "device": str(device), "seed": 0,
    })
    run = resolve_recipe(cfg)  # the run's recipe: method, network, data (as genesis-pretrain resolves it)
    cfg, method, model_name = run.config, run.method, run.recipe.model_name
    from genesis.training.pretrain import build_method_model

    model = build_method_model(run).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)  # small lr: timing only, no divergence

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device)

    def train_step(pair) -> None:
        with autocast(device, cfg.amp):
            out = method.forward(model, pair)
        loss, _ = method.loss(out, pair)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    from genesis.data.datasets import CubeDataset, make_loader

    t0 = time.perf_counter()
    source = SubsetSource(run.source, list(range(args.volumes)))
    ds = CubeDataset(source, sampler_config(cfg), (steps + args.warmup) * batch, 0, lru_volumes=args.volumes)
    # (forked DataLoader workers inherit these loaded volumes, as in the engine)
    for i in range(args.volumes):
        ds.volume(i)
    load_s = time.perf_counter() - t0
    cubes = [torch.stack([ds[k] for k in range(j * batch, (j + 1) * batch)]).to(device)
             for j in range(steps + args.warmup)]
    pairs = [method.views(c, make_generator(step_seed(0, 0, 0, j), device), cfg.dims)
             for j, c in enumerate(cubes)]

    results: dict[str, dict[str, float]] = {}

    def timed(name: str, batches) -> None:
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        rss0 = rss_mb()
        it = iter(batches)
        for _ in range(args.warmup):
            train_step(next(it))
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            train_step(next(it))
        sync()
        seconds = time.perf_counter() - start
        entry = results.setdefault(name, {"rounds_ms_per_step": []})
        entry["rounds_ms_per_step"].append(1000 * seconds / steps)
        if gpu:
            entry["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            entry["peak_rss_mb"] = rss_mb()
            entry["peak_rss_growth_mb"] = max(entry.get("peak_rss_growth_mb", 0.0), rss_mb() - rss0)
        print(f"{name:>28}: {1000 * seconds / steps:8.1f} ms/step", flush=True)

    def transformed():
        for j, c in enumerate(cubes):
            yield method.views(c, make_generator(step_seed(0, 0, 1, j), device), cfg.dims)

    def pipeline(workers: int):
        loader = make_loader(ds, batch, 0, workers, 0, 1, 0, pin_memory=gpu)
        for j, c in enumerate(loader):
            c = c.to(device, non_blocking=True)
            yield method.views(c, make_generator(step_seed(0, 0, 2, j), device), cfg.dims)

    # modes interleaved over rounds, medians reported: the machine may be shared
    for _ in range(args.rounds):
        timed("compute", iter(pairs))
        timed("compute+transforms", transformed())
        for workers in args.workers:
            timed(f"pipeline (workers={workers})", pipeline(workers))
    for entry in results.values():
        ms = statistics.median(entry["rounds_ms_per_step"])
        entry["ms_per_step"] = ms
        entry["samples_per_s"] = 1000 * batch / ms

    base = results["compute"]["samples_per_s"]
    for name, entry in results.items():
        entry["overhead_vs_compute"] = 1.0 - entry["samples_per_s"] / base
    report = {
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({platform.processor() or platform.machine()}, "
                                                                  f"{torch.get_num_threads()} threads)",
        "task": args.task, "model": model_name, "width": width, "crop": list(args.crop), "batch_size": batch,
        "timed_steps": steps, "volume_load_s": load_s, "torch": torch.__version__, "results": results,
    }
    lines = [
        "# Pretraining throughput",
        "",
        f"`python benchmarks/bench_pretrain.py` on {report['device']}; task `{args.task}`, {model_name} width {width}, "
        f"crop {tuple(args.crop)}, batch {batch}; median of {args.rounds} interleaved rounds of {steps} timed steps "
        f"(after {args.warmup} warm-up steps each).",
        "",
        "| mode | samples/s | ms/step | overhead vs compute | memory (MB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, e in results.items():
        mem = e.get("max_memory_allocated_mb", e.get("peak_rss_mb", float("nan")))
        lines.append(f"| {name} | {e['samples_per_s']:.2f} | {e['ms_per_step']:.1f} | "
                     f"{100 * e['overhead_vs_compute']:.1f}% | {mem:.0f} |")
    lines += ["", "Memory: `torch.cuda.max_memory_allocated` on GPU; peak process RSS on CPU."]
    if not gpu:
        lines += ["", "No CUDA device in this run; on a GPU: `python benchmarks/bench_pretrain.py --device cuda` "
                  "(width 32, batch 6, transforms on the GPU)."]
    lines.append("")
    write_report(args.out, "pretrain", report, "\n".join(lines))
    print(f"wrote {args.out / 'pretrain.json'} and {args.out / 'pretrain.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
