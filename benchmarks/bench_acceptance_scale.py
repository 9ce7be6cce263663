"""Loader cubes per CPU second with 10 vs 200 scans: acceptance maps in an LRU vs stored in the cache.

The Models Genesis sampler needs each volume's acceptance map (a pass over the whole volume).
``CubeDataset`` draws each cube's volume at random, so with more volumes than the sampler's
in-process LRU (32) nearly every cube recomputed a whole map (``before``). Now the map is built
once by ``prepare_source`` and stored next to the volume's cache entry, and cubes only
memory-map it (``after``). ``before`` is measured in the same run on the same prepared cache by
hiding the stored maps from the dataset (a source without ``load_acceptance``), which is the
path of sources without a cache and was the only path before the change.

Synthetic volumes of 32x64x64 (the ``--scale`` shape of ``bench_data_pipeline.py``), crop
16x32x32, the Models Genesis sampler, ``make_loader`` with 0 workers and batch 8, interleaved
rounds; the median is reported. Written to ``<out>/acceptance_scale.json`` / ``.md``.

Run::

    python benchmarks/bench_acceptance_scale.py [--rounds 3] [--cubes 512] [--cache DIR]
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

from genesis.data import CubeDataset, SamplerConfig, make_loader
from genesis.data.datasets import default_lru_volumes
from genesis.data.prepare import prepare_source
from genesis.data.sources import SyntheticVolumeSource
from genesis.errors import GenesisWarning
from genesis.fileio import write_report

SHAPE = (32, 64, 64)
CROP = (16, 32, 32)
VOLUMES = (10, 200)
BATCH = 8


class WithoutStoredMaps:
    """The same cached volumes, without ``load_acceptance``: the sampler's in-process LRU path."""

    def __init__(self, source) -> None:
        self.source, self.is_synthetic = source, True

    def __len__(self) -> int:
        return len(self.source)

    def load(self, i: int):
        return self.source.load(i)

    def name(self, i: int) -> str:
        return self.source.name(i)


def scale_source(n: int, cache: Path) -> SyntheticVolumeSource:
    """``n`` synthetic scans of :data:`SHAPE` (the generator's field of view, coarser voxels) cached in ``cache``."""
    from genesis.data.synthetic import SyntheticConfig

    base = SyntheticConfig()
    cfg = replace(base, shape=SHAPE, spacing=tuple(s * b / k for s, b, k in zip(base.spacing, base.shape, SHAPE)))
    return SyntheticVolumeSource(n, 0, synthetic_cfg=cfg, cache_dir=cache)


def steady_loader_rate(source, cubes: int, lru: int) -> float:
    """Cubes per CPU second of an epoch of ``cubes`` through ``make_loader`` (workers=0), in the steady state.

    Every volume is opened first, as the first epoch of a run does (a run pays that once, not
    every epoch); with fewer volumes kept open than there are, later epochs keep re-opening."""
    ds = CubeDataset(source, SamplerConfig.models_genesis(crop=CROP), cubes_per_epoch=cubes, seed=0, lru_volumes=lru)
    ds.open_all()
    start = time.process_time()
    for _ in make_loader(ds, BATCH, epoch=0, workers=0):
        pass
    return cubes / (time.process_time() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cubes", type=int, default=512)
    parser.add_argument("--cache", type=Path, help="volume cache folder to (re)use (default: a fresh one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", GenesisWarning)  # tiny volumes: "no cube passes" for most
    cache = args.cache or Path(tempfile.mkdtemp(prefix="genesis-bench-acceptance-"))
    sampler = SamplerConfig.models_genesis(crop=CROP)
    sources = {}
    prepare = {}
    for n in VOLUMES:
        start = time.perf_counter()
        sources[n] = scale_source(n, cache)
        report = prepare_source(sources[n], workers=min(2, os.cpu_count() or 1), progress=False, sampler=sampler)
        prepare[n] = time.perf_counter() - start
        print(f"{n} volumes prepared ({report.built} built) in {prepare[n]:.1f} s", file=sys.stderr)
    lru = default_lru_volumes(memory_mapped=True)
    # before: maps recomputed in the sampler's in-process LRU (no stored maps); lru32: stored
    # maps, 32 open volumes (the previous default); default: stored maps, default_lru_volumes
    modes = {"before": 32, "lru32": 32, "default": lru}
    rates: dict[str, list[float]] = {f"{mode}_{n}": [] for n in VOLUMES for mode in modes}
    for r in range(args.rounds):  # interleaved: every variant sees the same machine load
        for n in VOLUMES:
            for mode, size in modes.items():
                source = WithoutStoredMaps(sources[n]) if mode == "before" else sources[n]
                rates[f"{mode}_{n}"].append(steady_loader_rate(source, args.cubes, size))
            print(f"round {r + 1}, {n} volumes: " + ", ".join(
                f"{mode} {rates[f'{mode}_{n}'][-1]:.0f}" for mode in modes) + " cubes per CPU s", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in rates.items()}
    lo, hi = VOLUMES
    result = {
        "benchmark": "acceptance_scale",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/bench_acceptance_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {"shape": SHAPE, "crop": CROP, "batch": BATCH, "cubes": args.cubes, "rounds": args.rounds,
                     "workers": 0, "lru": modes, "timed": "one epoch after every volume was opened once (steady state)"},
        "load_at_start": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "prepare_s": prepare,
        "cubes_per_cpu_s_median": med,
        "runs": rates,
        "ratio_200_vs_10": {mode: med[f"{mode}_{hi}"] / med[f"{mode}_{lo}"] for mode in modes},
    }
    md = [
        "# Acceptance maps and open volumes at scale: 10 vs 200 scans",
        "",
        f"{result['date']}: loader cubes per CPU second (`make_loader`, workers 0, batch {BATCH}, {args.cubes} cubes "
        f"an epoch, timed after every volume was opened once: the steady state of a run) over synthetic volumes of "
        f"{'x'.join(map(str, SHAPE))} in the memory-mapped cache, Models Genesis sampler, crop "
        f"{'x'.join(map(str, CROP))}; {args.rounds} interleaved rounds, medians. `before`: acceptance maps "
        "recomputed in the sampler's in-process LRU of 32 volumes (the path without a cache); `lru32`: maps stored "
        "next to the cache entries and memory-mapped, 32 volumes kept open (the previous default); `default`: the "
        f"same with `default_lru_volumes` ({lru} here, from this process's file-descriptor limit). "
        f"Machine: {result['cpus']} CPUs, load {result['load_at_start']:.1f} at start.",
        "",
        f"Command: `{result['command'].strip()}`",
        "",
        "| Scans | " + " | ".join(f"{mode}: cubes per CPU s" for mode in modes) + " |",
        "|---:|" + "---:|" * len(modes),
    ]
    for n in VOLUMES:
        md.append(f"| {n} | " + " | ".join(f"{med[f'{mode}_{n}']:.0f}" for mode in modes) + " |")
    md += ["", "200 / 10 scans: " + ", ".join(f"{mode} x{result['ratio_200_vs_10'][mode]:.2f}" for mode in modes)
           + " (target: within 20%, i.e. >= x0.80).", ""]
    write_report(args.out, "acceptance_scale", result, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
