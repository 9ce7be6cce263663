"""Speed of the data pipeline: reading CT, preprocessing, cube sampling, the cache, loaders.

Builds a chest-like HU phantom (body ellipse, two lungs, spine, noise) on disk as a DICOM series
and a NIfTI file, then times, in one run and on the same machine:

* ``load_volume`` of the DICOM series and of the ``.nii.gz`` file;
* the HU window alone, and body crop + resampling to 1 mm (``preprocess``);
* the Models Genesis sampler (rejection rule of Zhou et al. 2021) drawing 32 cubes;
* ``FileVolumeSource`` with a cache: first load (read + hash + preprocess + write) vs a hit;
* ``make_loader`` throughput in cubes/s with 0, 1, 2 and 4 worker processes on the memory-mapped
  cache (the default path of ``genesis-pretrain``);
* ``genesis.data.synthetic.generate_chest_ct`` per default volume (when the module exists).

Each number is the median of ``--repeats`` runs. Results are printed and written atomically to
``<out>/data_pipeline.json`` and ``<out>/data_pipeline.md``.

``--scale`` instead measures how the default pretraining path scales with the number of scans:
``genesis-pretrain`` on 10 and on 200 synthetic volumes (small shape, default settings otherwise,
cache prepared first with ``--prepare-only``), in interleaved rounds: peak RSS of the training
process and its workers, training samples/s, and the loader's cubes/s per CPU second over the
same sources. Written to ``<out>/data_pipeline_scale.json`` / ``.md``.

``--scans N [N ...]`` measures what a folder of N scans costs (default 10, 100 and 1,000 scans
of 32x64x64, ``--scan-shape`` for another size, written to disk from ``genesis.data.synthetic``
chest CTs): a first and a second
``genesis-pretrain --prepare-only`` (the second reads stamps and verifies entries, no scan);
the loader of a run in a fresh process as ``genesis-pretrain`` builds it (discovery, prepare,
``CubeDataset`` with the default open maps and ``resident_mb``, and without the resident bound
for comparison): start-up time to the first batch, cubes per CPU second and per wall second in
the steady state, peak RSS split into anonymous and file-backed (``/proc/self/status``
``RssAnon`` / ``RssFile``); and a short ``genesis-pretrain`` training run (samples/s, peak
RSS). Written to ``<out>/data_pipeline_scans.json`` / ``.md``.

Run::

    python benchmarks/bench_data_pipeline.py --quick     # 64x256x256 phantom, ~15 s on 2 busy cores
    python benchmarks/bench_data_pipeline.py             # 200x512x512 phantom (a LUNA16-like scan)
    python benchmarks/bench_data_pipeline.py --scale     # 10 vs 200 scans, ~4 min on 2 busy cores
    python benchmarks/bench_data_pipeline.py --scans 10 100 1000 3000   # ~15 min on 2 busy cores
    python benchmarks/bench_data_pipeline.py --scans 10 100 1000 --scan-shape 64 128 128   # ~12 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from genesis.data import (
    CubeDataset,
    FileVolumeSource,
    PreprocessConfig,
    SamplerConfig,
    SubVolumeSampler,
    make_loader,
    preprocess,
    window_hu,
)
from genesis.fileio import write_report
from genesis.io import Volume, load_volume, save_volume, write_dicom_series

FULL_SHAPE = (200, 512, 512)
QUICK_SHAPE = (64, 256, 256)
#: Typical thin-slice chest CT voxel (z, y, x) mm, as in LUNA16.
PHANTOM_SPACING = (1.25, 0.7, 0.7)
SAMPLER_CUBES = 32
BATCH_SIZE = 8


@dataclass
class Row:
    """One measured stage."""

    stage: str
    input: str
    median_s: float
    runs_s: list[float]
    rate: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)


def median_time(fn: Callable[[int], object], repeats: int, setup: Callable[[int], None] | None = None) -> list[float]:
    """Wall times of ``fn(i)`` for ``i < repeats`` (``setup(i)`` runs untimed before each)."""
    runs = []
    for i in range(repeats):
        if setup is not None:
            setup(i)
        start = time.perf_counter()
        fn(i)
        runs.append(time.perf_counter() - start)
    return runs


def make_phantom(shape: tuple[int, int, int], seed: int = 0) -> Volume:
    """A chest-like HU volume: air, soft-tissue body, two lungs, a spine column, scanner noise.

    Anatomy is drawn relative to the in-plane size, so a smaller grid is a smaller field of view.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    cy, cx = ny / 2, nx / 2
    body = ((y - cy) / (0.39 * ny)) ** 2 + ((x - cx) / (0.47 * nx)) ** 2 < 1
    lungs = (((y - cy) / (0.29 * ny)) ** 2 + ((x - 0.33 * nx) / (0.14 * nx)) ** 2 < 1) | (
        ((y - cy) / (0.29 * ny)) ** 2 + ((x - 0.67 * nx) / (0.14 * nx)) ** 2 < 1
    )
    spine = ((y - 0.78 * ny) / (0.05 * ny)) ** 2 + ((x - cx) / (0.05 * nx)) ** 2 < 1
    plane = np.full((ny, nx), -1000.0, np.float32)
    plane[body] = 40.0
    plane[lungs] = -850.0
    plane[spine] = 700.0
    hu = np.broadcast_to(plane, shape) + rng.normal(0.0, 20.0, shape).astype(np.float32)
    return Volume(np.ascontiguousarray(hu, dtype=np.float32), PHANTOM_SPACING, modality="CT")


