"""Sub-volume sampling: shapes, determinism, margins, Models Genesis rejection, padding."""

from __future__ import annotations

import numpy as np
import pytest

from genesis.data.sampler import MODELS_GENESIS_THRESHOLD, SamplerConfig, SubVolumeSampler
from genesis.errors import ConfigError, GenesisWarning, VolumeReadError


def _coords(shape=(20, 40, 44)) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z * 10000 + y * 100 + x).astype(np.float32)  # each voxel encodes its own position


def test_shapes_and_cubes_are_subblocks() -> None:
    volume = _coords()
    cfg = SamplerConfig(crop=(8, 16, 12), margin=(2, 3, 4))
    cubes = SubVolumeSampler(cfg).sample(volume, 25, np.random.default_rng(0))
    assert cubes.shape == (25, 8, 16, 12) and cubes.dtype == np.float32
    for cube in cubes:
        z, y, x = int(cube[0, 0, 0]) // 10000, int(cube[0, 0, 0]) // 100 % 100, int(cube[0, 0, 0]) % 100
        np.testing.assert_array_equal(cube, volume[z : z + 8, y : y + 16, x : x + 12])
        assert 2 <= z <= 20 - 8 - 2 and 3 <= y <= 40 - 16 - 3 and 4 <= x <= 44 - 12 - 4


