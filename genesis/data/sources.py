"""Volume sources: an indexable set of preprocessed volumes ([0, 1] float32, (z, y, x)).

A source is what :class:`~genesis.data.datasets.CubeDataset` samples from: files on disk
(:class:`FileVolumeSource`, optionally cached), the synthetic generator
(:class:`SyntheticVolumeSource`), or whatever a user passes on the command line
(:func:`volume_source_from_arg`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from genesis.data.cache import FileChangedError, VolumeCache, regular_stat, volume_state
from genesis.data.preprocess import PreprocessConfig, preprocess
from genesis.data.public.folder import VolumeRecord
from genesis.data.public.manifest import MANIFEST_SUFFIXES, read_manifest
from genesis.errors import DatasetLayoutError, InputFileError
from genesis.io.readers import load_volume, volume_suffix

#: The arrays of a stored acceptance map (see :func:`genesis.data.sampler.encode_acceptance`).
_ACCEPTANCE_PARTS = ("meta", "data")

#: Number of synthetic volumes when no data is given.
DEFAULT_SYNTHETIC_N = 8

#: Reads of a volume that keeps changing while it is read before that is an error.
READ_ATTEMPTS = 3


@runtime_checkable
class VolumeSource(Protocol):
    """An indexable collection of normalised volumes."""

    is_synthetic: bool

    def __len__(self) -> int: ...

    def load(self, i: int) -> np.ndarray:
        """Volume ``i`` as float32 [0, 1], (z, y, x)."""
        ...

    def name(self, i: int) -> str:
        """A human-readable identifier of volume ``i`` (file path, synthetic seed)."""
        ...


def _config_dict(cfg: Any) -> Any:
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg


def _check_index(i: int, n: int) -> int:
    if not 0 <= i < n:
        raise IndexError(f"volume index {i} out of range for a source of {n} volumes")
    return int(i)


class _CachedLoading:
    """Loading through a :class:`VolumeCache`: memory maps, never whole volumes in memory.

    Subclasses define ``cache``, ``_compute(i)`` (the in-memory array) and ``_key(i)`` (the
    cache key). :meth:`prepare` builds or verifies the entry of volume ``i`` once and remembers
    its file, so later loads, here or in loader workers that inherit or unpickle the source,
    only map it: no hashing, no fingerprinting, no ``stat`` of DICOM folders per cube.
    """

    cache: VolumeCache | None
    _entries: dict[int, str]
    _layouts: dict[int, tuple[str, str, int, tuple[int, ...]]]  # entry, dtype, offset, shape
    _acceptance: dict[int, tuple]  # sampler tag, layouts of the stored acceptance arrays

    @property
    def memory_mapped(self) -> bool:
        """Whether :meth:`load` returns memory maps (a cache is set): pages shared between processes."""
        return self.cache is not None

    def _key(self, i: int) -> Any:
        raise NotImplementedError

    def _compute(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, i: int) -> str | None:
        """Build (or verify) the cache entry of volume ``i``; returns its file (None: no cache)."""
        if self.cache is None:
            return None
        i = _check_index(i, len(self))  # type: ignore[arg-type]
        if i not in self._entries:
            key, array = self._build(i)
            self._entries[i] = str(self.cache.path_for(key))
            self._remember_layout(i, self._entries[i], array)
        return self._entries[i]

    def _build(self, i: int) -> tuple[Any, np.ndarray]:
        """(key, array) of volume ``i``'s entry, verified or computed and stored."""
        assert self.cache is not None
        key = self._key(i)
        return key, self.cache.get_or_compute(key, lambda: self._compute(i))

    def entry_path(self, i: int) -> str:
        """Where the cache entry of volume ``i`` is (whether or not it exists yet)."""
        assert self.cache is not None
        return str(self.cache.path_for(self._key(_check_index(i, len(self)))))  # type: ignore[arg-type]

    def adopt(self, i: int, entry: str, layout: tuple | None = None) -> None:
        """Record the entry file (and its array layout) of volume ``i`` that another process
        prepared and verified."""
        i = _check_index(i, len(self))  # type: ignore[arg-type]
        self._entries[i] = str(entry)
        if layout is not None and layout[0] == str(entry):
            self._layouts[i] = tuple(layout)  # type: ignore[assignment]

    def load(self, i: int) -> np.ndarray:
        """Volume ``i`` as float32 [0, 1] (z, y, x): a read-only memory map when cached.

        Raises:
            VolumeReadError / DicomSeriesError: the file cannot be used (see :func:`load_volume`).
        """
        i = _check_index(i, len(self))  # type: ignore[arg-type]
        if self.cache is None:
            return self._compute(i)
        layout = self._layouts.get(i)
        entry = self._entries.get(i)
        if layout is not None and layout[0] == entry:
            try:
                # The header was read once: np.memmap with its offset costs ~70 us against
                # ~250 us for np.load(mmap_mode="r"), which parses the header every time.
                return np.memmap(entry, dtype=np.dtype(layout[1]), mode="r", offset=layout[2], shape=layout[3])
            except (OSError, ValueError):
                pass
        if entry is not None:
            try:
                array = np.load(entry, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError):
                del self._entries[i]  # removed or replaced since: go through the checks again
            else:
                self._remember_layout(i, entry, array)
                return array
        entry = self.prepare(i)
        array = np.load(entry, mmap_mode="r", allow_pickle=False)
        self._remember_layout(i, entry, array)
        return array

    def _remember_layout(self, i: int, entry: str, array: np.ndarray) -> None:
        if isinstance(array, np.memmap) and array.flags.c_contiguous:
            self._layouts[i] = (entry, array.dtype.str, int(array.offset), tuple(array.shape))

    # ---- the sampler's acceptance maps, stored next to the volume entries --------------------
    # Computing a volume's acceptance map reads the whole volume (~55 ms for a 1 mm CT): done
    # once per (entry, sampler settings) and stored in the cache, so that loader workers only
    # memory-map it, however many volumes there are (an in-process LRU would miss on nearly
    # every cube beyond its size, as cubes draw their volume at random).

    def _acceptance_tag(self, sampler: Any) -> tuple:
        return sampler.acceptance_tag()

    def prepare_acceptance(self, i: int, sampler: Any) -> tuple | None:
        """Build (or verify) the stored acceptance map of volume ``i`` for ``sampler`` (a
        :class:`~genesis.data.sampler.SubVolumeSampler`); None without a cache or rejection rule.

        Returns:
            (tag, ((meta path, dtype, offset, shape), (data path, dtype, offset, shape))).
        """
        if self.cache is None or not sampler.cfg.rejects:
            return None
        i = _check_index(i, len(self))  # type: ignore[arg-type]
        tag = self._acceptance_tag(sampler)
        known = self._acceptance.get(i)
        if known is not None and known[0] == tag:
            return known
        from genesis.data.sampler import encode_acceptance

        # keyed by the volume's entry (its file name is the entry's key) and the sampler settings
        parts = {"kind": "acceptance", "volume": Path(self.prepare(i) or "").stem,
                 "sampler": sampler.acceptance_settings()}
        arrays = self.cache.get_or_compute_group(
            parts, _ACCEPTANCE_PARTS, lambda: encode_acceptance(sampler.compute_acceptance(self.load(i), self.name(i))),
            folder="acceptance")
        paths = self.cache.group_paths(parts, _ACCEPTANCE_PARTS, folder="acceptance")
        self._acceptance[i] = (tag, tuple((str(p), a.dtype.str, int(a.offset), tuple(a.shape))
                                          for p, a in zip(paths, arrays)))
        return self._acceptance[i]

    def adopt_acceptance(self, i: int, stored: tuple | None) -> None:
        """Record the stored acceptance map of volume ``i`` that another process prepared and verified."""
        if stored is not None:
            self._acceptance[_check_index(i, len(self))] = stored  # type: ignore[arg-type]

    def load_acceptance(self, i: int, sampler: Any, reader: Callable[..., Any] | None = None) -> Any:
        """The stored acceptance map of volume ``i``, built on first use; None without a cache or
        rejection rule (the sampler then computes it in process).

        ``reader(path, dtype, offset, shape)`` opens its data array: by default a memory map;
        :class:`~genesis.data.pread.PreadArray` reads it with ``pread`` instead.
        """
        stored = self.prepare_acceptance(i, sampler)
        if stored is None:
            return None
        from genesis.data.sampler import decode_acceptance

        reader = reader or _map_npy
        try:
            # the small meta array is read (no file handle kept); only the map is opened
            (meta_path, meta_dtype, meta_offset, meta_shape), data_layout = stored[1]
            size = np.dtype(meta_dtype).itemsize * math.prod(meta_shape)
            with open(meta_path, "rb") as handle:
                handle.seek(meta_offset)
                meta = np.frombuffer(handle.read(size), np.dtype(meta_dtype))
            return decode_acceptance(meta, reader(*data_layout))
        except (OSError, ValueError):  # removed or replaced since it was verified: check and rebuild
            self._acceptance.pop(i, None)
            stored = self.prepare_acceptance(i, sampler)
            assert stored is not None
            meta, data = (np.load(p, mmap_mode="r", allow_pickle=False) for p, *_ in stored[1])
            if reader is not _map_npy:
                data = reader(stored[1][1][0], data.dtype.str, int(data.offset), data.shape)
            return decode_acceptance(meta, data)


