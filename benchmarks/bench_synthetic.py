"""Speed of the synthetic chest CT generator (the default dataset) and the target stand-ins.

Times ``generate_chest_ct`` on its default grid (96, 160, 160) at (2.5, 2.0, 2.0) mm, with and
without contrast, over several seeds in one process; reports wall time and CPU time of that
process (CPU time is the honest single-core number when other jobs share the machine). Target:
< 1.5 s per default volume on one core. numpy/scipy may use one thread here (set
``OMP_NUM_THREADS=1`` to be sure).

Run: ``python benchmarks/bench_synthetic.py [--seeds 5] [--out benchmarks/results]``.
Writes ``synthetic.json`` and ``synthetic.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genesis.data.synthetic import SyntheticConfig, generate_chest_ct, generate_target_case  # noqa: E402
from genesis.fileio import write_report  # noqa: E402


def _time(fn, seeds):
    wall, cpu = [], []
    for seed in seeds:
        w, c = time.perf_counter(), time.process_time()
        fn(seed)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return {"wall_s_median": statistics.median(wall), "cpu_s_median": statistics.median(cpu), "n": len(seeds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    seeds = list(range(100, 100 + args.seeds))
    generate_chest_ct(0)  # warm-up: imports and first-call allocations
    cfg = SyntheticConfig()
    results = {
        "chest_ct_default": _time(lambda s: generate_chest_ct(s), seeds),
        "chest_ct_contrast": _time(lambda s: generate_chest_ct(s, contrast=True), seeds),
        "target_liver": _time(lambda s: generate_target_case(s, "liver"), seeds),
        "target_brain": _time(lambda s: generate_target_case(s, "brain"), seeds),
    }
    meta = {"shape": list(cfg.shape), "spacing": list(cfg.spacing), "python": platform.python_version(),
            "machine": platform.machine(), "processor": platform.processor()}
    out = Path(args.out)
    lines = [
        "# Synthetic generator speed",
        "",
        f"Default chest grid {tuple(cfg.shape)} voxels at {tuple(cfg.spacing)} mm; median over {args.seeds} seeds.",
        "",
        "| case | wall s | CPU s |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {k} | {v['wall_s_median']:.2f} | {v['cpu_s_median']:.2f} |" for k, v in results.items()]
    write_report(out, "synthetic", {"meta": meta, "results": results}, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
