"""Volume geometry: ITK/LPS convention, index <-> world round trips, agreement with SimpleITK."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from genesis.io import Volume


def _oblique_volume() -> Volume:
    angle = np.deg2rad(30.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    flip = np.diag([-1.0, 1.0, 1.0])
    direction = tuple((rot @ flip).ravel())
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) - 1000
    return Volume(array, spacing=(2.5, 0.8, 0.6), origin=(10.0, -20.0, 30.0), direction=direction)


def test_index_to_world_matches_simpleitk() -> None:
    volume = _oblique_volume()
    image = volume.to_sitk()
    for zyx in [(0, 0, 0), (3, 4, 5), (1.5, 2.25, 0.5)]:
        expected = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in zyx[::-1]))
        np.testing.assert_allclose(volume.index_to_world(zyx), expected, atol=1e-9)


def test_world_to_index_inverts_index_to_world_vectorised() -> None:
    volume = _oblique_volume()
    idx = np.random.default_rng(0).uniform(0, 4, size=(10, 3))
    np.testing.assert_allclose(volume.world_to_index(volume.index_to_world(idx)), idx, atol=1e-9)


def test_sitk_round_trip_keeps_array_and_geometry() -> None:
    volume = _oblique_volume()
    back = Volume.from_sitk(volume.to_sitk())
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.dtype == np.float32
    np.testing.assert_allclose(back.spacing, volume.spacing)
    np.testing.assert_allclose(back.origin, volume.origin)
    np.testing.assert_allclose(back.direction, volume.direction)
    assert back.shape == (4, 5, 6)


def test_with_array_copies_metadata() -> None:
    volume = Volume(np.zeros((2, 2, 2), np.float32), (1, 1, 1), metadata={"a": 1})
    other = volume.with_array(np.ones((2, 2, 2), np.float32), spacing=(2.0, 2.0, 2.0))
    other.metadata["a"] = 2
    assert volume.metadata["a"] == 1 and other.spacing == (2.0, 2.0, 2.0)


def test_sitk_physical_point_agrees_for_real_reader_output(tmp_path) -> None:
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5), np.float32))
    image.SetSpacing((0.7, 0.8, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    volume = Volume.from_sitk(image)
    assert volume.spacing == (2.0, 0.8, 0.7)  # (z, y, x)
    np.testing.assert_allclose(volume.index_to_world((2, 3, 4)), image.TransformIndexToPhysicalPoint((4, 3, 2)))