def machine_info() -> dict:
    """Cores, torch threads and versions: numbers from a busy 2-core box and a workstation differ."""
    import SimpleITK as sitk

    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "SimpleITK": sitk.Version.VersionString(),
        "mp_start_method": multiprocessing.get_start_method(),  # how loader workers start
    }
    if hasattr(os, "getloadavg"):
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return info


def shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def run(
    shape: tuple[int, int, int], repeats: int, workdir: Path, cubes_per_epoch: int, log: Callable = print
) -> tuple[list[Row], dict]:
    """Run every stage; returns the rows and the setup timings."""
    rows: list[Row] = []
    setup: dict = {}
    phantom = make_phantom(shape)
    dicom_dir, nifti = workdir / "dicom", workdir / "phantom.nii.gz"
    mvox = phantom.array.size / 1e6

    t = time.perf_counter()
    write_dicom_series(phantom, dicom_dir)
    setup["write_dicom_series_s"] = time.perf_counter() - t
    t = time.perf_counter()
    save_volume(phantom, nifti)
    setup["save_volume_nii_gz_s"] = time.perf_counter() - t
    log(f"setup: phantom {shape_str(shape)} written as DICOM ({setup['write_dicom_series_s']:.2f} s) "
        f"and .nii.gz ({setup['save_volume_nii_gz_s']:.2f} s)")

    # --- reading ---------------------------------------------------------------------------------
    runs = median_time(lambda i: load_volume(dicom_dir), repeats)
    rows.append(Row("load_volume DICOM", f"{shape[0]} slices {shape[1]}x{shape[2]}", statistics.median(runs), runs,
                    f"{mvox / statistics.median(runs):.0f} Mvox/s"))
    runs = median_time(lambda i: load_volume(nifti), repeats)
    rows.append(Row("load_volume NIfTI (.nii.gz)", shape_str(shape), statistics.median(runs), runs,
                    f"{mvox / statistics.median(runs):.0f} Mvox/s"))
    volume = load_volume(dicom_dir)

    # --- preprocessing -------------------------------------------------------------------------
    runs = median_time(lambda i: window_hu(volume.array), repeats)
    rows.append(Row("window [-1000, 1000] HU -> [0, 1]", shape_str(shape), statistics.median(runs), runs,
                    f"{mvox / statistics.median(runs):.0f} Mvox/s"))
    crop_cfg = PreprocessConfig(spacing=(1.0, 1.0, 1.0), crop_body=True)
    out_shape = preprocess(volume, crop_cfg).shape
    runs = median_time(lambda i: preprocess(volume, crop_cfg), repeats)
    rows.append(Row("body crop + resample 1 mm + window", f"{shape_str(shape)} -> {shape_str(out_shape)}",
                    statistics.median(runs), runs, note="SimpleITK linear"))
    volume01 = preprocess(volume)

    # --- sampling ------------------------------------------------------------------------------
    sampler = SubVolumeSampler(SamplerConfig.models_genesis())
    runs = median_time(lambda i: sampler.sample(volume01, SAMPLER_CUBES, np.random.default_rng(i)), repeats)
    rows.append(Row(f"Models Genesis sampler, {SAMPLER_CUBES} cubes 32x64x64", shape_str(shape),
                    statistics.median(runs), runs, f"{SAMPLER_CUBES / statistics.median(runs):.0f} cubes/s",
                    "rejection: <= 15% of voxels above 0.425"))
    del volume, volume01

    # --- cache: first load vs hit --------------------------------------------------------------
    cache_dirs = [workdir / f"cache{i}" for i in range(repeats)]
    first = median_time(lambda i: FileVolumeSource([dicom_dir], cache_dir=cache_dirs[i]).load(0), repeats)
    hit = median_time(lambda i: FileVolumeSource([dicom_dir], cache_dir=cache_dirs[i]).load(0), repeats)
    # A hit returns a memory map; reading every voxel once is what a consumer pays in the end.
    hit_read = median_time(
        lambda i: float(FileVolumeSource([dicom_dir], cache_dir=cache_dirs[i]).load(0).sum()), repeats
    )
    m_first, m_hit, m_read = (statistics.median(r) for r in (first, hit, hit_read))
    rows.append(Row("cache: first load (read + hash + preprocess + write)", f"DICOM {shape_str(shape)}",
                    m_first, first))
    rows.append(Row("cache: hit (stat + index + memory map)", f"DICOM {shape_str(shape)}", m_hit, hit,
                    f"{m_first / m_hit:.0f}x faster", extra={"speedup": m_first / m_hit}))
    rows.append(Row("cache: hit + read every voxel once", f"DICOM {shape_str(shape)}", m_read, hit_read,
                    f"{m_first / m_read:.1f}x faster", extra={"speedup": m_first / m_read}))

    # --- loaders -------------------------------------------------------------------------------
    ds = CubeDataset(FileVolumeSource([dicom_dir], cache_dir=cache_dirs[0]), SamplerConfig.models_genesis(),
                     cubes_per_epoch=cubes_per_epoch, seed=0)
    ds[0]  # the volume is cached on disk already; this fills the in-process LRU
    for workers in (0, 1, 2, 4):
        first_batch: list[float] = []
        steady: list[float] = []

        def epoch(i: int, workers: int = workers) -> None:
            # Time to the first batch (worker start-up) is kept apart from the steady rate after it.
            start = time.perf_counter()
            n = 0
            for batch in make_loader(ds, BATCH_SIZE, epoch=i, workers=workers):
                if n == 0:
                    t_first = time.perf_counter()
                    first_batch.append(t_first - start)
                n += batch.shape[0]
            if n != cubes_per_epoch:
                raise RuntimeError(f"loader gave {n} cubes, expected {cubes_per_epoch}")
            steady.append((n - BATCH_SIZE) / max(time.perf_counter() - t_first, 1e-9))

        runs = median_time(epoch, repeats)
        rate = cubes_per_epoch / statistics.median(runs)
        m_first, m_steady = statistics.median(first_batch), statistics.median(steady)
        rows.append(Row(f"make_loader, workers={workers}", f"{cubes_per_epoch} cubes, batch {BATCH_SIZE}",
                        statistics.median(runs), runs, f"{rate:.0f} cubes/s",
                        f"first batch {format_seconds(m_first)}, then {m_steady:.0f} cubes/s",
                        extra={"cubes_per_s": rate, "first_batch_s": m_first, "steady_cubes_per_s": m_steady}))

    # --- synthetic generator -------------------------------------------------------------------
    try:
        from genesis.data.synthetic import SyntheticConfig, generate_chest_ct
    except ImportError:
        log("genesis.data.synthetic.generate_chest_ct not available: skipped")
    else:
        cfg = SyntheticConfig()
        runs = median_time(lambda i: generate_chest_ct(i), repeats)
        rows.append(Row("synthetic generate_chest_ct (default config)", f"{shape_str(cfg.shape)} @ {cfg.spacing} mm",
                        statistics.median(runs), runs, f"{60 / statistics.median(runs):.0f} volumes/min",
                        "SYNTHETIC phantom, seeds 0..n-1"))
    return rows, setup


