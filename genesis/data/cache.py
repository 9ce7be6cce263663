"""On-disk cache of preprocessed volumes (.npy, read back as read-only memory maps).

Key = sha256 of (content fingerprint of the source files + preprocessing parameters + a format
version). The fingerprint hashes the *bytes* of every file that makes up the volume: all DICOM
files of the folder, the ``.raw``/``.zraw`` of an ``.mhd``, the data file of an ``.nhdr``.

So that a cache hit does not read the source again, small index entries remember each file's
hash and each volume's fingerprint under the file's *stamp*: absolute path, size, mtime_ns and
a hash of its first and last 16 KiB (:func:`file_stamp`). On a second run only ``stat`` and
those 32 KiB per file are read, plus one small JSON. Editing a file changes its size or mtime
(and, almost always, its edges), so it is hashed again and the key changes. Every index entry
repeats what it is keyed by and is checked against it, so an index file copied over another
(pointing at another volume's entry) is detected, warned about and rebuilt.

The key and the stored voxels come from the same bytes: a build compares every file's
(inode, size, mtime_ns, ctime_ns) before the fingerprint and after the voxels were read
(:func:`volume_state`); a file that changed in between is read again, never stored under the
other content's key (see :meth:`genesis.data.sources.FileVolumeSource`). Entries and arrays are
written atomically (:mod:`genesis.fileio`), and a per-entry file lock makes concurrent builders
(DDP ranks, workers, ``--prepare-only``) compute each entry once.

Only regular files are ever opened: a FIFO, socket or device among a volume's files is an
:class:`InputFileError` found by ``stat`` before any ``open`` (an ``open`` of a FIFO blocks).

Integrity: every array has a checksum record (shape, dtype, size, digests of the file's bytes).
The first open in a process verifies it; a damaged entry (bit flips, a truncated or 0-byte
file, another entry's array, a header with swapped shape) is rebuilt with a warning, never fed
to training.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import stat
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import numpy as np

from genesis.errors import GenesisWarning, InputFileError
from genesis.fileio import atomic_write, atomic_write_text

#: Bumped when the meaning of cached arrays changes (invalidates every entry).
#: 2: every entry has a checksum record (``<key>.json``).
CACHE_FORMAT_VERSION = 2
_CHUNK = 1 << 20


#: Bytes hashed at each end of a file for its stamp (the NIfTI/DICOM header, a gzip trailer's
#: CRC and length, the last voxels): 32 KiB read per file on a cache hit.
_EDGE = 16 * 1024
#: Version of the index entries' layout (part of every index key).
INDEX_FORMAT = 1


class FileChangedError(InputFileError):
    """A file changed while it was being read (its stamp before and after differ)."""


def regular_stat(path: str | Path) -> os.stat_result:
    """``os.stat`` of ``path``, refusing anything but a regular file without opening it.

    Raises:
        InputFileError: missing, not accessible, or a FIFO, socket, device or folder (opening a
            FIFO would block until a writer appears).
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputFileError(f"cannot stat ({exc.strerror or exc})", path) from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device?)"
        raise InputFileError(f"{kind}; genesis reads only regular files", path)
    return st


def open_regular(path: str | Path) -> BinaryIO:
    """An unbuffered binary handle of a regular file; never blocks on what is not one.

    ``stat`` refuses FIFOs and devices before the ``open``; ``O_NONBLOCK`` and an ``fstat`` of
    the opened file close the gap where the path is replaced by a FIFO in between.
    """
    regular_stat(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InputFileError(f"cannot open ({exc.strerror or exc})", path) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputFileError("not a regular file (replaced while opened); genesis reads only regular files", path)
    return os.fdopen(fd, "rb", buffering=0)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open_regular(path) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _edges_hash(path: Path, size: int) -> str:
    """sha256 of the first and last :data:`_EDGE` bytes (the whole file when it is small)."""
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        digest.update(handle.read(2 * _EDGE if size <= 2 * _EDGE else _EDGE))
        if size > 2 * _EDGE:
            handle.seek(size - _EDGE)
            digest.update(handle.read(_EDGE))
    return digest.hexdigest()


def file_stamp(path: str | Path) -> dict[str, Any]:
    """What the persistent indexes key a file by: absolute path, size, mtime_ns, edges hash.

    Raises:
        InputFileError: not a regular file (see :func:`regular_stat`).
    """
    path = Path(path).absolute()
    st = regular_stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "edges": _edges_hash(path, st.st_size)}


