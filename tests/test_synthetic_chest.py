"""Synthetic chest CT: anatomy in HU, masks aligned with findings, determinism, config errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from genesis.data.synthetic import MASK_NAMES, SyntheticConfig, generate_chest_ct
from genesis.data.synthetic.shapes import Grid, draw_blob
from genesis.errors import ConfigError

ALL_SUBTYPES = {"solid": 1.0, "part_solid": 1.0, "ground_glass": 1.0}


@pytest.fixture(scope="module")
def ctpa():
    """Default grid, contrast on, several nodules of every subtype and emboli."""
    return generate_chest_ct(7, contrast=True, n_nodules=5, n_emboli=3, n_candidates=4, nodule_subtypes=ALL_SUBTYPES)


@pytest.fixture(scope="module")
def plain():
    return generate_chest_ct(3, n_nodules=(4, 4), nodule_subtypes={"ground_glass": 1.0}, nodule_diameter_mm=(12.0, 25.0))


def test_volume_and_masks_are_consistent_and_marked_synthetic(ctpa):
    vol = ctpa.volume
    assert vol.array.dtype == np.float32 and vol.array.shape == tuple(SyntheticConfig().shape)
    assert vol.spacing == tuple(SyntheticConfig().spacing)
    assert vol.metadata["synthetic"] is True and "SYNTHETIC" in vol.metadata["description"]
    assert vol.modality == "CT"
    assert set(MASK_NAMES) <= set(ctpa.masks)
    for name, mask in ctpa.masks.items():
        assert mask.dtype == np.uint8 and mask.shape == vol.array.shape, name
    assert -1024.0 <= vol.array.min() and vol.array.max() <= 3071.0
    # Voxel (0,0,0) maps to the stored origin and the grid is centred on world 0.
    centre = (np.asarray(vol.shape) - 1) / 2.0
    assert np.allclose(vol.index_to_world(centre), 0.0, atol=1e-6)


def test_tissues_have_textbook_hu(ctpa, plain):
    for ct in (ctpa, plain):
        a, m = ct.volume.array, ct.masks
        lungs = m["lungs"].astype(bool)
        assert 0.08 < lungs.sum() / m["body"].sum() < 0.5
        assert -880.0 < a[lungs].mean() < -780.0
        core = ndimage.binary_erosion(lungs, iterations=2) & ~m["vessels"].astype(bool)
        assert -930.0 < a[core].mean() < -840.0
        outside = ~ndimage.binary_dilation(m["body"].astype(bool), iterations=3)
        assert abs(a[outside].mean() + 1000.0) < 15.0
        bones = ndimage.binary_erosion(m["bones"].astype(bool))
        assert a[bones].mean() > 250.0
        airway = ndimage.binary_erosion(m["airways"].astype(bool))
        assert a[airway].mean() < -700.0
    pa = ctpa.masks["pulmonary_arteries"].astype(bool) & ~ctpa.masks["emboli"].astype(bool)
    assert 150.0 < np.median(ctpa.volume.array[ndimage.binary_erosion(pa)]) < 420.0
    assert np.median(plain.volume.array[ndimage.binary_erosion(plain.masks["pulmonary_arteries"].astype(bool))]) < 100.0


def test_noise_level_in_air_matches_config():
    ct = generate_chest_ct(1, noise_hu=30.0, shape=(24, 64, 64), spacing=(10.0, 5.0, 5.0), blur_vox=0.0)
    air = ct.volume.array[:, :4, :]  # above the anterior body surface
    assert 24.0 < air.std() < 36.0


def _component(mask: np.ndarray, centre_zyx) -> np.ndarray:
    labels, _ = ndimage.label(mask)
    label = labels[tuple(np.rint(centre_zyx).astype(int))]
    assert label > 0
    return labels == label


def _core(ct, f) -> np.ndarray:
    """Voxels of the finding's mask component within 0.3 diameters of its centre (away from the edge)."""
    comp = _component(ct.masks["nodules"], f.center_zyx)
    idx = np.indices(comp.shape, dtype=np.float32)
    dist2 = sum(((idx[k] - f.center_zyx[k]) * ct.volume.spacing[k]) ** 2 for k in range(3))
    return comp & (dist2 < (0.3 * f.diameter_mm) ** 2)


def test_nodule_masks_match_findings(ctpa, plain):
    for ct in (ctpa, plain):
        spacing = np.asarray(ct.volume.spacing)
        nodules = [f for f in ct.findings if f.kind == "nodule"]
        assert nodules and all(f.label == 1 for f in nodules)
        for f in nodules:
            assert 3.0 <= f.diameter_mm <= 30.0
            comp = _component(ct.masks["nodules"], f.center_zyx)
            centroid = np.argwhere(comp).mean(axis=0)
            assert np.all(np.abs(centroid - np.asarray(f.center_zyx)) < 1.0)
            if f.diameter_mm >= 4 * spacing.max():
                ratio = comp.sum() * spacing.prod() / (np.pi / 6 * f.diameter_mm**3)
                assert 0.75 < ratio < 1.3, (f, ratio)