# ------------------------------------------------------------------------------ scaling study
SCALE_SHAPE = (32, 64, 64)
SCALE_VOLUMES = (10, 200)
SCALE_TRAIN = ["--device", "cpu", "--no-progress", "--width", "4", "--crop", "16", "32", "32", "--batch-size", "4",
               "--steps-per-epoch", "25", "--epochs", "2", "--set", "data.val_cubes=8", "--set", "log.grids=false",
               "--set", "log.tensorboard=false"]

_CHILD = """
import json, resource, sys, time
from genesis.cli.pretrain import main
t0 = time.process_time()
code = main(sys.argv[1:])
self_ru, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("RESULT " + json.dumps({"code": code, "maxrss_mb": self_ru.ru_maxrss / 1024,
      "children_maxrss_mb": kids.ru_maxrss / 1024, "cpu_s": self_ru.ru_utime + self_ru.ru_stime + kids.ru_utime
      + kids.ru_stime, "minflt": self_ru.ru_minflt}))
"""


def _pretrain_child(args: list[str], env: dict) -> dict:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"pretraining failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def _loader_rate(n: int, cache_dir: Path, cubes: int) -> float:
    """Cubes per CPU second of the default loader (workers=0) over ``n`` prepared synthetic volumes,
    in the steady state (see ``bench_acceptance_scale.steady_loader_rate``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_acceptance_scale import CROP, SHAPE, scale_source, steady_loader_rate

    from genesis.data.datasets import default_lru_volumes
    from genesis.data.prepare import prepare_source

    assert SHAPE == SCALE_SHAPE, "the loader is timed on the scans the training runs use"
    source = scale_source(n, cache_dir)
    # the sampler's acceptance maps are stored at prepare time too, as genesis-pretrain does
    prepare_source(source, progress=False, sampler=SamplerConfig.models_genesis(crop=CROP))
    # lru_volumes as genesis-pretrain sets it for a cached source
    return steady_loader_rate(source, cubes, default_lru_volumes(memory_mapped=True))


def run_scale(workdir: Path, rounds: int, log: Callable = print, cache: Path | None = None) -> dict:
    """10 vs 200 synthetic scans through ``genesis-pretrain`` (see the module docstring).

    ``cache``: an existing ``$GENESIS_CACHE`` folder to reuse (entries are verified, not rebuilt).
    """
    cache = cache or workdir / "cache"
    env = {**os.environ, "GENESIS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    shape = f"data.synthetic_shape=[{','.join(map(str, SCALE_SHAPE))}]"
    prepare = {}
    for n in SCALE_VOLUMES:
        start = time.perf_counter()
        _pretrain_child(["--prepare-only", "--workers", "2", "--no-progress", "--set", shape,
                         "--set", f"data.synthetic_volumes={n}", "--crop", "16", "32", "32"], env)
        prepare[n] = time.perf_counter() - start
        log(f"prepared {n} synthetic volumes {shape_str(SCALE_SHAPE)} in {prepare[n]:.1f} s (wall, with start-up)")
    runs: dict[int, list[dict]] = {n: [] for n in SCALE_VOLUMES}
    loader: dict[int, list[float]] = {n: [] for n in SCALE_VOLUMES}
    for r in range(rounds):  # interleaved: both sides see the same machine load
        for n in SCALE_VOLUMES:
            out = workdir / f"run{n}_{r}"
            res = _pretrain_child([*SCALE_TRAIN, "--set", shape, "--set", f"data.synthetic_volumes={n}",
                                   "--out", str(out)], env)
            import csv

            with open(out / "log.csv") as handle:
                rows = list(csv.DictReader(handle))
            res["samples_per_s"] = statistics.mean(float(row["samples_per_s"]) for row in rows)
            runs[n].append(res)
            loader[n].append(_loader_rate(n, cache / "volumes", 256))
            log(f"round {r + 1}: {n} volumes: {res['samples_per_s']:.1f} samples/s, peak RSS "
                f"{max(res['maxrss_mb'], res['children_maxrss_mb']):.0f} MB, loader {loader[n][-1]:.0f} cubes/CPU s")
    summary = {}
    for n in SCALE_VOLUMES:
        summary[str(n)] = {
            "prepare_s": prepare[n],
            "train_samples_per_s_median": statistics.median(r["samples_per_s"] for r in runs[n]),
            "peak_rss_mb": max(max(r["maxrss_mb"], r["children_maxrss_mb"]) for r in runs[n]),
            "train_cpu_s_median": statistics.median(r["cpu_s"] for r in runs[n]),
            "loader_cubes_per_cpu_s_median": statistics.median(loader[n]),
            "runs": runs[n],
            "loader_runs": loader[n],
        }
    lo, hi = (summary[str(n)] for n in SCALE_VOLUMES)
    summary["ratio_train_samples_per_s"] = hi["train_samples_per_s_median"] / lo["train_samples_per_s_median"]
    summary["ratio_loader_cubes_per_cpu_s"] = hi["loader_cubes_per_cpu_s_median"] / lo["loader_cubes_per_cpu_s_median"]
    return summary


def scale_markdown(report: dict) -> str:
    s = report["scale"]
    m = report["machine"]
    lines = [
        "# Data path at scale: 10 vs 200 scans",
        "",
        f"{report['date']}: `genesis-pretrain` with default data settings (memory-mapped cache, Models Genesis "
        f"sampler, workers 0) on synthetic volumes of {report['shape']}, width-4 U-Net, crop 16x32x32, batch 4, "
        f"2 epochs of 25 steps; {report['rounds']} interleaved rounds, medians. Machine: {m['cpus_usable']} usable "
        f"CPUs, load {m.get('load_avg_1min', '?')} at start.",
        "",
        f"Command: `{report['command']}`",
        "",
        "| Scans | `--prepare-only --workers 2` (wall, incl. start-up) | Peak RSS (training + workers) | Training samples/s "
        "| Training CPU s | Loader cubes per CPU s (steady state) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n in SCALE_VOLUMES:
        r = s[str(n)]
        lines.append(f"| {n} | {r['prepare_s']:.1f} s | {r['peak_rss_mb']:.0f} MB | "
                     f"{r['train_samples_per_s_median']:.1f} | {r['train_cpu_s_median']:.1f} | "
                     f"{r['loader_cubes_per_cpu_s_median']:.0f} |")
    lines += ["", f"200 / 10 scans: training samples/s x{s['ratio_train_samples_per_s']:.2f}, loader cubes per CPU "
              f"second x{s['ratio_loader_cubes_per_cpu_s']:.2f} (target: within 20%); peak RSS target < 1500 MB.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ many scans
SCANS_SHAPE = (32, 64, 64)
SCANS_CROP = (16, 32, 32)
SCANS_DEFAULT = (10, 100, 1000)
#: Base chest CTs generated per folder; the others are shifted, re-noised copies of them.
SCANS_BASES = 10


def scans_train_args(crop: tuple[int, int, int] = SCANS_CROP) -> list[str]:
    """The short ``genesis-pretrain`` run of the scans study."""
    return ["--device", "cpu", "--no-progress", "--width", "4", "--crop", *map(str, crop), "--batch-size", "4",
            "--steps-per-epoch", "25", "--epochs", "2", "--set", "data.val_cubes=8", "--set", "log.grids=false",
            "--set", "log.tensorboard=false"]


def write_scans(folder: Path, n: int, shape: tuple[int, int, int] = SCANS_SHAPE) -> float:
    """``n`` distinct synthetic chest CTs (``.nii.gz``) in ``folder``; returns the seconds taken.

    :data:`SCANS_BASES` are generated (``generate_chest_ct``, 0.13 s each at 32x64x64); scan i
    is base ``i % 10`` shifted by up to 3 voxels in x with its own 5 HU noise, so every scan has
    its own bytes and its own cache entry (generating 3,000 would take ~7 minutes).
    """
    from genesis.data.synthetic import SyntheticConfig, generate_chest_ct

    start = time.perf_counter()
    base = SyntheticConfig()
    cfg = replace(base, shape=shape, spacing=tuple(s * b / k for s, b, k in zip(base.spacing, base.shape, shape)))
    bases = [generate_chest_ct(seed=s, config=cfg).volume for s in range(min(n, SCANS_BASES))]
    for i in range(n):
        volume = bases[i % len(bases)]
        rng = np.random.default_rng([7, i])
        array = np.roll(volume.array, int(rng.integers(-3, 4)), axis=2) + rng.normal(0, 5, shape).astype(np.float32)
        save_volume(Volume(array.astype(np.float32), volume.spacing, volume.origin, volume.direction, modality="CT"),
                    folder / f"scan{i:05d}.nii.gz")
    return time.perf_counter() - start


#: A run's loader in a fresh process, built as genesis-pretrain builds it. argv: data, cache,
#: cubes per epoch, resident ("default" or "none"). Prints one RESULT line of JSON.
_LOADER_CHILD = """
import time
t0 = time.perf_counter()
import json, sys, warnings
from genesis.cli._preflight import raise_open_file_limit
from genesis.data import CubeDataset, PreprocessConfig, SamplerConfig, make_loader
from genesis.data.datasets import DEFAULT_RESIDENT_MB, default_lru_volumes
from genesis.data.prepare import prepare_source
from genesis.data.sources import volume_source_from_arg
from genesis.errors import GenesisWarning
warnings.simplefilter("ignore", GenesisWarning)
raise_open_file_limit()
data, cache, cubes, resident = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
crop = tuple(json.loads(sys.argv[5]))
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out
t_import = time.perf_counter() - t0
sampler = SamplerConfig.models_genesis(crop=crop)
source = volume_source_from_arg(data, PreprocessConfig(), cache, crop=crop)
t_discovery = time.perf_counter() - t0
prepare_source(source, progress=False, sampler=sampler)
t_prepare = time.perf_counter() - t0
ds = CubeDataset(source, sampler, cubes_per_epoch=cubes, seed=0, lru_volumes=default_lru_volumes(True),
                 resident_mb=DEFAULT_RESIDENT_MB if resident == "default" else None)
