"""CPU training step: fp32 vs bf16 autocast, and the glibc allocator setting, with page faults.

Each configuration runs in a fresh process (the allocator is chosen by environment variables at
start-up): a U-Net training step (forward, MSE on the sigmoid, backward, SGD) on a fixed batch,
timed in CPU seconds per step after warm-up, with the minor page faults per step
(``resource.getrusage().ru_minflt``). Configurations run in interleaved rounds; medians are
reported. Writes ``<out>/cpu_training.json`` and ``.md``.

Allocator settings compared:

* ``default``: glibc as it comes. Freed blocks above the (dynamic) mmap threshold go back to the
  kernel, so every step maps fresh zeroed pages again: one minor fault per 4 KiB touched.
* ``glibc-tuned``: ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=17179869184``
  (fixed thresholds: large activations come from the heap and stay there between steps);
* ``jemalloc`` / ``tcmalloc``: ``LD_PRELOAD`` of the library when one is installed.

Run::

    python benchmarks/bench_cpu_training.py                  # width 8, batch 4, 32x64x64, 1 thread
    python benchmarks/bench_cpu_training.py --width 16 --steps 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TUNED = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "17179869184"}

_CHILD = """
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
from genesis.device import autocast
from genesis.models import create_model, unpack_output
width, batch, steps, precision = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
model = create_model("unet3d", in_channels=1, out_channels=1, base_width=width)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
x = torch.rand((batch, 1, 32, 64, 64)); target = torch.rand_like(x)
def step():
    with autocast(torch.device("cpu"), True, precision):
        logits = unpack_output(model(x)).output
    loss = torch.mean((torch.sigmoid(logits.float()) - target) ** 2)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return float(loss.detach())
for _ in range(2):
    step()
ru0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
for _ in range(steps):
    loss = step()
ru1, c1 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
print("RESULT " + json.dumps({"cpu_s_per_step": (c1 - c0) / steps, "minflt_per_step": (ru1.ru_minflt - ru0.ru_minflt) / steps,
      "loss": loss, "maxrss_mb": ru1.ru_maxrss / 1024}))
"""


def allocators() -> dict[str, dict[str, str]]:
    """Allocator configurations available here (name -> extra environment)."""
    found = {"default": {}, "glibc-tuned": dict(TUNED)}
    for name, pattern in (("jemalloc", "libjemalloc.so*"), ("tcmalloc", "libtcmalloc*.so*")):
        libs = sorted(glob.glob(f"/usr/lib/*/{pattern}") + glob.glob(f"/usr/lib/{pattern}")
                      + glob.glob(f"/usr/local/lib/{pattern}"))
        if libs:
            found[name] = {"LD_PRELOAD": libs[0]}
    return found


def run_child(env_extra: dict[str, str], width: int, batch: int, steps: int, precision: str, threads: int) -> dict:
    env = {**os.environ, **env_extra}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(width), str(batch), str(steps), precision, str(threads)],
                          env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(lines[-1][7:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    from genesis.device import cpu_supports_bf16
    from genesis.fileio import write_report

    configs = [(alloc, env, prec) for alloc, env in allocators().items() for prec in ("fp32", "bf16")]
    results: dict[str, list[dict]] = {f"{a}/{p}": [] for a, _, p in configs}
    for r in range(args.rounds):  # interleaved: every configuration sees the same machine load
        for alloc, env, prec in configs:
            res = run_child(env, args.width, args.batch_size, args.steps, prec, args.threads)
            results[f"{alloc}/{prec}"].append(res)
            print(f"round {r + 1} {alloc:>11} {prec}: {res['cpu_s_per_step']:.3f} CPU s/step, "
                  f"{res['minflt_per_step']:.0f} minor faults/step", flush=True)
    summary = {k: {"cpu_s_per_step": statistics.median(x["cpu_s_per_step"] for x in v),
                   "minflt_per_step": statistics.median(x["minflt_per_step"] for x in v),
                   "maxrss_mb": max(x["maxrss_mb"] for x in v), "runs": v} for k, v in results.items()}
    report = {"benchmark": "cpu_training", "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python benchmarks/bench_cpu_training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cpu_supports_bf16": cpu_supports_bf16(), "cpus": os.cpu_count(), "width": args.width,
              "batch": args.batch_size, "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
              "allocators": {k: v for k, v in allocators().items()}, "results": summary}
    base = summary["default/fp32"]
    lines = ["# CPU training step: precision and allocator", "",
             f"{report['date']}; width-{args.width} U-Net, batch {args.batch_size} of 32x64x64, {args.threads} thread(s), "
             f"{args.steps} timed steps after 2 warm-up, {args.rounds} interleaved rounds (medians, CPU time). "
             f"This CPU has native bf16 (AVX512-BF16/AMX): {report['cpu_supports_bf16']}.", "",
             f"Command: `{report['command']}`", "",
             "| Allocator | Precision | CPU s / step | vs default fp32 | Minor page faults / step | Peak RSS |",
             "|---|---|---:|---:|---:|---:|"]
    for key, v in summary.items():
        alloc, prec = key.split("/")
        lines.append(f"| {alloc} | {prec} | {v['cpu_s_per_step']:.3f} | {base['cpu_s_per_step'] / v['cpu_s_per_step']:.2f}x "
                     f"| {v['minflt_per_step']:.0f} | {v['maxrss_mb']:.0f} MB |")
    md = "\n".join(lines) + "\n"
    write_report(args.out, "cpu_training", report, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