def _state(path: Path) -> tuple[int, int, int, int, int]:
    st = regular_stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def volume_state(path: str | Path) -> tuple:
    """The (name, device, inode, size, mtime_ns, ctime_ns) of every file of a volume.

    Compared before and after a read: any write to a file changes its ctime (which, unlike the
    mtime, cannot be set back), a replaced file has another inode, an added or removed DICOM
    slice changes the list. Equal states mean every byte read belongs to one version.
    """
    return tuple((str(f), *_state(f)) for f in volume_files(path))


def _header_data_files(header: Path, keys: tuple[str, ...]) -> list[Path]:
    """Data files named by a text header (MetaImage ``ElementDataFile``, NRRD ``data file``).

    Only locates the companion file for hashing (the pixels are read by SimpleITK). When the
    header lists files by pattern/LIST, the whole folder is hashed, which is conservative.
    """
    try:
        with open_regular(header) as handle:
            text = handle.read(65536).decode("latin-1")
    except OSError as exc:
        raise InputFileError(f"cannot read header ({exc})", header) from exc
    for line in text.splitlines():
        match = re.match(r"\s*([A-Za-z ]+?)\s*[:=]=?\s*(.*?)\s*$", line)
        if not match or match.group(1).lower() not in keys:
            continue
        value = match.group(2)
        if value.upper() == "LOCAL":
            return []
        if " " in value or value.upper().startswith("LIST") or "%" in value:
            return sorted(p for p in header.parent.iterdir() if p.is_file() and p != header)
        return [header.parent / value]
    return []


def volume_files(path: str | Path) -> list[Path]:
    """Every file whose bytes make up the volume at ``path`` (sorted, the path itself first).

    Raises:
        InputFileError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError("no such file or directory", path)
    if path.is_dir():  # a DICOM folder: all its (non-hidden) files, whichever series
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    name = path.name.lower()
    extra: list[Path] = []
    if name.endswith(".mhd"):
        extra = _header_data_files(path, ("elementdatafile",))
    elif name.endswith(".nhdr"):
        extra = _header_data_files(path, ("data file", "datafile"))
    elif name.endswith(".dcm"):
        extra = sorted(p for p in path.parent.iterdir() if p.is_file() and p != path and not p.name.startswith("."))
    return [path, *extra]


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where preprocessed volumes go when no cache folder is given: ``<genesis cache>/volumes``.

    ``<genesis cache>`` follows the weights' rule: ``$GENESIS_CACHE``, else
    ``$XDG_CACHE_HOME/genesis``, else ``~/.cache/genesis``.
    """
    env = os.environ if env is None else env
    if env.get("GENESIS_CACHE"):
        base = Path(env["GENESIS_CACHE"]).expanduser()
    elif env.get("XDG_CACHE_HOME"):
        base = Path(env["XDG_CACHE_HOME"]).expanduser() / "genesis"
    else:
        base = Path.home() / ".cache" / "genesis"
    return base / "volumes"


def volume_stamp(path: str | Path) -> dict[str, Any]:
    """What the persistent indexes key a volume by: its path and the :func:`file_stamp` (size,
    mtime_ns, edges hash) of each of its files, named relative to the volume's folder.

    Raises:
        InputFileError: the path is missing, or one of its files is not a regular file.
    """
    base = Path(path).resolve()
    root = base if base.is_dir() else base.parent
    files = []
    for f in volume_files(base):
        st = file_stamp(f)
        files.append([os.path.relpath(f.resolve(), root), st["size"], st["mtime_ns"], st["edges"]])
    return {"v": INDEX_FORMAT, "volume": str(base), "files": files}


def _canonical(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples as lists), for comparing with a stored entry."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _fingerprint_of(parts: list[list[str]]) -> str:
    """The volume fingerprint: sha256 of the ``name:sha256`` lines of its files."""
    return hashlib.sha256("\n".join(f"{name}:{digest}" for name, digest in parts).encode()).hexdigest()