for i in range(len(source)):  # as genesis-pretrain's acceptance report does
    ds.acceptance(i)
peak = {"RssAnon": 0.0, "RssFile": 0.0}
epochs = []
for epoch in range(3):
    c, w = time.process_time(), time.perf_counter()
    for n, batch in enumerate(make_loader(ds, 8, epoch=epoch, workers=0)):
        if epoch == 0 and n == 0:
            t_first = time.perf_counter() - t0
    epochs.append({"cpu_s": time.process_time() - c, "wall_s": time.perf_counter() - w})
    now = status()
    peak = {k: max(peak[k], now[k]) for k in peak}
steady = epochs[1:]  # the first epoch maps every scan in once
hwm = status()["VmHWM"]
copy_us = None
# the bare copy of a cube from the mapped scans, at random (no sampler, nothing given back): what
# the memory system alone charges for a working set of this many scans
# (after the peak RSS was read: it maps every scan in)
if resident == "none":
    import numpy as np
    rng = np.random.default_rng(0)
    maps = [ds.volume(i) for i in range(len(source))]
    out = np.empty(crop, np.float32)
    picks = [(int(rng.integers(len(maps))), *(int(rng.integers(s - c + 1)) for s, c in zip(maps[0].shape, crop)))
             for _ in range(cubes)]
    for v, z, y, x in picks:  # once to map every page in
        out[...] = maps[v][z:z + crop[0], y:y + crop[1], x:x + crop[2]]
    c = time.process_time()
    for v, z, y, x in picks:
        out[...] = maps[v][z:z + crop[0], y:y + crop[1], x:x + crop[2]]
    copy_us = (time.process_time() - c) / cubes * 1e6
