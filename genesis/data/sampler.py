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
After ``max_tries`` rejected candidates the one with the lowest fraction above threshold is used.
"""

from __future__ import annotations

import warnings
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
        max_tries: candidates drawn per cube before falling back to the best one.
        pad_small: pad volumes smaller than the crop (with a warning) instead of raising.
        pad_value: value used for padding (0 is air after the HU window).
    """

    crop: tuple[int, int, int] = (32, 64, 64)
    margin: tuple[int, int, int] = (0, 0, 0)
    reject_threshold: float | None = None
    max_fraction_above: float | None = None
    max_tries: int = 50
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

    @property
    def rejects(self) -> bool:
        return self.reject_threshold is not None and self.max_fraction_above is not None

    @classmethod
    def models_genesis(cls, crop: tuple[int, int, int] = (32, 64, 64), **changes) -> "SamplerConfig":
        """The reference cropper: margins (30, 100, 100), threshold 0.425, max fraction 0.15."""
        params = dict(
            crop=crop,
            margin=(30, 100, 100),
            reject_threshold=MODELS_GENESIS_THRESHOLD,
            max_fraction_above=0.15,
            max_tries=50,
        )
        params.update(changes)
        return cls(**params)


class SubVolumeSampler:
    """Draw cubes from a volume; all randomness comes from the generator passed to :meth:`sample`."""

    def __init__(self, cfg: SamplerConfig | None = None) -> None:
        self.cfg = cfg or SamplerConfig()

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

    def start_ranges(self, shape: tuple[int, ...]) -> np.ndarray:
        """(3, 2) array of inclusive [low, high] start indices per axis after clipping margins."""
        ranges = []
        for size, c, m in zip(shape, self.cfg.crop, self.cfg.margin):
            free = size - c
            if 2 * m > free:  # no room for the margin: keep the central half (see module docstring)
                m = max(0, free // 4)
            ranges.append((m, free - m))
        return np.asarray(ranges, dtype=np.int64)

    def sample(self, volume01: np.ndarray, n: int, rng: np.random.Generator, name: str | None = None) -> np.ndarray:
        """Draw ``n`` cubes.

        Args:
            volume01: normalised volume (z, y, x) in [0, 1] (a memory map is fine).
            n: number of cubes.
            rng: numpy Generator; the same generator state gives the same cubes.
            name: the volume's file or name, for warnings and errors.
        Returns:
            float32 array (n, D, H, W).
        Raises:
            VolumeReadError: the volume is not 3D, or smaller than the crop and ``pad_small`` is off.
        """
        if volume01.ndim != 3:
            raise VolumeReadError(f"sampler needs a 3D (z, y, x) volume, got shape {volume01.shape}")
        volume = self._padded(volume01, name)
        d, h, w = self.cfg.crop
        ranges = self.start_ranges(volume.shape)
        out = np.empty((n, d, h, w), dtype=np.float32)
        tries = self.cfg.max_tries if self.cfg.rejects else 1
        for i in range(n):
            # One vectorised draw of all candidates; they are tested in order until one passes.
            starts = rng.integers(ranges[:, 0], ranges[:, 1] + 1, size=(tries, 3))
            best, best_frac = starts[0], np.inf
            for z, y, x in starts:
                if not self.cfg.rejects:
                    best = (z, y, x)
                    break
                cube = volume[z : z + d, y : y + h, x : x + w]
                frac = np.count_nonzero(cube > self.cfg.reject_threshold) / cube.size
                if frac < best_frac:
                    best, best_frac = (z, y, x), frac
                if frac <= self.cfg.max_fraction_above:
                    break
            z, y, x = best
            out[i] = volume[z : z + d, y : y + h, x : x + w]
        return out
