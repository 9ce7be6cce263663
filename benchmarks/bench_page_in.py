"""What a cube costs when its volume is not kept mapped: the reason behind ``genesis.data.pread``.

A process that keeps at most ``data.resident_mb`` of cached volumes mapped must read the cubes of
the other volumes some other way. Two ways, against the cube copied from a map kept resident:

* ``map in, give back``: slice the memory map (the pages are mapped in by page faults), then
  ``madvise(MADV_DONTNEED)`` the volume (the earlier bound of ``CubeDataset``);
* ``pread``: :class:`genesis.data.pread.PreadArray`, one ``pread`` per z plane of the cube.

Volumes are written as ``.npy`` files like cache entries, then dropped from the page cache
(``posix_fadvise(DONTNEED)`` after ``fsync``) and read back once, as a later run finds them: how
pages came into the page cache changes what mapping them costs (pages written by this process
are held in large folios, pages read back from disk by page faults are not). CPU microseconds per
cube, median of ``--repeats`` passes over the same random cubes; a pass first touches every cube.

Run::

    python benchmarks/bench_page_in.py            # ~1 minute on 2 busy cores, ~1.2 GB in a temp dir
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from genesis.data.pread import AVAILABLE, PreadArray
from genesis.fileio import write_report

#: (volume shape, number of volumes): the shape of the scans study of issue 27, and a thin-slab
#: chest CT at full in-plane size.
CASES = (((64, 128, 128), 50), ((96, 512, 512), 8))
CROP = (32, 64, 64)
CUBES = 2000


def _write(folder: Path, shape: tuple[int, int, int], n: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        path = folder / f"v{i:03d}.npy"
        with open(path, "wb") as handle:
            np.save(handle, np.random.default_rng(i).random(shape, dtype=np.float32))
            handle.flush()
            os.fsync(handle.fileno())
        paths.append(path)
    return paths


def _drop_from_page_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _pass(way: str, maps: list[np.memmap], reads: list[PreadArray], picks: list[tuple[int, int, int, int]],
          out: np.ndarray) -> float:
    d, h, w = CROP
    start = time.process_time()
    for v, z, y, x in picks:
        box = (slice(z, z + d), slice(y, y + h), slice(x, x + w))
        if way == "pread":
            out[...] = reads[v][box]
        else:
            out[...] = maps[v][box]
            if way == "map in, give back":
                maps[v]._mmap.madvise(mmap.MADV_DONTNEED)
    return (time.process_time() - start) / len(picks) * 1e6


def measure(workdir: Path, repeats: int) -> list[dict]:
    rows = []
    for shape, n in CASES:
        paths = _write(workdir / "x".join(map(str, shape)), shape, n)
        _drop_from_page_cache(paths)
        maps = [np.load(p, mmap_mode="r") for p in paths]
        reads = [PreadArray.of_memmap(m) for m in maps]
        rng = np.random.default_rng(0)
        picks = [(int(rng.integers(n)), *(int(rng.integers(s - c + 1)) for s, c in zip(shape, CROP)))
                 for _ in range(CUBES)]
        out = np.empty(CROP, np.float32)
        _pass("resident map", maps, reads, picks, out)  # reads the pages back from disk (faults)
        row = {"shape": list(shape), "volumes": n, "crop": list(CROP), "cubes": CUBES}
        for way in ("resident map", "map in, give back", "pread"):
            _pass(way, maps, reads, picks, out)  # every cube's pages mapped or read once
            runs = [_pass(way, maps, reads, picks, out) for _ in range(repeats)]
            row[way] = {"median_us": statistics.median(runs), "runs_us": runs}
            if way == "map in, give back":
                for m in maps:
                    m._mmap.madvise(mmap.MADV_DONTNEED)
        rows.append(row)
        del maps, reads
        shutil.rmtree(workdir / "x".join(map(str, shape)))
    return rows


def markdown(report: dict) -> str:
    lines = ["# A cube of a volume that is not kept mapped", "",
             f"{report['date']}: CPU microseconds per {'x'.join(map(str, CROP))} cube (float32), random cubes, "
             f"median of {report['repeats']} passes; page cache filled by reading the files back from disk. "
             f"Load {report['load_avg_1min']} at start, {report['cpus']} usable CPUs.", "",
             f"Command: `{report['command']}`", "",
             "| Volumes | resident map | map in, give back (`MADV_DONTNEED`) | `pread` per plane (`PreadArray`) |",
             "|---|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['volumes']} x {'x'.join(map(str, row['shape']))} | "
                     f"{row['resident map']['median_us']:.0f} | {row['map in, give back']['median_us']:.0f} | "
                     f"{row['pread']['median_us']:.0f} |")
    lines += ["", "`CubeDataset` keeps the first volumes that fit in `data.resident_mb` mapped and reads the others "
              "with `pread`: nothing beyond the bound is ever mapped, so nothing has to be given back."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    if not AVAILABLE or not hasattr(os, "posix_fadvise"):
        print("needs os.preadv and os.posix_fadvise (Linux)", file=sys.stderr)
        return 2
    import datetime as dt

    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-page-in-"))
    try:
        rows = measure(workdir, args.repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "page_in", "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python benchmarks/bench_page_in.py" + (f" --repeats {args.repeats}" if args.repeats != 3
                                                                  else ""),
              "repeats": args.repeats, "cpus": len(os.sched_getaffinity(0)),
              "load_avg_1min": round(os.getloadavg()[0], 2), "rows": rows}
    write_report(args.out, "page_in", report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
