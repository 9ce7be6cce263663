"""Loader workers on memory-mapped scans: workers that send cubes vs workers that send positions.

``make_loader`` with workers and a memory-mapped source (the default cache) lets the workers draw
where each cube is (the sampler's random draws and acceptance look-ups) and send 4 integers; the
training process copies the cubes from the shared memory maps. The alternative, a plain
``DataLoader`` over the ``CubeDataset``, sends each cube through shared memory. Both are timed
side by side in interleaved rounds (wall-clock cubes/s over one epoch, worker start-up included),
with the in-process loader (workers 0) as the reference.

Synthetic scans of 64x128x128 in a fresh cache, the Models Genesis sampler and cube (32x64x64),
batch 8. Written to ``<out>/loader_workers.json`` / ``.md``.

Run::

    python benchmarks/bench_loader_workers.py [--rounds 4] [--cubes 512] [--volumes 8]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

from torch.utils.data import DataLoader

from genesis.data import CubeDataset, SamplerConfig, make_loader
from genesis.data.datasets import KeySampler, collate_cubes, epoch_keys
from genesis.data.prepare import prepare_source
from genesis.data.sources import SyntheticVolumeSource
from genesis.data.synthetic import SyntheticConfig
from genesis.errors import GenesisWarning
from genesis.fileio import write_report

SHAPE = (64, 128, 128)
BATCH = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cubes", type=int, default=512)
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", GenesisWarning)
    base = SyntheticConfig()
    cfg = replace(base, shape=SHAPE, spacing=tuple(s * b / k for s, b, k in zip(base.spacing, base.shape, SHAPE)))
    cache = Path(tempfile.mkdtemp(prefix="genesis-bench-workers-"))
    source = SyntheticVolumeSource(args.volumes, 0, synthetic_cfg=cfg, cache_dir=cache)
    sampler = SamplerConfig.models_genesis()
    prepare_source(source, progress=False, sampler=sampler)
    ds = CubeDataset(source, sampler, cubes_per_epoch=args.cubes, seed=0)
    ds.open_all()  # maps opened once, as the first epoch of a run does

    def cubes_from_workers(epoch: int, workers: int):
        return DataLoader(ds, batch_size=BATCH, sampler=KeySampler(epoch_keys(len(ds), epoch)), num_workers=workers,
                          drop_last=True, collate_fn=collate_cubes)

    variants = {
        "in process (workers 0)": (lambda e, w: make_loader(ds, BATCH, e, 0), (0,)),
        "workers send cubes": (cubes_from_workers, (1, 2, 4)),
        "workers send positions (make_loader)": (lambda e, w: make_loader(ds, BATCH, e, w), (1, 2, 4)),
    }
    rates: dict[str, list[float]] = {}
    for r in range(args.rounds):  # interleaved: every variant sees the same machine load
        for name, (build, counts) in variants.items():
            for workers in counts:
                start = time.perf_counter()
                n = sum(batch.shape[0] for batch in build(r, workers))
                rates.setdefault(f"{name}, {workers}", []).append(n / (time.perf_counter() - start))
        print(f"round {r + 1} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "benchmark": "loader_workers",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/bench_loader_workers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"shape": SHAPE, "crop": sampler.crop, "batch": BATCH, "cubes": args.cubes,
                     "volumes": args.volumes, "rounds": args.rounds},
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_at_start": os.getloadavg()[0],
        "cubes_per_s_median": med,
        "runs": rates,
    }
    md = [
        "# Loader workers on memory-mapped scans",
        "",
        f"{result['date']}: wall-clock cubes/s over an epoch of {args.cubes} cubes (worker start-up included), "
        f"{args.volumes} synthetic scans of {'x'.join(map(str, SHAPE))} in the memory-mapped cache, Models Genesis "
        f"sampler and cube {'x'.join(map(str, sampler.crop))}, batch {BATCH}; {args.rounds} interleaved rounds, "
        f"medians. Machine: {result['cpus_usable']} usable CPUs, load {result['load_at_start']:.1f} at start.",
        "",
        f"Command: `{result['command'].strip()}`",
        "",
        "| loader, workers | cubes/s (median) | runs |",
        "|---|---:|---|",
    ]
    md += [f"| {k} | {med[k]:.0f} | {', '.join(f'{x:.0f}' for x in v)} |" for k, v in rates.items()]
    md.append("")
    write_report(args.out, "loader_workers", result, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
