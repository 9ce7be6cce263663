"""Random sub-volumes (cubes) from a normalised volume, with the Models Genesis rejection rule.

Reference cropper (Zhou et al. 2021, methods.md section 1): start at least 100 voxels from the x/y
edges and 30 from the z edges; keep a 64x64x32 cube only if the fraction of voxels above
(-150 + 1000) / 2000 (in the [0, 1] scale of the [-1000, 1000] window) is at most 0.15, i.e. the
cube is mostly lung. Here these are parameters (:meth:`SamplerConfig.models_genesis` is the preset).
Margins are honoured exactly when the volume has room for them (2 * margin <= size - crop, the
reference case). When it does not, the margin of that axis becomes a quarter of the free room
(size - crop) on each side, so half of the start positions stay available: clipping to "whatever
still fits" would pin every cube to the centre of a volume only slightly too small.

Volumes smaller than the crop are padded with ``pad_value`` (0 = air after windowing) and a
:class:`GenesisWarning`, or rejected with :class:`VolumeReadError` when ``pad_small=False``.

The acceptance measure is the reference's (``infinite_generator_3D.py``): every voxel of the cube
looks ahead ``len_depth`` (3) slices along z for the first voxel at or above the threshold; found
at look-ahead k it scores ``1 - k / (len_depth - 1)`` (1, 0.5, 0), not found it scores 0. This is
the reference's ``d_img``; a cube is kept when the sum of the scores is at most
``max_fraction_above`` times its voxel count. ``len_depth=1`` is the plain fraction of voxels at or
above the threshold. The reference draws candidates until one passes (50 per wanted cube in all)
and returns fewer cubes, or none, for volumes where few pass. Here the score of *every* start
position is computed once per volume with running box sums (a separable summed-area table: three
cumulative sums), so each cube is drawn uniformly among the accepted positions, which is the
distribution rejection sampling converges to, at the cost of one lookup. With a volume cache
the map is built once per (cache entry, sampler settings) and stored compactly next to the entry
(:func:`encode_acceptance`: bit-packed planes or flat indices), then memory-mapped per cube. A volume where no
position passes gets a :class:`GenesisWarning` and falls back to the best of ``max_tries``
uniform candidates.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from genesis.errors import ConfigError, GenesisWarning, VolumeReadError

#: (-150 HU + 1000) / 2000: the reference "tissue" threshold in the [0, 1] scale.
MODELS_GENESIS_THRESHOLD = (-150.0 + 1000.0) / 2000.0


@dataclass
class SamplerConfig:
    """How cubes are drawn from a [0, 1] volume.

    Attributes:
        crop: cube size (D, H, W) = (z, y, x); Models Genesis 64x64x32 is (32, 64, 64).
        margin: voxels kept clear of each edge (z, y, x); clipped to what the volume allows.
        reject_threshold: intensity threshold in [0, 1] of the rejection rule (None: no rejection).
        max_fraction_above: keep a cube only if the fraction of voxels above ``reject_threshold``
            is at most this (None: no rejection).
        max_tries: in a volume where no position passes, uniform candidates of which the best is kept.
        len_depth: look-ahead of the acceptance score in slices (reference: 3; 1 = plain fraction).
        pad_small: pad volumes smaller than the crop (with a warning) instead of raising.
        pad_value: value used for padding (0 is air after the HU window).
    """

    crop: tuple[int, int, int] = (32, 64, 64)
    margin: tuple[int, int, int] = (0, 0, 0)
    reject_threshold: float | None = None
    max_fraction_above: float | None = None
    max_tries: int = 50
    len_depth: int = 1
    pad_small: bool = True
    pad_value: float = 0.0

    def __post_init__(self) -> None:
        self.crop = tuple(int(c) for c in self.crop)  # type: ignore[assignment]
        self.margin = tuple(int(m) for m in self.margin)  # type: ignore[assignment]
        if len(self.crop) != 3 or min(self.crop) < 1:
            raise ConfigError(f"sampler crop must be 3 positive sizes (D, H, W), got {self.crop}")
        if len(self.margin) != 3 or min(self.margin) < 0:
            raise ConfigError(f"sampler margin must be 3 non-negative sizes (z, y, x), got {self.margin}")
        if self.max_tries < 1:
            raise ConfigError(f"sampler max_tries must be >= 1, got {self.max_tries}")
        if self.len_depth < 1:
            raise ConfigError(f"sampler len_depth must be >= 1, got {self.len_depth}")

    @property
    def rejects(self) -> bool:
        return self.reject_threshold is not None and self.max_fraction_above is not None

    @classmethod
    def models_genesis(cls, crop: tuple[int, int, int] = (32, 64, 64), **changes) -> "SamplerConfig":
        """The reference cropper: margins (30, 100, 100), threshold 0.425, score limit 0.15, look-ahead 3."""
        params = dict(
            crop=crop,
            margin=(30, 100, 100),
            reject_threshold=MODELS_GENESIS_THRESHOLD,
            max_fraction_above=0.15,
            max_tries=50,
            len_depth=3,
        )
        params.update(changes)
        return cls(**params)


@dataclass
class Acceptance:
    """Which cube start positions of one volume pass the rule.

    The accepted positions are held in one of three forms (all give the same draws): the bool
    ``accept`` map (computed in this process), or, read back from the volume cache as memory
    maps (:func:`encode_acceptance`), the map packed to bits per z plane (``packed``) or the
    sorted flat indices of the accepted positions (``flat``), whichever is smaller on disk.

    Attributes:
        low: (z, y, x) start position of ``accept[0, 0, 0]``.
        accept: bool map over the start positions (None when nothing passes or when stored).
        score: the score map, kept only when nothing passes (for the best-of fallback).
        n_accepted: accepted positions.
        n_positions: all start positions.
        shape: (nz, ny, nx) of the map of start positions.
        packed: (nz, ceil(ny * nx / 8)) uint8, ``np.packbits`` of each z plane of the map.
        flat: uint32 flat (C order) indices of the accepted positions, ascending.
    """

    low: np.ndarray
    accept: np.ndarray | None
    score: np.ndarray | None
    n_accepted: int
    n_positions: int
    _cumulative: np.ndarray | None = None  # accepted positions up to and including each z plane
    shape: tuple[int, int, int] | None = None
    packed: np.ndarray | None = None
    flat: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.shape is None:
            maps = self.accept if self.accept is not None else self.score
            assert maps is not None, "an Acceptance needs its map shape"
            self.shape = tuple(int(s) for s in maps.shape)  # type: ignore[assignment]

    @property
    def rate(self) -> float:
        return self.n_accepted / max(self.n_positions, 1)

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """A start position drawn uniformly among the accepted ones (the u-th in C order)."""
        assert self.n_accepted > 0 and self.shape is not None
        _, ny, nx = self.shape
        u = int(rng.integers(self.n_accepted))
        if self.flat is not None:
            plane, flat = divmod(int(self.flat[u]), ny * nx)
        else:
            assert self._cumulative is not None
            plane = int(np.searchsorted(self._cumulative, u, side="right"))
            before = int(self._cumulative[plane - 1]) if plane else 0
            if self.accept is not None:
                row = self.accept[plane].ravel()
            else:  # one plane unpacked from the memory map (ny * nx / 8 bytes read)
                assert self.packed is not None
                row = np.unpackbits(np.asarray(self.packed[plane]), count=ny * nx)
            flat = int(np.flatnonzero(row)[u - before])
        y, x = divmod(flat, nx)
        return int(self.low[0] + plane), int(self.low[1] + y), int(self.low[2] + x)


#: Version of the stored acceptance layout (part of the cache key of every stored map).
ACCEPTANCE_FORMAT = 1
_PACKED, _FLAT, _SCORE = 0, 1, 2  # what the data array of a stored acceptance holds
_META_HEAD = 10  # format, kind, low (3), shape (3), n_accepted, n_positions; then per-plane cumsum


def encode_acceptance(acc: Acceptance, form: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(meta, data) arrays that store ``acc`` compactly, for :func:`decode_acceptance`.

    ``meta`` is int64: format, kind, low, shape, counts, then the cumulative accepted count per z
    plane. ``data`` is the bit-packed map per z plane or the uint32 flat indices of the accepted
    positions (whichever is smaller), or, when nothing passes, the int32 score map (the fallback
    needs it). ``form`` ("packed" or "flat") forces one of the two forms (None: the smaller).
    """
    assert acc.shape is not None
    nz, ny, nx = acc.shape
    if acc.n_accepted == 0:
        assert acc.score is not None
        kind, data, cumulative = _SCORE, np.ascontiguousarray(acc.score, dtype=np.int32), np.zeros(nz, np.int64)
    else:
        assert acc.accept is not None and acc._cumulative is not None
        cumulative = np.asarray(acc._cumulative, np.int64)
        packed_bytes = nz * ((ny * nx + 7) // 8)
        smaller = "flat" if 4 * acc.n_accepted < packed_bytes and acc.n_positions < 2**32 else "packed"
        if (form or smaller) == "flat":
            kind, data = _FLAT, np.flatnonzero(acc.accept).astype(np.uint32)
        else:
            kind, data = _PACKED, np.packbits(acc.accept.reshape(nz, ny * nx), axis=1)
    head = [ACCEPTANCE_FORMAT, kind, *(int(v) for v in acc.low), nz, ny, nx, acc.n_accepted, acc.n_positions]
    return np.concatenate([np.asarray(head, np.int64), cumulative]), data


def decode_acceptance(meta: np.ndarray, data: np.ndarray) -> Acceptance:
    """The :class:`Acceptance` that :func:`encode_acceptance` stored (``data`` stays a memory map).

    Raises:
        ValueError: the arrays do not describe an acceptance map of this format.
    """
    meta = np.asarray(meta)
    if meta.ndim != 1 or meta.size < _META_HEAD or int(meta[0]) != ACCEPTANCE_FORMAT:
        raise ValueError("not a stored acceptance map of this format")
    kind = int(meta[1])
    low = meta[2:5].copy()
    shape = tuple(int(v) for v in meta[5:8])
    n_accepted, n_positions = int(meta[8]), int(meta[9])
    cumulative = meta[_META_HEAD:].copy()
    expected = {_PACKED: (shape[0], (shape[1] * shape[2] + 7) // 8), _FLAT: (n_accepted,), _SCORE: shape}.get(kind)
    if expected is None or tuple(data.shape) != expected or cumulative.size != shape[0]:
        raise ValueError("stored acceptance map does not match its description")
    if kind == _SCORE:
        return Acceptance(low, None, data, 0, n_positions, shape=shape)  # type: ignore[arg-type]
    return Acceptance(low, None, None, n_accepted, n_positions, cumulative, shape=shape,  # type: ignore[arg-type]
                      packed=data if kind == _PACKED else None, flat=data if kind == _FLAT else None)


def _box_sums(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Sums of every window of ``size`` along ``axis`` (one cumulative sum, one difference)."""
    cumulative = np.cumsum(array, axis=axis, dtype=np.int32)
    zero = np.zeros_like(np.take(cumulative, [0], axis=axis))
    cumulative = np.concatenate([zero, cumulative], axis=axis)
    n = cumulative.shape[axis]
    return np.take(cumulative, range(size, n), axis=axis) - np.take(cumulative, range(0, n - size), axis=axis)


def lookahead_scores(region: np.ndarray, threshold: float, len_depth: int) -> np.ndarray:
    """Per-voxel reference score times ``len_depth - 1`` (integers; 1/0 when ``len_depth == 1``).

    Voxel (z, y, x) scores ``len_depth - 1 - k`` for the first k < ``len_depth`` with
    ``region[z + k, y, x] >= threshold`` (beyond the region counts as below), else 0.
    """
    above = region >= threshold
    if len_depth == 1:
        return above.astype(np.uint8)
    scores = np.zeros(region.shape, np.uint8)
    unresolved = np.ones(region.shape, bool)
    for k in range(len_depth - 1):  # k = len_depth - 1 scores 0 anyway
        ahead = np.zeros_like(above)
        ahead[: region.shape[0] - k] = above[k:]
        hit = unresolved & ahead
        scores[hit] = len_depth - 1 - k
        unresolved &= ~ahead
    return scores


class SubVolumeSampler:
    """Draw cubes from a volume; all randomness comes from the generator passed to :meth:`sample`.

    The acceptance map of a volume is computed once and kept (up to ``cache_volumes`` volumes,
    keyed by the volume's name and shape); it is a pure function of the volume, so results do
    not depend on what is cached. With a volume cache the maps are instead stored next to the
    cache entries (see :meth:`genesis.data.sources._CachedLoading.load_acceptance`) and passed
    to :meth:`sample`: with many volumes drawn at random, an LRU would recompute a whole map
    for nearly every cube.
    """

    def __init__(self, cfg: SamplerConfig | None = None, cache_volumes: int = 32) -> None:
        self.cfg = cfg or SamplerConfig()
        self.cache_volumes = cache_volumes
        self._cache: OrderedDict[tuple, Acceptance] = OrderedDict()
        self._warned: set[str] = set()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # spawned workers rebuild what they need
        return state

    def _padded(self, volume: np.ndarray, name: str | None = None) -> np.ndarray:
        crop = self.cfg.crop
        short = [max(0, c - s) for c, s in zip(crop, volume.shape)]
        if not any(short):
            return volume
        what = f"{name}: volume" if name else "volume"
        if not self.cfg.pad_small:
            raise VolumeReadError(f"{what} of shape {volume.shape} is smaller than the crop {crop}")
        warnings.warn(
            f"{what} of shape {volume.shape} is smaller than the crop {crop}; padding with {self.cfg.pad_value}",
            GenesisWarning,
            stacklevel=3,
        )
        pads = [(s // 2, s - s // 2) for s in short]
        return np.pad(volume, pads, constant_values=self.cfg.pad_value)

    def start_ranges(self, shape: tuple[int, ...], lookahead: int = 0) -> np.ndarray:
        """(3, 2) array of inclusive [low, high] start indices per axis after clipping margins.

        ``lookahead`` extra slices are kept free below the cube in z when the volume has room
        (the reference's ``len_depth``).
        """
        ranges = []
        for axis, (size, c, m) in enumerate(zip(shape, self.cfg.crop, self.cfg.margin)):
            free = size - c
            if axis == 0 and lookahead and free - lookahead >= 0:
                free -= lookahead
            if 2 * m > free:  # no room for the margin: keep the central half (see module docstring)
                m = max(0, free // 4)
            ranges.append((m, free - m))
        return np.asarray(ranges, dtype=np.int64)

    def acceptance(self, volume01: np.ndarray, name: str | None = None) -> Acceptance:
        """The acceptance map of a volume (cached by name and shape when ``name`` is given).

        Raises:
            VolumeReadError: the volume holds NaN or infinite values.
        """
        return self._acceptance(self._padded(volume01, name), name)

    def compute_acceptance(self, volume01: np.ndarray, name: str | None = None) -> Acceptance:
        """The acceptance map of a volume, computed now and not kept (to be stored elsewhere).

        Raises:
            VolumeReadError: the volume holds NaN or infinite values.
        """
        return self._compute_acceptance(self._padded(volume01, name), name)

    def acceptance_settings(self) -> dict:
        """Everything the acceptance map depends on besides the volume (part of its cache key)."""
        cfg = self.cfg
        return {"format": ACCEPTANCE_FORMAT, "crop": list(cfg.crop), "margin": list(cfg.margin),
                "threshold": cfg.reject_threshold, "fraction": cfg.max_fraction_above,
                "len_depth": cfg.len_depth, "pad_small": cfg.pad_small, "pad_value": cfg.pad_value}

    def acceptance_tag(self) -> tuple:
        """A cheap, hashable form of :meth:`acceptance_settings` (compared on every cube)."""
        cfg = self.cfg
        return (ACCEPTANCE_FORMAT, cfg.crop, cfg.margin, cfg.reject_threshold, cfg.max_fraction_above,
                cfg.len_depth, cfg.pad_small, cfg.pad_value)

    def _fits(self, acc: Acceptance, shape: tuple[int, ...]) -> bool:
        """Whether a stored acceptance describes start positions of a volume of ``shape``."""
        ranges = self.start_ranges(shape, self.cfg.len_depth - 1)
        return acc.shape == tuple(int(v) for v in ranges[:, 1] - ranges[:, 0] + 1) and \
            [int(v) for v in acc.low] == [int(v) for v in ranges[:, 0]]

    def _acceptance(self, volume: np.ndarray, name: str | None) -> Acceptance:
        key = (name, volume.shape) if name is not None else None
        if key is not None and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        acc = self._compute_acceptance(volume, name)
        if key is not None:
            self._cache[key] = acc
            while len(self._cache) > self.cache_volumes:
                self._cache.popitem(last=False)
        return acc

    def scores(self, volume: np.ndarray, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Reference score (sum of ``d_img``) times ``len_depth - 1`` of every start position.

        Returns:
            (ranges (3, 2) of the start positions, int32 score map over them).
        Raises:
            VolumeReadError: NaN or infinite values where cubes can lie.
        """
        cfg = self.cfg
        d, h, w = cfg.crop
        lookahead = cfg.len_depth - 1
        ranges = self.start_ranges(volume.shape, lookahead)
        (z0, z1), (y0, y1), (x0, x1) = ranges
        region = np.asarray(volume[z0 : z1 + d + lookahead, y0 : y1 + h, x0 : x1 + w])
        _check_finite(region, name)
        nz, ny, nx = z1 - z0 + 1, y1 - y0 + 1, x1 - x0 + 1
        score = lookahead_scores(region, float(cfg.reject_threshold), cfg.len_depth)
        score = _box_sums(score, d, 0)[:nz]
        score = _box_sums(score, h, 1)[:, :ny]
        return ranges, _box_sums(score, w, 2)[:, :, :nx]

    def _compute_acceptance(self, volume: np.ndarray, name: str | None) -> Acceptance:
        cfg = self.cfg
        d, h, w = cfg.crop
        ranges, score = self.scores(volume, name)
        scale = max(cfg.len_depth - 1, 1)
        accept = score <= cfg.max_fraction_above * d * h * w * scale + 1e-6
        per_plane = np.count_nonzero(accept, axis=(1, 2))
        n_accepted = int(per_plane.sum())
        if n_accepted == 0:
            label = name or "a volume"
            if label not in self._warned:
                self._warned.add(label)
                warnings.warn(
                    f"{label}: no cube position passes the Models Genesis rule (tissue score <= "
                    f"{cfg.max_fraction_above:g}); using the best of {cfg.max_tries} random positions for its cubes",
                    GenesisWarning, stacklevel=5)  # the caller of sample() / positions()
            return Acceptance(ranges[:, 0].copy(), None, score, 0, int(accept.size))
        return Acceptance(ranges[:, 0].copy(), accept, None, n_accepted, int(accept.size), np.cumsum(per_plane))

    def sample(self, volume01: np.ndarray, n: int, rng: np.random.Generator, name: str | None = None,
               acceptance: Acceptance | None = None) -> np.ndarray:
        """Draw ``n`` cubes: :meth:`positions`, then :meth:`crop_at` (the volume is padded once).

        Args:
            volume01: normalised volume (z, y, x) in [0, 1] (a memory map is fine).
            n: number of cubes.
            rng: numpy Generator; the same generator state gives the same cubes.
            name: the volume's file or name, for warnings and errors (and the acceptance cache).
            acceptance: this volume's acceptance map computed beforehand (e.g. stored in the
                volume cache, see :func:`decode_acceptance`); None: computed here and kept in
                the per-process LRU. Both give the same cubes.
        Returns:
            float32 array (n, D, H, W).
        Raises:
            VolumeReadError: the volume is not 3D, holds NaN/inf, or is smaller than the crop and
                ``pad_small`` is off.
        """
        volume = self._padded(_check_3d(volume01), name)
        return self._crop(volume, self._positions(volume, n, rng, name, acceptance), name)

    def positions(self, volume01: np.ndarray, n: int, rng: np.random.Generator, name: str | None = None,
                  acceptance: Acceptance | None = None) -> np.ndarray:
        """(n, 3) int64 corners (z, y, x) of the cubes :meth:`sample` would draw (same ``rng`` use),
        in the padded volume; :meth:`crop_at` copies them. Lets loader workers decide where cubes
        are while the process that trains copies them from the shared memory map."""
        volume = self._padded(_check_3d(volume01), name)
        return self._positions(volume, n, rng, name, acceptance)

    def crop_at(self, volume01: np.ndarray, corners: np.ndarray, name: str | None = None,
                out: np.ndarray | None = None) -> np.ndarray:
        """The cubes at ``corners`` (from :meth:`positions`) as float32 (n, D, H, W), into ``out`` if given."""
        return self._crop(self._padded(_check_3d(volume01), name), corners, name, out)

    def _positions(self, volume: np.ndarray, n: int, rng: np.random.Generator, name: str | None,
                   acceptance: Acceptance | None) -> np.ndarray:
        corners = np.empty((n, 3), dtype=np.int64)
        if not self.cfg.rejects:
            ranges = self.start_ranges(volume.shape)
            for i in range(n):
                corners[i] = rng.integers(ranges[:, 0], ranges[:, 1] + 1, size=(1, 3))[0]
            return corners
        acc = acceptance if acceptance is not None and self._fits(acceptance, volume.shape) else None
        if acc is None:
            acc = self._acceptance(volume, name)
        for i in range(n):
            if acc.n_accepted > 0:
                corners[i] = acc.draw(rng)
            else:  # nothing passes: best of max_tries uniform candidates, as the fallback
                assert acc.score is not None
                shape = np.asarray(acc.shape)
                picks = rng.integers(0, shape, size=(self.cfg.max_tries, 3))
                best = picks[int(np.argmin(acc.score[picks[:, 0], picks[:, 1], picks[:, 2]]))]
                corners[i] = acc.low + best
        return corners

    def _crop(self, volume: np.ndarray, corners: np.ndarray, name: str | None,
              out: np.ndarray | None = None) -> np.ndarray:
        d, h, w = self.cfg.crop
        if out is None:
            out = np.empty((len(corners), d, h, w), dtype=np.float32)
        for i, (z, y, x) in enumerate(np.asarray(corners).tolist()):
            out[i] = volume[z : z + d, y : y + h, x : x + w]
            if not self.cfg.rejects:  # accepted positions were checked when their map was built
                _check_finite(out[i], name)
        return out


def _check_3d(volume: np.ndarray) -> np.ndarray:
    if volume.ndim != 3:
        raise VolumeReadError(f"sampler needs a 3D (z, y, x) volume, got shape {volume.shape}")
    return volume


def _check_finite(array: np.ndarray, name: str | None) -> None:
    if not np.isfinite(array).all():
        what = f"{name}: " if name else ""
        raise VolumeReadError(f"{what}NaN or infinite values in the preprocessed volume (a damaged file or cache?)")