def test_seeded_by_the_generator() -> None:
    sampler = SubVolumeSampler(SamplerConfig(crop=(4, 8, 8)))
    volume = _coords()
    a = sampler.sample(volume, 6, np.random.default_rng(7))
    b = sampler.sample(volume, 6, np.random.default_rng(7))
    c = sampler.sample(volume, 6, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_models_genesis_preset() -> None:
    cfg = SamplerConfig.models_genesis()
    assert cfg.crop == (32, 64, 64) and cfg.margin == (30, 100, 100)
    assert cfg.reject_threshold == pytest.approx(0.425) == MODELS_GENESIS_THRESHOLD
    assert cfg.max_fraction_above == 0.15
    sampler = SubVolumeSampler(cfg)
    np.testing.assert_array_equal(sampler.start_ranges((120, 512, 512)), [[30, 58], [100, 348], [100, 348]])
    # margins clipped to a quarter of the free room on small volumes
    np.testing.assert_array_equal(sampler.start_ranges((40, 80, 96)), [[2, 6], [4, 12], [8, 24]])


def test_rejection_keeps_mostly_lung_cubes() -> None:
    volume = np.full((16, 32, 64), 0.9, np.float32)  # tissue
    volume[:, :, :28] = 0.1  # lung on the left
    cfg = SamplerConfig(crop=(8, 16, 16), reject_threshold=0.425, max_fraction_above=0.15, max_tries=200)
    cubes = SubVolumeSampler(cfg).sample(volume, 30, np.random.default_rng(0))
    fractions = (cubes > 0.425).mean(axis=(1, 2, 3))
    assert np.all(fractions <= 0.15)
    unfiltered = SubVolumeSampler(SamplerConfig(crop=(8, 16, 16))).sample(volume, 30, np.random.default_rng(0))
    assert (unfiltered > 0.425).mean(axis=(1, 2, 3)).max() > 0.15


def test_fallback_to_best_candidate() -> None:
    volume = np.broadcast_to(np.linspace(0, 1, 64, dtype=np.float32), (8, 16, 64)).copy()  # no cube passes
    base = dict(crop=(4, 8, 8), reject_threshold=0.1, max_fraction_above=0.0)
    one = SubVolumeSampler(SamplerConfig(**base, max_tries=1)).sample(volume, 20, np.random.default_rng(0))
    many = SubVolumeSampler(SamplerConfig(**base, max_tries=50)).sample(volume, 20, np.random.default_rng(0))
    assert many.mean() < 0.5 * one.mean()  # best of 50 sits near the low end of the gradient


def test_small_volume_padded_with_warning_or_rejected() -> None:
    volume = np.full((3, 10, 10), 0.5, np.float32)
    with pytest.warns(GenesisWarning, match="smaller than the crop"):
        cubes = SubVolumeSampler(SamplerConfig(crop=(4, 8, 12))).sample(volume, 2, np.random.default_rng(0))
    assert cubes.shape == (2, 4, 8, 12) and set(np.unique(cubes)) == {0.0, 0.5}
    with pytest.raises(VolumeReadError, match="smaller than the crop"):
        SubVolumeSampler(SamplerConfig(crop=(4, 8, 12), pad_small=False)).sample(volume, 1, np.random.default_rng(0))


def test_bad_config_and_input() -> None:
    with pytest.raises(ConfigError):
        SamplerConfig(crop=(0, 8, 8))
    with pytest.raises(ConfigError):
        SamplerConfig(max_tries=0)
    with pytest.raises(VolumeReadError):
        SubVolumeSampler().sample(np.zeros((8, 8)), 1, np.random.default_rng(0))


def test_real_copd_volume_gives_lung_cubes(real_data) -> None:
    from genesis.data.preprocess import preprocess
    from genesis.io import load_volume

    volume01 = preprocess(load_volume(real_data / "cip_copdgene" / "ct-64.nrrd"))
    cfg = SamplerConfig.models_genesis(crop=(16, 24, 24), max_fraction_above=0.3)
    cubes = SubVolumeSampler(cfg).sample(volume01, 8, np.random.default_rng(0))
    fractions = (cubes > MODELS_GENESIS_THRESHOLD).mean(axis=(1, 2, 3))
    assert cubes.shape == (8, 16, 24, 24) and np.all(fractions <= 0.3)
    assert len({c.tobytes() for c in cubes}) > 1


def _reference_score(volume: np.ndarray, start, crop, threshold: float, len_depth: int = 3) -> float:
    """The reference's d_img sum for one candidate, with its loops (infinite_generator_3D.py)."""
    z, y, x = start
    d, h, w = crop
    window = volume[z : z + d + len_depth, y : y + h, x : x + w]
    d_img = np.zeros((d, h, w))
    for dd in range(d):
        for i in range(h):
            for j in range(w):
                for k in range(len_depth):
                    if dd + k < window.shape[0] and window[dd + k, i, j] >= threshold:
                        d_img[dd, i, j] = k
                        break
                    if k == len_depth - 1:
                        d_img[dd, i, j] = k
    return float(np.sum(1.0 - d_img / (len_depth - 1)))


def test_reference_acceptance_measure_is_reproduced() -> None:
    rng = np.random.default_rng(3)
    volume = (rng.random((14, 12, 12)) > 0.9).astype(np.float32) * 0.6 + 0.1  # lung with tissue specks
    volume[:, :, 8:] = 0.8  # and a wall of tissue
    cfg = SamplerConfig(crop=(4, 5, 6), reject_threshold=MODELS_GENESIS_THRESHOLD, max_fraction_above=0.3, len_depth=3)
    sampler = SubVolumeSampler(cfg)
    ranges, score = sampler.scores(volume)
    for _ in range(25):
        start = [int(rng.integers(lo, hi + 1)) for lo, hi in ranges]
        index = tuple(s - lo for s, (lo, _) in zip(start, ranges))
        assert score[index] / 2 == pytest.approx(_reference_score(volume, start, cfg.crop, cfg.reject_threshold))
    acc = sampler.acceptance(volume, "v")
    assert 0 < acc.rate < 1
    cubes = sampler.sample(volume, 12, np.random.default_rng(0), name="v")
    again = sampler.sample(volume, 12, np.random.default_rng(0), name="v")
    np.testing.assert_array_equal(cubes, again)  # a pure function of the generator state
    for cube in cubes:  # every cube passes the reference rule (look-ahead inside the volume)
        where = [(z, y, x) for z in range(ranges[0][0], ranges[0][1] + 1) for y in range(ranges[1][0], ranges[1][1] + 1)
                 for x in range(ranges[2][0], ranges[2][1] + 1)
                 if np.array_equal(volume[z : z + 4, y : y + 5, x : x + 6], cube)]
        assert any(_reference_score(volume, s, cfg.crop, cfg.reject_threshold) <= 0.3 * cube.size + 1e-9 for s in where)


def test_no_acceptable_cube_warns_and_nan_is_a_clear_error() -> None:
    volume = np.full((12, 16, 16), 0.9, np.float32)  # all tissue
    sampler = SubVolumeSampler(SamplerConfig.models_genesis(crop=(4, 8, 8)))
    with pytest.warns(GenesisWarning, match="no cube position passes"):
        cubes = sampler.sample(volume, 2, np.random.default_rng(0), name="solid.nii.gz")
    assert cubes.shape == (2, 4, 8, 8) and sampler.acceptance(volume, "solid.nii.gz").rate == 0.0
    volume[6, 8, 8] = np.nan
    for cfg in (SamplerConfig.models_genesis(crop=(4, 8, 8)), SamplerConfig(crop=(12, 16, 16))):
        with pytest.raises(VolumeReadError, match="nan.nii.gz: NaN"):
            SubVolumeSampler(cfg).sample(volume, 1, np.random.default_rng(0), name="nan.nii.gz")
