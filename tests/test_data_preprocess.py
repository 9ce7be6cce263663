"""HU window, resampling, body crop and the preprocess chain."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from genesis.data.preprocess import PreprocessConfig, crop_foreground, preprocess, resample, window_hu
from genesis.errors import ConfigError, GenesisWarning
from genesis.io import Volume


def test_window_exact_values() -> None:
    hu = np.array([-2000.0, -1000.0, 0.0, 500.0, 1000.0, 3000.0])
    np.testing.assert_allclose(window_hu(hu), [0, 0, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(window_hu(hu, (-100.0, 900.0)), [0, 0, 0.1, 0.6, 1, 1], atol=1e-7)
    assert window_hu(hu).dtype == np.float32


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, st.integers(1, 50), elements=st.floats(-4000, 4000, width=32)))
def test_window_is_monotone_and_in_range(values) -> None:
    out = window_hu(values)
    assert out.min() >= 0.0 and out.max() <= 1.0
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(out[order]) >= 0)


@pytest.mark.parametrize("bad", [(1000.0, -1000.0), (5.0, 5.0)])
def test_bad_window_is_a_config_error(bad) -> None:
    with pytest.raises(ConfigError):
        window_hu(np.zeros(3), bad)
    with pytest.raises(ConfigError):
        PreprocessConfig(window=bad)


def test_bad_spacing_and_order() -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError):
        PreprocessConfig(order=2)


def _point_volume() -> Volume:
    array = np.full((10, 12, 14), -1000.0, np.float32)
    array[4, 6, 7] = 1000.0
    return Volume(array, spacing=(2.0, 1.0, 1.0), origin=(5.0, -3.0, 10.0))


def test_resample_changes_grid_and_keeps_world_positions() -> None:
    volume = _point_volume()
    out = resample(volume, (1.0, 1.0, 1.0), order=0)
    assert out.shape == (20, 12, 14) and out.spacing == (1.0, 1.0, 1.0)
    assert out.origin == volume.origin and out.direction == volume.direction
    assert set(np.unique(out.array)) <= {-1000.0, 1000.0}  # nearest neighbour keeps the values
    peak_world = volume.index_to_world((4, 6, 7))
    z, y, x = np.round(out.world_to_index(peak_world)).astype(int)
    assert out.array[z, y, x] == 1000.0
    down = resample(volume, (2.0, 2.0, 2.0), order=1)
    assert down.shape == (10, 6, 7) and down.array.dtype == np.float32


def test_resample_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        resample(_point_volume(), (1.0, -1.0, 1.0))
    with pytest.raises(ConfigError):
        resample(_point_volume(), (1.0, 1.0, 1.0), order=5)


def _phantom() -> Volume:
    array = np.full((12, 32, 36), -1000.0, np.float32)
    array[3:9, 5:20, 6:25] = 40.0  # body
    array[:, 28:30, 2:34] = 200.0  # table: separate, smaller component
    return Volume(array, spacing=(2.0, 1.0, 1.0), origin=(1.0, 2.0, 3.0))


def test_crop_foreground_keeps_body_drops_table() -> None:
    volume = _phantom()
    out = crop_foreground(volume, threshold_hu=-500, margin=(1, 2, 3))
    assert out.shape == (6 + 2, 15 + 4, 19 + 6)
    np.testing.assert_allclose(out.index_to_world((0, 0, 0)), volume.index_to_world((2, 3, 3)))
    assert out.array.max() == 40.0  # the table is outside the crop
    tight = crop_foreground(volume, margin=(0, 0, 0))
    assert tight.shape == (6, 15, 19) and np.all(tight.array == 40.0)


def test_crop_foreground_of_air_warns_and_keeps_volume() -> None:
    volume = Volume(np.full((3, 4, 5), -1000.0, np.float32), (1, 1, 1))
    with pytest.warns(GenesisWarning, match="body crop skipped"):
        assert crop_foreground(volume) is volume


def test_preprocess_chain() -> None:
    volume = _phantom()
    plain = preprocess(volume)
    assert plain.shape == volume.shape and plain.dtype == np.float32 and plain.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(plain, window_hu(volume.array))
    cfg = PreprocessConfig(window=(-1000.0, 1000.0), spacing=(1.0, 1.0, 1.0), crop_body=True, body_margin=(0, 0, 0))
    out = preprocess(volume, cfg)
    assert out.shape == (12, 15, 19)  # cropped to (6, 15, 19), then z doubled
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out[2:-2], 0.52, atol=1e-6)  # 40 HU -> 0.52 (edges are interpolated with air)