print("RESULT " + json.dumps({
    "scans": len(source), "lru_volumes": ds.lru_volumes, "resident_mb": ds.resident_mb,
    "import_s": t_import, "discovery_s": t_discovery - t_import, "prepare_s": t_prepare - t_discovery,
    "first_batch_s": t_first, "cubes_per_cpu_s": cubes * len(steady) / sum(e["cpu_s"] for e in steady),
    "cubes_per_s": cubes * len(steady) / sum(e["wall_s"] for e in steady), "epochs": epochs,
    "peak_rss_anon_mb": peak["RssAnon"], "peak_rss_file_mb": peak["RssFile"], "vm_hwm_mb": hwm,
    "residency": ds._resident.stats() if ds._resident is not None else None, "copy_us": copy_us}))
"""


def _child(code: str, args: list[str], env: dict) -> dict:
    import subprocess

    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def _timed_cli(args: list[str], env: dict) -> float:
    import subprocess

    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genesis.cli.pretrain", *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"genesis-pretrain {' '.join(args)} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - start


def run_scans(workdir: Path, counts: list[int], rounds: int, cubes: int, log: Callable = print,
              shape: tuple[int, int, int] = SCANS_SHAPE, crop: tuple[int, int, int] = SCANS_CROP) -> dict:
    """Every measurement of ``--scans`` (see the module docstring), per number of scans."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results: dict[str, dict] = {}
    folders = {}
    for n in counts:
        folders[n] = workdir / f"scans{n}"
        written = write_scans(folders[n], n, shape)
        env_n = {**env, "GENESIS_CACHE": str(workdir / f"cache{n}")}
        prep = ["--data", str(folders[n]), "--prepare-only", "--no-progress", "--workers", "2",
                "--crop", *map(str, crop)]
        first = _timed_cli(prep, env_n)
        second = [_timed_cli(prep, env_n) for _ in range(3)]
        results[str(n)] = {"write_s": written, "prepare_first_s": first, "prepare_second_s": min(second),
                           "prepare_second_runs_s": second, "loader": {"default": [], "unbounded": []}}
        log(f"{n} scans: written in {written:.1f} s; --prepare-only first {first:.1f} s, second {min(second):.2f} s")
    for r in range(rounds):  # interleaved: every size sees the same machine load
        for n in counts:
            for mode, arg in (("default", "default"), ("unbounded", "none")):
                res = _child(_LOADER_CHILD, [str(folders[n]), str(workdir / f"cache{n}" / "volumes"), str(cubes), arg,
                                             json.dumps(crop)], env)
                results[str(n)]["loader"][mode].append(res)
                log(f"round {r + 1}, {n} scans, {mode}: {res['cubes_per_cpu_s']:.0f} cubes per CPU s, "
                    f"RssAnon {res['peak_rss_anon_mb']:.0f} MB, RssFile {res['peak_rss_file_mb']:.0f} MB, "
                    f"first batch after {res['first_batch_s']:.1f} s")
    for n in counts:
        out = workdir / f"train{n}"
        res = _pretrain_child([*scans_train_args(crop), "--data", str(folders[n]), "--out", str(out)],
                              {**env, "GENESIS_CACHE": str(workdir / f"cache{n}")})
        import csv

        with open(out / "log.csv") as handle:
            rows = list(csv.DictReader(handle))
        res["samples_per_s"] = statistics.mean(float(row["samples_per_s"]) for row in rows)
        results[str(n)]["train"] = res
        log(f"{n} scans: training {res['samples_per_s']:.1f} samples/s, peak RSS {res['maxrss_mb']:.0f} MB")
    for n in counts:
        r = results[str(n)]
        for mode in ("default", "unbounded"):
            runs = r["loader"][mode]
            r[f"{mode}_median"] = {k: statistics.median(run[k] for run in runs) for k in (
                "cubes_per_cpu_s", "cubes_per_s", "first_batch_s", "discovery_s", "prepare_s", "peak_rss_anon_mb",
                "peak_rss_file_mb", "vm_hwm_mb") + (("copy_us",) if mode == "unbounded" else ())}
    base = results[str(counts[0])]
    for n in counts:
        r = results[str(n)]
        r["vs_first"] = {
            **{f"{mode}_{k}": r[f"{mode}_median"][k] / base[f"{mode}_median"][k] for mode in ("default", "unbounded")
               for k in ("cubes_per_cpu_s", "vm_hwm_mb")},
            "train_samples_per_s": r["train"]["samples_per_s"] / base["train"]["samples_per_s"],
            "train_maxrss_mb": r["train"]["maxrss_mb"] / base["train"]["maxrss_mb"]}
        if n != counts[0]:
            r["prepare_second_ms_per_scan"] = 1e3 * (r["prepare_second_s"] - base["prepare_second_s"]) / (n - counts[0])
    return results


