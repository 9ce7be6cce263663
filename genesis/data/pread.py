"""Cached arrays read with ``pread``: no page of them is mapped into the process.

A cube sliced from a memory map maps the pages it touches into the process, where they count as
its (file-backed) RSS until they are unmapped. A :class:`~genesis.data.datasets.CubeDataset`
keeps ``data.resident_mb`` of volumes mapped; it reads every other volume, and its acceptance
map, through a :class:`PreadArray`: a cube is one ``pread`` per z plane (the cube's rows, full
width), copied by the kernel from the page cache. Nothing stays mapped, nothing is given back.

Why not map the pages in and give them back (``madvise(MADV_DONTNEED)``, the earlier bound)?
It costs more: CPU us per 32x64x64 cube, page cache read back from disk, 2-core VM
(``benchmarks/results/page_in.md``, ``python benchmarks/bench_page_in.py``): 64x128x128 volumes
218 with ``pread`` against 295 mapping in and out (55 from a map kept resident); 96x512x512
volumes 419 against 540 (70 resident).
"""

from __future__ import annotations

import math
import mmap
import os
import weakref
from typing import Any

import numpy as np

from genesis.errors import VolumeReadError

#: Whether this platform has ``os.preadv`` (POSIX); elsewhere every volume stays a memory map.
AVAILABLE = hasattr(os, "preadv")


class PreadArray:
    """A read-only C-ordered array stored at ``offset`` of the file ``path``, read on demand.

    Supports what the sampler does with a volume or an acceptance map: ``shape``, ``dtype``,
    ``ndim``, ``len``, indexing with integers and step-1 slices (a new array, or a numpy scalar),
    and ``np.asarray`` (the whole array); any other index reads the whole array first. A 3D box
    ``v[z0:z1, y0:y1, x0:x1]`` is one read per z plane (its rows, full width); a range of the
    first axis with everything else whole is one read. Holds one file descriptor, closed when
    the object goes away.

    Raises:
        VolumeReadError: the file is shorter than the array (changed since it was verified).
    """

    def __init__(self, path: str, dtype: Any, offset: int, shape: tuple[int, ...]) -> None:
        self.path = str(path)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        if not self.shape:
            raise ValueError("PreadArray needs at least one dimension")
        self.ndim = len(self.shape)
        self.nbytes = self.dtype.itemsize * math.prod(self.shape)
        fd = os.open(self.path, os.O_RDONLY)
        self._fd = fd
        self._closer = weakref.finalize(self, os.close, fd)
        size = os.fstat(fd).st_size
        if self.offset + self.nbytes > size:
            self.close()
            raise VolumeReadError(f"{self.path}: {size} bytes, shorter than its array ({self.offset} + "
                                  f"{self.nbytes}); the cache entry changed since it was verified")

    @classmethod
    def of_memmap(cls, array: np.ndarray) -> "PreadArray | None":
        """The same data as the memory map ``array``, read with ``pread``; None when ``array`` is
        not a C-ordered ``np.memmap`` of a whole file array (or the platform has no ``preadv``)."""
        if not AVAILABLE or not isinstance(array, np.memmap) or not array.flags.c_contiguous:
            return None
        path = getattr(array, "filename", None)
        if not path or not isinstance(array.base, mmap.mmap):  # a view of a memmap keeps the parent's offset
            return None
        return cls(path, array.dtype, int(array.offset), array.shape)

    def close(self) -> None:
        self._closer()

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"PreadArray({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self._rows(0, self.shape[0])
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        plain = all(isinstance(k, (slice, int, np.integer)) and not isinstance(k, (bool, np.bool_)) for k in key)
        if len(key) > self.ndim or not plain:
            return np.asarray(self)[key]  # fancy, boolean or odd indices: read everything, then index
        key = key + (slice(None),) * (self.ndim - len(key))
        first, rest = key[0], key[1:]
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            if step != 1:
                return np.asarray(self)[key]
            stop = max(stop, start)
        else:
            start = int(first) + (self.shape[0] if first < 0 else 0)
            if not 0 <= start < self.shape[0]:
                raise IndexError(f"index {int(first)} is out of bounds for axis 0 with size {self.shape[0]}")
            stop = start + 1
        second = rest[0] if rest else None
        if self.ndim == 3 and isinstance(second, slice) and second.indices(self.shape[1])[2] == 1:
            y0, y1, _ = second.indices(self.shape[1])
            block = self._box(start, stop, y0, max(y1, y0))[(slice(None), slice(None), rest[1])]
        else:
            block = self._rows(start, stop)[(slice(None), *rest)]
        return block if isinstance(first, slice) else block[0]

    def _rows(self, start: int, stop: int) -> np.ndarray:
        """Entries ``start:stop`` of the first axis: one contiguous read."""
        out = np.empty((stop - start, *self.shape[1:]), self.dtype)
        if out.size:
            self._read(out, self.offset + start * (self.nbytes // self.shape[0]))
        return out

    def _box(self, z0: int, z1: int, y0: int, y1: int) -> np.ndarray:
        """Planes ``z0:z1``, rows ``y0:y1``, every column: one read per plane (its rows are contiguous)."""
        nz, ny, nx = self.shape
        if y0 == 0 and y1 == ny:
            return self._rows(z0, z1)
        out = np.empty((z1 - z0, y1 - y0, nx), self.dtype)
        row = nx * self.dtype.itemsize
        for k in range(z1 - z0):
            self._read(out[k], self.offset + ((z0 + k) * ny + y0) * row)
        return out

    def _read(self, into: np.ndarray, at: int) -> None:
        """Fill the C-contiguous ``into`` from byte ``at`` of the file."""
        want = into.nbytes
        # the array itself is the buffer: casting a memoryview first cost 5% of a cube's read
        # (226-233 against 238-280 us per 32x64x64 cube of 96x512x512 volumes, one run)
        done = os.preadv(self._fd, [into], at) if want else 0
        if done == want:
            return
        view = memoryview(into).cast("B")
        while 0 < done < want:  # a short read (signals, some file systems): go on
            more = os.preadv(self._fd, [view[done:]], at + done)
            if more == 0:
                break
            done += more
        if done != want:
            raise VolumeReadError(f"{self.path}: ended at byte {at + done}, inside its array; "
                                  "the cache entry changed since it was verified")
