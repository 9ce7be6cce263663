"""Synthetic datasets on disk (NIfTI and LUNA16 layouts), the genesis-synth CLI, target stand-ins."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import SimpleITK as sitk

from genesis.cli.synth import main as synth_main
from genesis.data.public.luna16 import Luna16, extract_cube, world_to_voxel
from genesis.data.synthetic import (
    SyntheticConfig,
    case_seed,
    case_uid,
    generate_chest_ct,
    generate_target_case,
    write_synthetic_dataset,
)
from genesis.errors import ConfigError
from genesis.io import load_volume

SMALL = SyntheticConfig(shape=(32, 64, 64), spacing=(7.5, 5.0, 5.0), n_nodules=(2, 2), nodule_diameter_mm=(15.0, 25.0))


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_nifti_dataset_round_trips(tmp_path):
    paths = write_synthetic_dataset(tmp_path, 2, seed=5, config=SMALL, masks=("lungs", "nodules"))
    assert [p.name for p in paths] == [f"{case_uid(5, i)}.nii.gz" for i in range(2)]
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()
    findings = _rows(tmp_path / "findings.csv")
    for i, path in enumerate(paths):
        ct = generate_chest_ct(case_seed(5, i), SMALL)
        vol = load_volume(path)
        assert np.allclose(vol.array, ct.volume.array, atol=1e-3)
        assert np.allclose(vol.spacing, ct.volume.spacing) and np.allclose(vol.origin, ct.volume.origin)
        nodules = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "masks" / case_uid(5, i) / "nodules.nii.gz")))
        assert np.array_equal(nodules, ct.masks["nodules"])
        rows = [r for r in findings if r["seriesuid"] == case_uid(5, i)]
        assert len(rows) == len(ct.findings)
        for row, f in zip(rows, ct.findings):
            world = [float(row[k]) for k in ("coordX", "coordY", "coordZ")]
            assert np.allclose(vol.world_to_index(world), f.center_zyx, atol=0.01)
            assert int(row["label"]) == f.label and row["kind"] == f.kind
    assert not (tmp_path / "masks" / case_uid(5, 0) / "body.nii.gz").exists()


def test_luna16_layout_is_read_by_the_luna16_loader(tmp_path):
    write_synthetic_dataset(tmp_path, 2, seed=1, config=SMALL, layout="luna16", masks=("nodules",))
    luna = Luna16(tmp_path)
    assert [s.subset for s in luna.scans] == [0, 1]
    assert luna.split("train") == luna.scans and luna.split("test") == []
    uid = luna.scans[0].seriesuid
    vol = luna.load(uid)
    assert vol.shape == SMALL.shape
    nodules = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "masks" / uid / "nodules.nii.gz")))
    anns = luna.annotations_for(uid)
    assert anns and {c.label for c in luna.candidates_for(uid)} <= {0, 1}
    for ann in anns:
        zyx = world_to_voxel(vol, ann.coord_xyz)
        cube = extract_cube(nodules, zyx, (3, 3, 3), pad_value=0)
        assert cube[1, 1, 1] == 1


def test_layout_and_count_errors(tmp_path):
    with pytest.raises(ConfigError, match="layout"):
        write_synthetic_dataset(tmp_path, 1, config=SMALL, layout="dicom")
    with pytest.raises(ConfigError, match=">= 1"):
        write_synthetic_dataset(tmp_path, 0, config=SMALL)
    with pytest.raises(ConfigError, match="mask"):
        write_synthetic_dataset(tmp_path, 1, config=SMALL, masks=("liver",))


def test_cli_writes_dataset_and_montage(tmp_path, capsys):
    out = tmp_path / "synth"
    code = synth_main(["--out", str(out), "--n", "1", "--seed", "2", "--contrast", "--montage",
                       "--shape", "32", "64", "64", "--spacing", "7.5", "5", "5"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "not patient data" in printed
    pngs = list((out / "montages").glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "images").glob("*.nii.gz"))) == 1


def test_cli_user_error_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert synth_main(["--out", str(blocker), "--n", "1", "--shape", "16", "32", "32", "--spacing", "15", "10", "10"]) == 2
    assert "error:" in capsys.readouterr().err


def test_liver_target_case():
    case = generate_target_case(3, "liver")
    a, m = case.volume.array, case.masks
    assert case.volume.metadata["synthetic"] is True and case.volume.modality == "CT"
    liver, lesions = m["liver"].astype(bool), m["lesions"].astype(bool)
    assert liver.sum() > 1000 and lesions.any() and not np.any(lesions & ~liver)
    assert 45.0 < np.median(a[liver & ~lesions]) < 75.0
    assert a[lesions].mean() < np.median(a[liver & ~lesions]) - 10.0
    assert set(np.unique(case.labels)) == {0, 1, 2}
    assert np.array_equal(case.labels == 2, lesions)
    again = generate_target_case(3, "liver")
    assert np.array_equal(again.volume.array, a)


def test_brain_target_case():
    case = generate_target_case(4, "brain", shape=(40, 48, 48), spacing=(4.0, 4.0, 4.0))
    a, m = case.volume.array, case.masks
    assert case.volume.modality == "MR" and case.volume.metadata["synthetic"] is True
    assert set(np.unique(case.labels)) <= {0, 1, 2, 4} and m["tumour"].any()
    assert np.array_equal(m["tumour"].astype(bool), case.labels > 0)
    assert not np.any(m["tumour"].astype(bool) & ~m["brain"].astype(bool))
    brain_only = m["brain"].astype(bool) & ~m["tumour"].astype(bool)
    assert a[m["edema"].astype(bool)].mean() > np.median(a[brain_only]) + 100.0  # oedema bright on FLAIR


def test_target_shape_alone_keeps_the_field_of_view():
    small = generate_target_case(1, "liver", shape=(16, 28, 28))
    assert small.volume.spacing == (12.0, 12.0, 12.0)
    full = generate_target_case(1, "liver")
    litres = [c.masks["liver"].sum() * np.prod(c.volume.spacing) / 1e6 for c in (small, full)]
    assert 0.7 < litres[0] / litres[1] < 1.3 and 0.5 < litres[1] < 3.5


def test_target_kind_error():
    with pytest.raises(ConfigError, match="kind"):
        generate_target_case(0, "lung")