def scans_markdown(report: dict) -> str:
    s, m, counts = report["scans"], report["machine"], report["counts"]
    first = counts[0]
    lines = [
        f"# Data path against the number of scans ({', '.join(f'{n:,}' for n in counts)})",
        "",
        f"{report['date']}: folders of synthetic chest CTs of {report['shape']} (`.nii.gz`, every scan its own bytes), "
        f"crop {report['crop']}, Models Genesis sampler, default settings otherwise. Machine: {m['cpus_usable']} "
        "usable "
        f"CPUs, load {m.get('load_avg_1min', '?')} at start. Loader: a fresh process per measurement, built as "
        f"`genesis-pretrain` builds it, workers 0, {report['cubes']} cubes an epoch, epochs 2-3 timed (the first maps "
        f"every scan in), {report['rounds']} interleaved rounds, medians; RSS from `/proc/self/status` after each "
        f"epoch (peak), `VmHWM` the peak total. `resident` = the default `resident_mb` "
        f"({report['resident_mb']} MB: the first scans that fit stay memory-mapped, the cubes of the others are "
        "read with `pread`); `unbounded` = `resident_mb=None` "
        "(every scan stays mapped, every page a cube read stays mapped in). Bare cube copy: the same number of cubes "
        "copied from the mapped scans at random positions, nothing else (the memory system's part).",
        "",
        f"Command: `{report['command']}`",
        "",
        "| Scans | `--prepare-only` first / second run (wall, 2 workers, incl. ~3.5 s start-up) "
        "| second run: ms per scan "
        f"beyond {first} | discovery / prepare in the loader process | first batch after |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in counts:
        r = s[str(n)]
        d = r["default_median"]
        per = f"{r['prepare_second_ms_per_scan']:.2f}" if "prepare_second_ms_per_scan" in r else "-"
        lines.append(f"| {n:,} | {r['prepare_first_s']:.1f} s / {r['prepare_second_s']:.2f} s | {per} | "
                     f"{d['discovery_s']:.2f} s / {d['prepare_s']:.2f} s | {d['first_batch_s']:.2f} s |")
    lines += ["", "| Scans | Loader cubes per CPU s (resident / unbounded) | cubes/s wall (resident / unbounded) | "
              "peak RssAnon MB (resident / unbounded) | peak RssFile MB (resident / unbounded) | VmHWM MB "
              "(resident / unbounded) | bare cube copy, us (unbounded) | `genesis-pretrain` samples/s "
              "| its peak RSS MB |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in counts:
        r = s[str(n)]
        d, u, t = r["default_median"], r["unbounded_median"], r["train"]
        lines.append(f"| {n:,} | {d['cubes_per_cpu_s']:,.0f} / {u['cubes_per_cpu_s']:,.0f} | {d['cubes_per_s']:,.0f} / "
                     f"{u['cubes_per_s']:,.0f} | {d['peak_rss_anon_mb']:.0f} / {u['peak_rss_anon_mb']:.0f} | "
                     f"{d['peak_rss_file_mb']:.0f} / {u['peak_rss_file_mb']:.0f} | {d['vm_hwm_mb']:.0f} / "
                     f"{u['vm_hwm_mb']:.0f} | {u['copy_us']:.1f} | {t['samples_per_s']:.1f} | {t['maxrss_mb']:.0f} |")
    lines += ["", f"Against {first} scans:", ""]
    for n in counts[1:]:
        v = s[str(n)]["vs_first"]
        lines.append(f"- {n:,} scans: loader cubes per CPU s x{v['default_cubes_per_cpu_s']:.2f} resident, "
                     f"x{v['unbounded_cubes_per_cpu_s']:.2f} unbounded; peak RSS (VmHWM) x{v['default_vm_hwm_mb']:.2f} "
                     f"resident, x{v['unbounded_vm_hwm_mb']:.2f} unbounded; training samples/s "
                     f"x{v['train_samples_per_s']:.2f}, its peak RSS x{v['train_maxrss_mb']:.2f} (target: within 20%).")
    lines.append("")
    return "\n".join(lines)


def format_seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 0.1 else f"{s:.2f} s"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Data pipeline benchmark",
        "",
        f"{report['date']} - {'quick' if report['quick'] else 'full'} run, phantom {report['phantom_shape']} "
        f"@ {report['phantom_spacing']} mm (synthetic), median of {report['repeats']} runs.",
        f"Machine: {m['cpus_usable']} usable CPUs (of {m['cpu_count']}), torch threads {m['torch_threads']}, "
        f"load average {m.get('load_avg_1min', '?')} at start; Python {m['python']}, torch {m['torch']}, "
        f"numpy {m['numpy']}, SimpleITK {m['SimpleITK']}.",
        "",
        "| Stage | Input | Median | Rate | Runs (s) | Note |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in report["results"]:
        runs = ", ".join(f"{x:.3g}" for x in r["runs_s"])
        cells = [r["stage"], r["input"], format_seconds(r["median_s"]), r["rate"], runs, r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    s = report["setup"]
    lines += ["", f"Setup (once, not in the table): write_dicom_series {s['write_dicom_series_s']:.2f} s, "
              f"save_volume .nii.gz {s['save_volume_nii_gz_s']:.2f} s; total run {report['total_s']:.0f} s.", ""]
    return "\n".join(lines)


def print_table(rows: list[Row]) -> None:
    width = max(len(r.stage) for r in rows)
    in_width = max(len(r.input) for r in rows)
    print(f"\n{'stage':<{width}}  {'input':<{in_width}}  {'median':>10}  {'rate':<16}  note")
    for r in rows:
        print(f"{r.stage:<{width}}  {r.input:<{in_width}}  {format_seconds(r.median_s):>10}  {r.rate:<16}  {r.note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"phantom {shape_str(QUICK_SHAPE)} instead of {shape_str(FULL_SHAPE)}"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for data_pipeline.json/.md (default: benchmarks/results)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per stage (the median is reported)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="phantom size override")
    parser.add_argument("--cubes", type=int, help="cubes per loader epoch (default 128 quick, 256 full)")
    parser.add_argument("--scale", action="store_true", help="only the 10 vs 200 scans study (see above)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of --scale")
    parser.add_argument("--cache", type=Path, help="--scale: reuse this $GENESIS_CACHE folder (default: a fresh one)")
    parser.add_argument("--scans", type=int, nargs="*", metavar="N",
                        help="only the study against the number of scans (default "
                        f"{' '.join(map(str, SCANS_DEFAULT))})")
    parser.add_argument("--scan-shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=SCANS_SHAPE,
                        help=f"--scans: size of each scan (default {shape_str(SCANS_SHAPE)})")
    parser.add_argument("--scan-crop", type=int, nargs=3, metavar=("D", "H", "W"),
                        help=f"--scans: cube size (default {shape_str(SCANS_CROP)}, or 32 64 64 with --scan-shape)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.scans is not None:
        from genesis.data.datasets import DEFAULT_RESIDENT_MB

        counts = sorted(args.scans or SCANS_DEFAULT)
        cubes = args.cubes or 4096
        shape = tuple(args.scan_shape)
        crop = tuple(args.scan_crop) if args.scan_crop else (SCANS_CROP if shape == SCANS_SHAPE else (32, 64, 64))
        info = machine_info()
        workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-scans-"))
        try:
            scans = run_scans(workdir, counts, args.rounds, cubes, shape=shape, crop=crop)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        report = {"benchmark": "data_pipeline_scans",
                  "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "command": "python benchmarks/bench_data_pipeline.py --scans " + " ".join(map(str, counts)) + (
                      f" --rounds {args.rounds}" if args.rounds != 2 else "") + (
                      f" --cubes {args.cubes}" if args.cubes else "") + (
                      f" --scan-shape {' '.join(map(str, shape))}" if shape != SCANS_SHAPE else "") + (
                      f" --scan-crop {' '.join(map(str, crop))}" if args.scan_crop else ""),
                  "shape": shape_str(shape), "crop": shape_str(crop), "counts": counts,
                  "rounds": args.rounds, "cubes": cubes, "resident_mb": DEFAULT_RESIDENT_MB,
                  "train_args": scans_train_args(crop), "machine": info, "scans": scans}
        stem = "data_pipeline_scans" + ("" if shape == SCANS_SHAPE else "_" + "x".join(map(str, shape)))
        write_report(args.out, stem, report, scans_markdown(report))
        print(scans_markdown(report))
        return 0
    if args.scale:
        info = machine_info()
        workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-scale-"))
        try:
            scale = run_scale(workdir, args.rounds, cache=args.cache)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        report = {"benchmark": "data_pipeline_scale",
                  "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "command": "python benchmarks/bench_data_pipeline.py --scale" + (
                      f" --rounds {args.rounds}" if args.rounds != 2 else "") + (
                      f" --cache {args.cache}" if args.cache else ""),
                  "shape": shape_str(SCALE_SHAPE), "rounds": args.rounds, "train_args": SCALE_TRAIN,
                  "machine": info, "scale": scale}
        write_report(args.out, "data_pipeline_scale", report, scale_markdown(report))
        print(scale_markdown(report))
        return 0

    shape = tuple(args.shape) if args.shape else (QUICK_SHAPE if args.quick else FULL_SHAPE)
    cubes = args.cubes or (128 if args.quick else 256)
    info = machine_info()
    print(f"machine: {info['cpus_usable']} CPUs, torch threads {info['torch_threads']}, "
          f"load {info.get('load_avg_1min', '?')}, {info['platform']}")
    start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-data-"))
    try:
        rows, setup = run(shape, args.repeats, workdir, cubes)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - start
    print_table(rows)

    report = {
        "benchmark": "data_pipeline",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": bool(args.quick),
        "phantom_shape": shape_str(shape),
        "phantom_spacing": list(PHANTOM_SPACING),
        "repeats": args.repeats,
        "cubes_per_epoch": cubes,
        "batch_size": BATCH_SIZE,
        "machine": info,
        "setup": setup,
        "total_s": total,
        "results": [asdict(r) for r in rows],
    }
    write_report(args.out, "data_pipeline", report, markdown(report))
    print(f"\ntotal {total:.0f} s; wrote {args.out / 'data_pipeline.json'} and {args.out / 'data_pipeline.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