class VolumeCache:
    """Preprocessed arrays under ``root``, plus the indexes that make hits cheap.

    Layout: ``root/arrays/ab/<key>.npy`` with its checksum record ``<key>.json`` (key, shape,
    dtype, size, sha256, crc32 and, with ``xxhash`` installed, xxh3_128 of the file's bytes);
    index entries ``root/<index>/cd/<sha256(parts)>.json`` holding ``{"parts", "value"}``:
    ``files/`` (a file's sha256 under its :func:`file_stamp`), ``volumes/`` (a volume's
    fingerprint under its :func:`volume_stamp`) and ``scans/`` (what data discovery learnt
    from a scan, see :mod:`genesis.data.discovery`). Other derived arrays (the sampler's
    acceptance maps) go to their own folder, e.g. ``root/acceptance/``, with the same records.

    Entries are verified against their record on the first open in each process (the set of
    verified files travels with the object to loader workers, so they do not hash again).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hash_calls = 0  # number of files hashed from their bytes (tests check cache hits)
        self.builds = 0  # number of entries written by this object
        self._verified: dict[str, tuple[int, int, int]] = {}  # path -> (inode, size, mtime_ns)

    # ---- small index entries -----------------------------------------------------------------
    def index_path(self, index: str, parts: Any) -> Path:
        """The JSON file of the entry keyed by ``parts`` in ``root/index``."""
        text = json.dumps(parts, sort_keys=True, default=str)
        return self.root / index / self._shard(hashlib.sha256(text.encode()).hexdigest(), ".json")

    def index_get(self, index: str, parts: Any) -> Any:
        """The value stored under ``parts`` (None when absent or damaged).

        The entry repeats its ``parts``: one whose parts differ (an index file copied over
        another, pointing at another volume) or that cannot be parsed gives a
        :class:`GenesisWarning` and None, so the caller recomputes and rewrites it.
        """
        path = self.index_path(index, parts)
        try:
            text = path.read_text()
        except OSError:
            return None
        try:
            entry = json.loads(text)
            if entry["parts"] == _canonical(parts):
                return entry["value"]
            problem = "it belongs to another file or volume"
        except (ValueError, KeyError, TypeError):
            problem = "unreadable"
        warnings.warn(f"{path}: damaged cache index entry ({problem}); rebuilding it", GenesisWarning, stacklevel=3)
        return None

    def index_put(self, index: str, parts: Any, value: Any) -> None:
        """Store ``value`` under ``parts`` (atomically)."""
        atomic_write_text(self.index_path(index, parts), json.dumps({"parts": _canonical(parts), "value": value}))

    # ---- file fingerprints -------------------------------------------------------------------
    def file_hash(self, path: str | Path, stamp: dict[str, Any] | None = None) -> str:
        """sha256 of a file's bytes, from the index when its :func:`file_stamp` is unchanged.

        Raises:
            InputFileError: not a regular file.
            FileChangedError: the file changed while it was hashed (nothing is stored).
        """
        path = Path(path).resolve()
        before = _state(path)
        stamp = stamp if stamp is not None else file_stamp(path)
        known = self.index_get("files", stamp)
        if isinstance(known, dict) and isinstance(known.get("sha256"), str):
            return known["sha256"]
        self.hash_calls += 1
        digest = _sha256_file(path)
        after = _state(path)
        if after != before or (after[2], after[3]) != (stamp["size"], stamp["mtime_ns"]):
            raise FileChangedError("changed while it was hashed", path)
        self.index_put("files", stamp, {"sha256": digest})
        return digest

    def fingerprint(self, path: str | Path) -> str:
        """Content fingerprint of the whole volume at ``path`` (see :func:`volume_files`).

        A hit costs a ``stat`` and a 32 KiB read per file and one small JSON read: the
        fingerprint is remembered under the :func:`volume_stamp`. An index entry that does not
        add up (its files or its fingerprint differ from what it is keyed by) is rebuilt with a
        warning.

        Raises:
            InputFileError: a file of the volume is missing or not a regular file.
            FileChangedError: a file changed while it was hashed.
        """
        base = Path(path).resolve()
        before = volume_state(base)
        stamp = volume_stamp(base)
        names = [f[0] for f in stamp["files"]]
        known = self.index_get("volumes", stamp)
        if isinstance(known, dict):
            try:
                parts = [[str(n), str(d)] for n, d in known["files"]]
                if [n for n, _ in parts] == names and known["fingerprint"] == _fingerprint_of(parts):
                    return str(known["fingerprint"])
            except (KeyError, TypeError, ValueError):
                pass
            warnings.warn(f"{self.index_path('volumes', stamp)}: damaged cache index entry (its fingerprint does "
                          "not match its files); rebuilding it", GenesisWarning, stacklevel=2)
        root = base if base.is_dir() else base.parent
        parts = [[name, self.file_hash(root / name, {"path": str((root / name).resolve()), "size": size,
                                                     "mtime_ns": mtime, "edges": edges})]
                 for name, size, mtime, edges in stamp["files"]]
        if volume_state(base) != before:
            raise FileChangedError("changed while it was hashed", base)
        digest = _fingerprint_of(parts)
        self.index_put("volumes", stamp, {"files": parts, "fingerprint": digest})
        return digest

    # ---- arrays ------------------------------------------------------------------------------
    @staticmethod
    def key(key_parts: Any) -> str:
        """sha256 of the JSON of ``key_parts`` (dicts sorted; tuples as lists) and the format version."""
        text = json.dumps({"v": CACHE_FORMAT_VERSION, "parts": key_parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @staticmethod
    def _shard(digest: str, suffix: str) -> str:
        return f"{digest[:2]}/{digest}{suffix}"

    def path_for(self, key_parts: Any, folder: str = "arrays") -> Path:
        """The ``.npy`` of an entry (its checksum record is the ``.json`` next to it)."""
        return self.root / folder / self._shard(self.key(key_parts), ".npy")

    def get(self, key_parts: Any, warn: bool = True, folder: str = "arrays") -> np.ndarray | None:
        """The verified entry as a read-only memory map, or None when absent or damaged.

        The first open of an entry in a process checks the whole file against its checksum
        record (see :func:`verify_entry`); later opens of the same file (same inode, size and
        mtime) only ``stat`` it. A damaged entry gives a :class:`GenesisWarning` and None, so the
        caller rebuilds it (``warn=False``: None without the warning).
        """
        path = self.path_for(key_parts, folder)
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._verified.get(str(path)) != stamp:
            problem, array = _check_entry(path, self.key(key_parts))
            if problem is not None:
                if warn:
                    warnings.warn(f"{path}: damaged cache entry ({problem}); rebuilding it", GenesisWarning,
                                  stacklevel=2)
                self._verified.pop(str(path), None)
                return None
            self._verified[str(path)] = stamp
            return array
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError):  # replaced between the check and the map
            return None

    def put(self, key_parts: Any, array: np.ndarray, folder: str = "arrays") -> np.ndarray:
        """Store ``array`` atomically with its checksum record and return it as a memory map."""
        path = self.path_for(key_parts, folder)
        array = np.ascontiguousarray(array)
        record: dict[str, Any] = {}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle: np.save(path) would append ".npy"
                np.save(handle, array, allow_pickle=False)
            record.update(checksums_of(tmp))

        atomic_write(path, write)
        self.builds += 1
        meta = {"key": self.key(key_parts), "shape": list(array.shape), "dtype": array.dtype.str,
                "size": path.stat().st_size, "checksums": record}
        # The record goes second: an .npy without (or with a stale) record is rebuilt, never trusted.
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta))
        st = path.stat()
        self._verified[str(path)] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def get_or_compute(self, key_parts: Any, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key_parts``, computing and storing it on a miss.

        Concurrent processes (DDP ranks, loader workers, ``--prepare-only`` pools) building the
        same entry take a per-entry file lock, so each entry is computed once; whoever waited
        finds it built.

        Args:
            key_parts: JSON-able description (e.g. ``{"source": fingerprint, "preprocess": {...}}``).
            compute: called only on a miss; returns the array to cache.
        Returns:
            A read-only memory map of the array.
        """
        hit = self.get(key_parts)
        if hit is not None:
            return hit
        path = self.path_for(key_parts)
        with _entry_lock(path.with_suffix(".lock")):
            hit = self.get(key_parts, warn=False)  # built by another process while we waited
            if hit is not None:
                return hit
            return self.put(key_parts, compute())

    def get_or_compute_group(self, key_parts: Any, names: tuple[str, ...],
                             compute: Callable[[], tuple[np.ndarray, ...]],
                             folder: str = "arrays") -> tuple[np.ndarray, ...]:
        """Several arrays computed together (one entry each, keyed ``{"group": key_parts,
        "part": name}``, under ``root/folder``), each stored and verified like
        :meth:`get_or_compute`'s.

        When any of them is absent or damaged, all are computed once (under one lock) and the
        missing or damaged ones rewritten.

        Returns:
            Read-only memory maps, in the order of ``names``.
        """
        parts = [{"group": key_parts, "part": name} for name in names]
        hits = [self.get(p, folder=folder) for p in parts]
        if all(h is not None for h in hits):
            return tuple(hits)  # type: ignore[arg-type]
        with _entry_lock(self.path_for(parts[0], folder).with_suffix(".lock")):
            hits = [self.get(p, warn=False, folder=folder) for p in parts]
            if all(h is not None for h in hits):
                return tuple(hits)  # type: ignore[arg-type]
            arrays = compute()
            return tuple(h if h is not None else self.put(p, a, folder) for p, h, a in zip(parts, hits, arrays))

    def group_paths(self, key_parts: Any, names: tuple[str, ...], folder: str = "arrays") -> tuple[Path, ...]:
        """The ``.npy`` files of :meth:`get_or_compute_group`'s entries."""
        return tuple(self.path_for({"group": key_parts, "part": name}, folder) for name in names)