def _map_npy(path: str, dtype: str, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only memory map of a C-ordered ``.npy`` whose header was read before.

    ``mmap`` + ``np.frombuffer``: about a third of ``np.memmap``'s cost per open, which is
    paid on nearly every cube when there are many more volumes than handles kept open.
    """
    import mmap

    dt = np.dtype(dtype)
    count = math.prod(shape)
    with open(path, "rb") as handle:
        if count == 0:
            return np.empty(shape, dt)
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if offset + count * dt.itemsize > len(mapped):
        raise ValueError(f"{path}: shorter than its recorded layout")
    return np.frombuffer(mapped, dt, count, offset).reshape(shape)


class FileVolumeSource(_CachedLoading):
    """Volumes read from files or DICOM folders, preprocessed, optionally cached on disk.

    Args:
        paths: volume files / DICOM directories, or :class:`VolumeRecord` (to give a series uid).
        preprocess_cfg: preprocessing settings (default :class:`PreprocessConfig`).
        cache_dir: if given, preprocessed arrays are cached there (see :mod:`genesis.data.cache`)
            and returned as read-only memory maps.
    Raises:
        DatasetLayoutError: ``paths`` is empty.
    """

    is_synthetic = False

    def __init__(
        self,
        paths: Sequence[str | Path | VolumeRecord],
        preprocess_cfg: PreprocessConfig | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        self.records = [p if isinstance(p, VolumeRecord) else VolumeRecord(Path(p)) for p in paths]
        if not self.records:
            raise DatasetLayoutError("no volumes given")
        self.preprocess_cfg = preprocess_cfg or PreprocessConfig()
        self.cache = VolumeCache(cache_dir) if cache_dir is not None else None
        self._entries: dict[int, str] = {}
        self._layouts: dict[int, tuple[str, str, int, tuple[int, ...]]] = {}
        self._acceptance: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.records)

    def name(self, i: int) -> str:
        return self.records[_check_index(i, len(self))].name

    def _compute(self, i: int) -> np.ndarray:
        record = self.records[i]
        volume_state(record.path)  # refuses FIFOs and devices among its files before any read
        volume = load_volume(record.path, series_uid=record.series_uid,
                             assume_spacing=self.preprocess_cfg.assume_spacing)
        return preprocess(volume, self.preprocess_cfg)

    def _build(self, i: int) -> tuple[Any, np.ndarray]:
        """The entry of volume ``i``, with its key and voxels from the same bytes.

        The files' (inode, size, mtime, ctime) are taken before the fingerprint and compared
        after the voxels were read: a file rewritten in between (a copy still running, a
        re-export) is read again, so the entry keyed by one content never holds another's.

        Raises:
            InputFileError: the volume changed during each of :data:`READ_ATTEMPTS` reads.
        """
        assert self.cache is not None
        path = self.records[i].path

        def compute(before: tuple) -> np.ndarray:
            array = self._compute(i)
            if volume_state(path) != before:
                raise FileChangedError("changed while it was read", path)
            return array

        for _ in range(READ_ATTEMPTS):
            try:
                before = volume_state(path)
                key = self._key(i)
                return key, self.cache.get_or_compute(key, lambda before=before: compute(before))
            except FileChangedError:
                continue  # nothing was stored: stamp, fingerprint and read again
        raise InputFileError(f"changed while it was read, {READ_ATTEMPTS} times in a row; wait until it is "
                             "completely written (a copy or download still running?) and run again", path)

    def _key(self, i: int) -> Any:
        assert self.cache is not None
        record = self.records[i]
        return {
            "kind": "file",
            "source": self.cache.fingerprint(record.path),
            "series_uid": record.series_uid,
            "preprocess": _config_dict(self.preprocess_cfg),
        }


def synthetic_seed(seed: int, index: int) -> int:
    """The generator seed of synthetic volume ``index`` of a source seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


class SyntheticVolumeSource(_CachedLoading):
    """``n`` synthetic chest CTs from :func:`genesis.data.synthetic.generate_chest_ct`.

    Volume ``i`` is generated with seed :func:`synthetic_seed` ``(seed, i)``, so any volume can be
    regenerated alone. Data from this source is synthetic (``is_synthetic = True``), never real CT.

    Args:
        n: number of volumes.
        seed: base seed.
        preprocess_cfg: preprocessing settings.
        synthetic_cfg: a ``SyntheticConfig`` (None: generator defaults).
        cache_dir: optional on-disk cache of the preprocessed arrays.
    """

    is_synthetic = True

    def __init__(
        self,
        n: int = DEFAULT_SYNTHETIC_N,
        seed: int = 0,
        preprocess_cfg: PreprocessConfig | None = None,
        synthetic_cfg: Any = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        if n < 1:
            raise DatasetLayoutError(f"a synthetic source needs at least 1 volume, got n={n}")
        self.n, self.seed = int(n), int(seed)
        self.preprocess_cfg = preprocess_cfg or PreprocessConfig()
        self.synthetic_cfg = synthetic_cfg
        self.cache = VolumeCache(cache_dir) if cache_dir is not None else None
        self._entries: dict[int, str] = {}
        self._layouts: dict[int, tuple[str, str, int, tuple[int, ...]]] = {}
        self._acceptance: dict[int, tuple] = {}

    def __len__(self) -> int:
        return self.n

    def name(self, i: int) -> str:
        return f"synthetic:{synthetic_seed(self.seed, _check_index(i, self.n))}"

    def _compute(self, i: int) -> np.ndarray:
        from genesis.data.synthetic import generate_chest_ct  # imported lazily: optional heavy module

        ct = generate_chest_ct(seed=synthetic_seed(self.seed, i), config=self.synthetic_cfg)
        return preprocess(ct.volume, self.preprocess_cfg)

    def _key(self, i: int) -> Any:
        # Keyed by the generator's seed and resolved parameters (and the package version, as the
        # generator's code may change): any run with the same settings shares the entry.
        from genesis import __version__
        from genesis.data import synthetic

        default = getattr(synthetic, "SyntheticConfig", None)
        cfg = default() if self.synthetic_cfg is None and default is not None else self.synthetic_cfg
        return {
            "kind": "synthetic",
            "seed": synthetic_seed(self.seed, i),
            "generator": __version__,
            "synthetic": _config_dict(cfg),
            "preprocess": _config_dict(self.preprocess_cfg),
        }


def volume_source_from_arg(
    data: str | Path | None,
    preprocess_cfg: PreprocessConfig | None = None,
    cache_dir: str | Path | None = None,
    synthetic_n: int = DEFAULT_SYNTHETIC_N,
    seed: int = 0,
    synthetic_cfg: Any = None,
    split: str | None = None,
    *,
    keep_labels: bool = False,
    keep_non_hu: bool = False,
    crop: Sequence[int] | None = None,
) -> VolumeSource:
    """The source a ``--data`` argument means.

    Args:
        data: None -> synthetic volumes; a labelled-dataset layout (MSD / nnU-Net raw folder with
            dataset.json, MONAI datalist ``.json``, ``.csv`` with an ``image`` column, ``.h5``/``.npz``
            arrays; see :mod:`genesis.data.layouts`) -> its images; a directory -> every volume in it (recursive, see
            :func:`genesis.data.public.folder.find_volumes`); a ``.csv``/``.yaml``/``.yml``
            manifest (see :func:`genesis.data.public.manifest.read_manifest`); a single volume file
            (a directory holding exactly one DICOM series counts as a directory of one volume).
        preprocess_cfg: preprocessing settings.
        cache_dir: optional cache of preprocessed arrays.
        synthetic_n: number of synthetic volumes when ``data`` is None.
        seed: seed of the synthetic volumes.
        synthetic_cfg: ``SyntheticConfig`` for synthetic volumes.
        split: keep only this split of a manifest.
        keep_labels / keep_non_hu: use label maps / non-HU images found in a folder (skipped by
            default, see :func:`genesis.data.discovery.discover_scans`).
        crop: the training crop; folder scans under half of it are skipped as too small.
    Returns:
        A :class:`VolumeSource`; a folder's has ``data_report`` (what was used, skipped and why).
    Raises:
        InputFileError: ``data`` does not exist or is not a known kind of file.
        DatasetLayoutError: empty folder or bad manifest (message names it).
    """
    if data is None:
        return SyntheticVolumeSource(synthetic_n, seed, preprocess_cfg, synthetic_cfg, cache_dir)
    path = Path(data).expanduser()
    if not path.exists():
        raise InputFileError("data path does not exist", path)
    if not path.is_dir():
        regular_stat(path)  # a FIFO or device: refused before anything opens it (an open would block)
    from genesis.data.layouts import LayoutVolumeSource, is_layout_argument

    if is_layout_argument(path):  # MSD/nnU-Net raw, MONAI datalist, image-column CSV, .h5/.npz arrays
        return LayoutVolumeSource(path, preprocess_cfg, group_size=None)
    if path.is_dir():
        from genesis.data.discovery import discover_scans
        from genesis.io.readers import assumed_spacing

        cfg = preprocess_cfg or PreprocessConfig()
        cache = VolumeCache(cache_dir) if cache_dir is not None else None
        # discovery reads every scan it has not seen before (the others come from the cache's scan
        # index): --assume-spacing must reach it, or such scans are skipped
        with assumed_spacing(cfg.assume_spacing):
            report = discover_scans(path, crop=crop, keep_labels=keep_labels, keep_non_hu=keep_non_hu,
                                    spacing=cfg.spacing, cache=cache)
        source = FileVolumeSource(report.records, cfg, cache_dir)
        source.data_report = report
        return source
    elif path.suffix.lower() in MANIFEST_SUFFIXES:
        records = read_manifest(path, split=split)
    elif volume_suffix(path) is not None or path.suffix.lower() == ".dcm":
        records = [VolumeRecord(path)]
    else:
        raise InputFileError(
            "unknown data argument: expected a folder, a .csv/.yaml manifest or a volume file "
            "(.nii, .nii.gz, .mhd, .mha, .nrrd, .nhdr, or a DICOM folder)",
            path,
        )
    return FileVolumeSource(records, preprocess_cfg, cache_dir)
