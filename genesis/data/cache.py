"""On-disk cache of preprocessed volumes (.npy, read back as read-only memory maps).

Key = sha256 of (content fingerprint of the source files + preprocessing parameters + a format
version). The fingerprint hashes the *bytes* of every file that makes up the volume: all DICOM
files of the folder, the ``.raw``/``.zraw`` of an ``.mhd``, the data file of an ``.nhdr``.

So that a cache hit does not read the source again, each file's hash is remembered in a small
index entry keyed by (absolute path, size, mtime_ns), and each volume's fingerprint under the
stamps of all its files: on a second run only ``stat`` is called (plus one small JSON read).
Editing a file changes its size or mtime, so it is hashed again and the key changes. (A rewrite
of the same size within the file system's mtime resolution would go unnoticed: the price of not
reading the bytes.) Entries and arrays are written atomically (:mod:`genesis.fileio`), so
parallel workers may race harmlessly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from genesis.errors import InputFileError
from genesis.fileio import atomic_write, atomic_write_text

#: Bumped when the meaning of cached arrays changes (invalidates every entry).
CACHE_FORMAT_VERSION = 1
_CHUNK = 1 << 20


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _header_data_files(header: Path, keys: tuple[str, ...]) -> list[Path]:
    """Data files named by a text header (MetaImage ``ElementDataFile``, NRRD ``data file``).

    Only locates the companion file for hashing (the pixels are read by SimpleITK). When the
    header lists files by pattern/LIST, the whole folder is hashed, which is conservative.
    """
    try:
        text = header.read_bytes()[:65536].decode("latin-1")
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


class VolumeCache:
    """Preprocessed arrays under ``root``, plus the file-hash index that makes hits cheap.

    Layout: ``root/arrays/ab/<key>.npy``, ``root/files/cd/<sha256(abs path)>.json`` (file hashes)
    and ``root/volumes/ef/<sha256(stamps)>.json`` (volume fingerprints).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hash_calls = 0  # number of files hashed from their bytes (tests check cache hits)

    # ---- file fingerprints -------------------------------------------------------------------
    def file_hash(self, path: str | Path) -> str:
        """sha256 of a file's bytes, from the (path, size, mtime_ns) index when still valid."""
        path = Path(path).resolve()
        try:
            st = path.stat()
        except OSError as exc:
            raise InputFileError(f"cannot stat ({exc.strerror})", path) from exc
        entry = self.root / "files" / self._shard(hashlib.sha256(str(path).encode()).hexdigest(), ".json")
        stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        try:
            known = json.loads(entry.read_text())
            if all(known.get(k) == v for k, v in stamp.items()):
                return str(known["sha256"])
        except (OSError, ValueError, KeyError):
            pass
        self.hash_calls += 1
        digest = _sha256_file(path)
        atomic_write_text(entry, json.dumps({**stamp, "sha256": digest}))
        return digest

    def fingerprint(self, path: str | Path) -> str:
        """Content fingerprint of the whole volume at ``path`` (see :func:`volume_files`).

        A hit costs one ``stat`` per file and one small JSON read: the fingerprint is remembered
        under the (path, names, sizes, mtimes) of all the volume's files.
        """
        base = Path(path).resolve()
        root = base if base.is_dir() else base.parent
        files = volume_files(base)
        try:
            stamps = [(os.path.relpath(f.resolve(), root), *_stamp(f)) for f in files]
        except OSError as exc:
            raise InputFileError(f"cannot stat the volume's files ({exc})", path) from exc
        stamp_key = hashlib.sha256(json.dumps([str(base), stamps]).encode()).hexdigest()
        entry = self.root / "volumes" / self._shard(stamp_key, ".json")
        try:
            return str(json.loads(entry.read_text())["fingerprint"])
        except (OSError, ValueError, KeyError):
            pass
        parts = [f"{name}:{self.file_hash(f)}" for (name, *_), f in zip(stamps, files)]
        digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
        atomic_write_text(entry, json.dumps({"path": str(base), "fingerprint": digest}))
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

    def path_for(self, key_parts: Any) -> Path:
        return self.root / "arrays" / self._shard(self.key(key_parts), ".npy")

    def get(self, key_parts: Any) -> np.ndarray | None:
        """The cached array (read-only memory map) or None when absent or unreadable."""
        path = self.path_for(key_parts)
        if not path.exists():
            return None
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed and overwritten

    def put(self, key_parts: Any, array: np.ndarray) -> np.ndarray:
        """Store ``array`` atomically and return it as a memory map."""
        path = self.path_for(key_parts)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle: np.save(path) would append ".npy"
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

        atomic_write(path, write)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def get_or_compute(self, key_parts: Any, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for ``key_parts``, computing and storing it on a miss.

        Args:
            key_parts: JSON-able description (e.g. ``{"source": fingerprint, "preprocess": {...}}``).
            compute: called only on a miss; returns the array to cache.
        Returns:
            A read-only memory map of the array.
        """
        hit = self.get(key_parts)
        if hit is not None:
            return hit
        return self.put(key_parts, compute())
