"""LUNA16 loader on a tiny dataset written in the real layout (subsetN/<uid>.mhd + CSVs)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from genesis.data.public.luna16 import (
    REFERENCE_SPLIT,
    Luna16,
    extract_cube,
    read_annotations,
    voxel_to_world,
    world_to_voxel,
)
from genesis.errors import DatasetLayoutError

FLIP_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _write_scan(path, value_at, direction=FLIP_X):
    array = np.full((6, 8, 10), -1000, dtype=np.int16)
    array[value_at] = 500
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-10.0, -20.0, -30.0))
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


@pytest.fixture()
def luna_root(tmp_path):
    points = {}
    for subset, uid in ((0, "1.3.6.1.4.1.14519.5.2.1.6279.6001.100"), (5, "1.3.6.1.4.1.14519.5.2.1.6279.6001.200"), (8, "1.3.6.1.4.1.14519.5.2.1.6279.6001.300")):
        image = _write_scan(tmp_path / f"subset{subset}" / f"{uid}.mhd", (2, 3, 4))
        points[uid] = image.TransformContinuousIndexToPhysicalPoint((4.0, 3.0, 2.0))
    (tmp_path / "subset9").mkdir()  # empty subset folders are fine
    (tmp_path / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        + "".join(f"{uid},{x},{y},{z},5.5\n" for uid, (x, y, z) in points.items())
    )
    (tmp_path / "candidates_V2").mkdir()
    (tmp_path / "candidates_V2" / "candidates_V2.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,class\n"
        + "".join(f"{uid},{x},{y},{z},1\n{uid},0,0,0,0\n" for uid, (x, y, z) in points.items())
    )
    return tmp_path, points


def test_scans_subsets_and_reference_split(luna_root):
    root, points = luna_root
    luna = Luna16(root)
    assert len(luna) == 3 and [s.subset for s in luna.scans] == [0, 5, 8]
    assert [s.subset for s in luna.split("train")] == [0]
    assert [s.subset for s in luna.split("val")] == [5]
    assert [s.subset for s in luna.split("test")] == [8]
    assert REFERENCE_SPLIT["train"] == (0, 1, 2, 3, 4)
    assert len(Luna16(root, subsets=[5, 8])) == 2
    uid = luna.scans[1].seriesuid
    assert len(luna.annotations_for(uid)) == 1 and luna.annotations_for(uid)[0].diameter_mm == 5.5
    assert sorted(c.label for c in luna.candidates_for(uid)) == [0, 1]
    with pytest.raises(DatasetLayoutError, match="no scan"):
        luna.scan("missing")
    with pytest.raises(DatasetLayoutError, match="split"):
        luna.split("holdout")


def test_world_to_voxel_uses_origin_spacing_direction(luna_root):
    root, points = luna_root
    luna = Luna16(root)
    uid = luna.scans[0].seriesuid
    vol = luna.load(uid)
    ann = luna.annotations_for(uid)[0]
    zyx = world_to_voxel(vol, ann.coord_xyz)
    assert np.allclose(zyx, (2.0, 3.0, 4.0), atol=1e-6)
    assert np.allclose(voxel_to_world(vol, zyx), ann.coord_xyz)
    # With the flipped x axis, world x decreases with the column index.
    assert voxel_to_world(vol, (0, 0, 1))[0] < voxel_to_world(vol, (0, 0, 0))[0]
    cube = extract_cube(vol.array, zyx, (3, 3, 3))
    assert cube[1, 1, 1] == 500 and cube.sum() == 500 - 26 * 1000


def test_extract_cube_pads_at_borders():
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    cube = extract_cube(array, (0, 0, 0), (4, 4, 4), pad_value=-1.0)
    assert cube.shape == (4, 4, 4)
    assert np.all(cube[:2] == -1.0) and np.all(cube[:, :2] == -1.0) and np.all(cube[:, :, :2] == -1.0)
    assert np.array_equal(cube[2:, 2:, 2:], array[:2, :2, :2])
    far = extract_cube(array, (100, 100, 100), (2, 2, 2), pad_value=7.0)
    assert np.all(far == 7.0)


def test_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        Luna16(tmp_path / "nope")
    with pytest.raises(DatasetLayoutError, match="subset0..subset9"):
        Luna16(tmp_path)
    _write_scan(tmp_path / "subset0" / "a.mhd", (0, 0, 0))
    with pytest.raises(DatasetLayoutError, match="annotations.csv"):
        Luna16(tmp_path)
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY\n")
    with pytest.raises(DatasetLayoutError, match="coordZ"):
        Luna16(tmp_path)
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\na,1,2,x,4\n")
    with pytest.raises(DatasetLayoutError, match="line 2"):
        read_annotations(tmp_path / "annotations.csv")
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    assert Luna16(tmp_path).candidates == []
