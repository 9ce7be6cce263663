"""Models Genesis cube sampler: cost per cube and acceptance rate, old rule vs the reference measure.

Old: up to 50 candidates per cube, each tested by counting voxels above the threshold (the plain
fraction rule), keeping the least-bad one when none passes. New (genesis.data.sampler): the
reference score (``len_depth``=3 look-ahead ``d_img``) of every start position from running box
sums, once per volume, then one uniform draw among accepted positions per cube.

    python benchmarks/bench_sampler.py [--volume FILE] [--cubes 256]

CPU time (time.process_time) of both sides in one run; JSON in benchmarks/results/sampler.json.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from genesis.data.preprocess import PreprocessConfig, preprocess
from genesis.data.sampler import MODELS_GENESIS_THRESHOLD, SamplerConfig, SubVolumeSampler
from genesis.io import load_volume

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "cip_copdgene" / "ct-64.nrrd"


def old_rule(volume: np.ndarray, sampler: SubVolumeSampler, n: int, rng: np.random.Generator) -> tuple[float, float]:
    """The former sampler: returns (fraction of cubes that passed, CPU seconds)."""
    cfg = sampler.cfg
    d, h, w = cfg.crop
    ranges = sampler.start_ranges(volume.shape)
    passed = 0
    start = time.process_time()
    for _ in range(n):
        starts = rng.integers(ranges[:, 0], ranges[:, 1] + 1, size=(cfg.max_tries, 3))
        for z, y, x in starts:
            frac = np.count_nonzero(volume[z:z + d, y:y + h, x:x + w] > cfg.reject_threshold) / (d * h * w)
            if frac <= cfg.max_fraction_above:
                passed += 1
                break
    return passed / n, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", type=Path, default=REAL)
    parser.add_argument("--cubes", type=int, default=256)
    parser.add_argument("--spacing", type=float, default=1.0, help="resample to this isotropic spacing (mm)")
    args = parser.parse_args()
    volume = preprocess(load_volume(args.volume), PreprocessConfig(spacing=(args.spacing,) * 3))
    crop = tuple(min(c, s // 2 // 8 * 8) for c, s in zip((32, 64, 64), volume.shape))
    sampler = SubVolumeSampler(SamplerConfig.models_genesis(crop=crop))
    old_pass, old_cpu = old_rule(volume, sampler, args.cubes, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.process_time()
        acc = sampler.acceptance(volume, "bench")
        build = time.process_time() - start
        start = time.process_time()
        sampler.sample(volume, args.cubes, np.random.default_rng(0), name="bench")
        draw = time.process_time() - start
    result = {
        "volume": str(args.volume.name), "shape": list(volume.shape), "crop": list(crop),
        "threshold": MODELS_GENESIS_THRESHOLD, "cubes": args.cubes,
        "old_ms_per_cube": 1000 * old_cpu / args.cubes, "old_pass_rate": old_pass,
        "new_map_build_ms": 1000 * build, "new_ms_per_cube": 1000 * draw / args.cubes,
        "new_acceptance_rate": acc.rate,
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).resolve().parent / "results" / "sampler.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