# ---- checksums -------------------------------------------------------------------------------
class _Crc32:
    """``zlib.crc32`` behind the hashlib interface (update / hexdigest)."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


def _hashers() -> dict[str, Any]:
    """sha256 always (portable, collision-resistant), crc32 always (zlib: 6.4 GB/s against 2.0
    GB/s for sha256 and 1.2 GB/s for blake2b on one core here, so that verifying every entry on
    a run's first open stays at about a millisecond per 4 MB scan), and xxh3_128 when
    ``xxhash`` is installed (8.8 GB/s). The checksums guard against damage, not tampering."""
    hashers: dict[str, Any] = {"sha256": hashlib.sha256(), "crc32": _Crc32()}
    xxhash = _xxhash()
    if xxhash is not None:
        hashers["xxh3_128"] = xxhash.xxh3_128()
    return hashers


@functools.lru_cache(maxsize=None)
def _xxhash() -> Any:
    """The ``xxhash`` module or None, looked up once (a failed import searches sys.path every
    time: 30 searches per volume on a run's verification pass)."""
    try:
        import xxhash
    except ImportError:
        return None
    return xxhash


#: Algorithms verification prefers, fastest first (the first one the record and this machine have).
_VERIFY_ORDER = ("xxh3_128", "crc32", "sha256")


def checksums_of(path: Path, algorithms: tuple[str, ...] | None = None) -> dict[str, str]:
    """Hex digests of a file's bytes (all available algorithms, or only ``algorithms``)."""
    hashers = {k: v for k, v in _hashers().items() if algorithms is None or k in algorithms}
    buffer = bytearray(_CHUNK * 4)
    view = memoryview(buffer)
    with open_regular(path) as handle:  # plain reads: hashing must not grow the RSS
        while True:
            n = handle.readinto(buffer)
            if not n:
                break
            for h in hashers.values():
                h.update(view[:n])
    return {name: h.hexdigest() for name, h in hashers.items()}


def verify_entry(path: Path, key: str) -> str | None:
    """What is wrong with a cache entry (None: nothing).

    Checks, cheapest first: the checksum record exists and belongs to this key; the file size;
    the checksum of every byte (header included, so a swapped shape or dtype is caught); the
    shape and dtype ``np.load`` reads against the record.
    """
    return _check_entry(path, key)[0]


def _check_entry(path: Path, key: str) -> tuple[str | None, np.ndarray | None]:
    """:func:`verify_entry`'s verdict and, when the entry is sound, its memory map (the header
    is parsed once: ``np.load`` was a tenth of a run's verification pass when called twice)."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        key_ok, size, shape, dtype, sums = meta["key"] == key, int(meta["size"]), meta["shape"], meta["dtype"], meta["checksums"]
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable checksum record", None
    if not key_ok:
        return "its checksum record belongs to another entry", None
    actual = path.stat().st_size
    if actual != size:
        return f"{actual} bytes instead of {size}", None
    available = _hashers()
    algo = next((a for a in _VERIFY_ORDER if a in sums and a in available), None)
    if algo is None:
        return "no usable checksum in its record", None
    try:
        actual_sum = checksums_of(path, (algo,))[algo]
    except InputFileError as exc:
        return f"unreadable ({exc})", None
    if actual_sum != sums[algo]:
        return f"{algo} checksum mismatch", None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return f"unreadable ({exc})", None
    if list(array.shape) != list(shape) or array.dtype.str != dtype:
        return f"shape/dtype {array.shape} {array.dtype.str} instead of {tuple(shape)} {dtype}", None
    return None, array


@contextlib.contextmanager
def _entry_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (POSIX ``flock``); a no-op where there is none."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builders may duplicate work; atomic writes keep it safe
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