def test_ground_glass_nodules_are_in_the_ggo_range(plain):
    a = plain.volume.array
    ggo = [f for f in plain.findings if f.kind == "nodule" and f.subtype == "ground_glass"]
    assert ggo
    for f in ggo:
        # Vessels may run through ground glass (it does not hide them); judge the rest.
        core = _core(plain, f) & ~plain.masks["vessels"].astype(bool)
        assert -750.0 < a[core].mean() < -300.0


def test_solid_nodules_are_soft_tissue():
    ct = generate_chest_ct(5, n_nodules=3, nodule_subtypes={"solid": 1.0}, nodule_diameter_mm=(14.0, 20.0))
    for f in ct.findings:
        if f.kind == "nodule":
            assert -80.0 < np.median(ct.volume.array[_core(ct, f)]) < 90.0


def test_emboli_are_filling_defects_inside_pulmonary_arteries(ctpa):
    emboli = ctpa.masks["emboli"].astype(bool)
    found = [f for f in ctpa.findings if f.kind == "embolus"]
    assert found and emboli.any()
    assert np.all(ctpa.masks["pulmonary_arteries"][emboli] == 1)
    for f in found:
        assert emboli[tuple(np.rint(f.center_zyx).astype(int))] or f.diameter_mm < 5.0
    a = ctpa.volume.array
    lumen = ctpa.masks["pulmonary_arteries"].astype(bool) & ~emboli
    assert a[emboli].mean() < a[lumen].mean() - 50.0
    assert -100.0 < a[emboli].mean() < 120.0
    # No emboli without contrast.
    plain = generate_chest_ct(7, shape=(32, 64, 64), spacing=(7.5, 5.0, 5.0))
    assert not plain.masks["emboli"].any() and not any(f.kind == "embolus" for f in plain.findings)


def test_candidates_are_false_positives(ctpa):
    cands = [f for f in ctpa.findings if f.kind == "candidate"]
    assert len(cands) >= 1
    assert all(f.label == 0 and f.subtype in ("vessel_crossing", "scar") for f in cands)
    assert ctpa.masks["candidates"].any()


def test_same_seed_same_volume_different_seed_differs():
    kw = dict(shape=(32, 64, 64), spacing=(7.5, 5.0, 5.0), contrast=True)
    a, b, c = generate_chest_ct(11, **kw), generate_chest_ct(11, **kw), generate_chest_ct(12, **kw)
    assert np.array_equal(a.volume.array, b.volume.array)
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert a.findings == b.findings
    assert not np.array_equal(a.volume.array, c.volume.array)


def test_any_spacing_gives_the_same_anatomy():
    coarse = generate_chest_ct(4, shape=(32, 64, 64), spacing=(7.5, 5.0, 5.0))
    fine = generate_chest_ct(4, shape=(48, 96, 96), spacing=(5.0, 10.0 / 3, 10.0 / 3))
    v_coarse = coarse.masks["lungs"].sum() * np.prod(coarse.volume.spacing)
    v_fine = fine.masks["lungs"].sum() * np.prod(fine.volume.spacing)
    assert 0.85 < v_coarse / v_fine < 1.15  # same physical lung volume (litres)
    assert 2.0e6 < v_fine < 8.0e6


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown synthetic CT option"):
        generate_chest_ct(0, not_an_option=1)
    with pytest.raises(ConfigError, match="spacing"):
        generate_chest_ct(0, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="shape"):
        generate_chest_ct(0, shape=(2, 64, 64))
    with pytest.raises(ConfigError, match="SyntheticConfig or a dict"):
        generate_chest_ct(0, config=[1, 2])


def test_config_from_a_plain_dict_equals_the_dataclass():
    from_dict = generate_chest_ct(2, {"shape": [16, 32, 32], "spacing": [15, 10, 10], "contrast": True})
    from_cfg = generate_chest_ct(2, SyntheticConfig(shape=(16, 32, 32), spacing=(15.0, 10.0, 10.0), contrast=True))
    assert np.array_equal(from_dict.volume.array, from_cfg.volume.array)
    assert from_dict.volume.spacing == (15.0, 10.0, 10.0)


def test_blob_volume_and_centroid_on_a_fine_grid():
    grid = Grid((40, 40, 40), (0.5, 0.5, 0.5))
    rng = np.random.default_rng(0)
    centre = np.array([0.3, -0.7, 1.1])
    sl, occ, mask = draw_blob(grid, centre, 6.0, rng, lobulation=0.1)
    idx = np.argwhere(mask) + [s.start for s in sl]
    assert np.allclose(grid.to_mm(idx.mean(axis=0)), centre, atol=0.25)
    ratio = mask.sum() * 0.125 / (4 / 3 * np.pi * 6.0**3)
    assert 0.9 < ratio < 1.1
    assert 0.9 < occ.sum() / mask.sum() < 1.1  # partial-volume occupancy keeps the volume
