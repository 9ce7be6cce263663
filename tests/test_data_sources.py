"""Volume sources: folders, manifests, single files, synthetic volumes, the --data argument."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from genesis.data.preprocess import PreprocessConfig, preprocess
from genesis.data.public.folder import VolumeRecord, find_volumes
from genesis.data.public.manifest import read_manifest
from genesis.data.sources import (
    FileVolumeSource,
    SyntheticVolumeSource,
    VolumeSource,
    synthetic_seed,
    volume_source_from_arg,
)
from genesis.errors import DatasetLayoutError, InputFileError
from genesis.io import Volume, load_volume, save_volume, write_dicom_series


def _ct(seed=0, shape=(5, 10, 12)) -> Volume:
    array = np.random.default_rng(seed).uniform(-1000, 500, shape).astype(np.float32)
    return Volume(array, (2.0, 1.0, 1.0))


@pytest.fixture()
def tree(tmp_path) -> Path:
    root = tmp_path / "data"
    save_volume(_ct(0), root / "a.nii.gz")
    save_volume(_ct(1), root / "sub" / "b.mhd")
    save_volume(_ct(2), root / "sub" / "c.nrrd")
    write_dicom_series(_ct(3), root / "sub" / "dicom")
    write_dicom_series(_ct(4), root / "two", series_uid="1.2.3.1", prefix="a")
    write_dicom_series(_ct(5, (3, 10, 12)), root / "two", series_uid="1.2.3.2", prefix="b")
    save_volume(_ct(6), root / ".hidden" / "x.nii")
    (root / "notes.txt").write_text("not a volume")
    return root


def test_find_volumes_recursive(tree) -> None:
    records = find_volumes(tree)
    found = [(str(r.path.relative_to(tree)), r.series_uid) for r in records]
    assert found == [
        ("a.nii.gz", None),
        ("sub/b.mhd", None),
        ("sub/c.nrrd", None),
        ("sub/dicom", None),
        ("two", "1.2.3.1"),
        ("two", "1.2.3.2"),
    ]


def test_empty_folder_is_an_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError, match="empty.*no CT volumes"):
        find_volumes(tmp_path / "empty")
    with pytest.raises(DatasetLayoutError, match="empty"):
        volume_source_from_arg(tmp_path / "empty")


def test_folder_source_loads_every_volume(tree) -> None:
    source = volume_source_from_arg(tree)
    assert isinstance(source, VolumeSource) and not source.is_synthetic and len(source) == 6
    assert source.load(5).shape == (3, 10, 12)  # the second series of "two"
    np.testing.assert_allclose(source.load(0), preprocess(load_volume(tree / "a.nii.gz")))
    assert source.name(4).endswith("two#1.2.3.1")
    with pytest.raises(IndexError):
        source.load(6)


def test_csv_manifest(tree) -> None:
    manifest = tree / "list.csv"
    manifest.write_text("path,split,label,site\na.nii.gz,train,0,x\nsub/c.nrrd,val,1,y\nsub/dicom,train,1,z\n")
    records = read_manifest(manifest)
    assert [r.path for r in records] == [tree / "a.nii.gz", tree / "sub/c.nrrd", tree / "sub/dicom"]
    assert [(r.split, r.label, r.extra["site"]) for r in records] == [
        ("train", "0", "x"),
        ("val", "1", "y"),
        ("train", "1", "z"),
    ]
    assert len(volume_source_from_arg(manifest, split="train")) == 2
    with pytest.raises(DatasetLayoutError, match="no entries with split 'test'"):
        read_manifest(manifest, split="test")


def test_yaml_manifest_forms(tree) -> None:
    listed = tree / "list.yaml"
    listed.write_text("- a.nii.gz\n- {path: two, series_uid: 1.2.3.2, split: test}\n")
    records = read_manifest(listed)
    assert records[0] == VolumeRecord(tree / "a.nii.gz")
    assert records[1].series_uid == "1.2.3.2" and records[1].split == "test"
    nested = tree / "nested.yml"
    nested.write_text(f"volumes:\n  - path: {tree / 'sub' / 'b.mhd'}\n")
    assert read_manifest(nested)[0].path == tree / "sub" / "b.mhd"
    source = volume_source_from_arg(listed)
    assert source.load(1).shape == (3, 10, 12)


@pytest.mark.parametrize(
    "name,text,match",
    [
        ("nopath.csv", "file,split\na.nii.gz,train\n", "needs a 'path' column"),
        ("missing.csv", "path\nnot_there.nii.gz\n", "entry 1: .*not_there.nii.gz does not exist"),
        ("blank.csv", "path\n\n", "lists no volumes"),
        ("emptyrow.csv", "path,split\n,train\n", "entry 1 has no 'path'"),
        ("bad.yaml", "a: [1, 2\n", "invalid YAML"),
        ("scalar.yaml", "42\n", "must be a list"),
    ],
)
def test_bad_manifests_name_the_file(tree, name, text, match) -> None:
    manifest = tree / name
    manifest.write_text(text)
    with pytest.raises(DatasetLayoutError, match=match) as info:
        volume_source_from_arg(manifest)
    assert name in str(info.value)


def test_single_file_and_bad_arguments(tree, tmp_path) -> None:
    source = volume_source_from_arg(tree / "sub" / "c.nrrd", PreprocessConfig(window=(-500.0, 500.0)))
    assert len(source) == 1
    np.testing.assert_allclose(source.load(0), preprocess(load_volume(tree / "sub" / "c.nrrd"), source.preprocess_cfg))
    with pytest.raises(InputFileError, match="does not exist"):
        volume_source_from_arg(tmp_path / "nothing")
    with pytest.raises(InputFileError, match="unknown data argument"):
        volume_source_from_arg(tree / "notes.txt")
    with pytest.raises(DatasetLayoutError):
        FileVolumeSource([])


def test_real_data_folder(real_data) -> None:
    source = volume_source_from_arg(real_data / "cip_copdgene")
    names = [Path(source.name(i)).name for i in range(len(source))]
    # the lung label maps lm-64.nrrd and wholeLung-64.nrrd are skipped by content, with the reason
    assert names == ["crop_ct_2slices.nrrd", "ct-64.nrrd", "simple_dicom"]
    skipped = {Path(s.record.path).name: s.reason for s in source.data_report.scans if not s.used}
    assert sorted(skipped) == ["lm-64.nrrd", "wholeLung-64.nrrd"]
    assert all(r.startswith("label map") for r in skipped.values())
    assert source.load(1).shape == (79, 64, 64)


# ---- synthetic -----------------------------------------------------------------------------------
@dataclass
class _FakeCT:
    volume: Volume


@pytest.fixture()
def fake_generator(monkeypatch) -> list:
    """Stands in for genesis.data.synthetic (another module) with the documented contract."""
    calls: list = []

    def generate_chest_ct(seed, config=None, **overrides):
        calls.append((seed, config))
        volume = _ct(seed % 1000, (6, 12, 14))
        volume.metadata["synthetic"] = True
        return _FakeCT(volume)

    module = types.ModuleType("genesis.data.synthetic")
    module.generate_chest_ct = generate_chest_ct
    monkeypatch.setitem(sys.modules, "genesis.data.synthetic", module)
    return calls


def test_synthetic_source_contract(fake_generator, tmp_path) -> None:
    source = SyntheticVolumeSource(n=3, seed=11, synthetic_cfg="cfg")
    assert source.is_synthetic and len(source) == 3 and isinstance(source, VolumeSource)
    a = source.load(2)
    assert fake_generator[-1] == (synthetic_seed(11, 2), "cfg")
    np.testing.assert_array_equal(a, SyntheticVolumeSource(n=3, seed=11, synthetic_cfg="cfg").load(2))
    assert source.name(2) == f"synthetic:{synthetic_seed(11, 2)}"
    assert len({synthetic_seed(11, i) for i in range(3)} | {synthetic_seed(12, 0)}) == 4
    cached = SyntheticVolumeSource(n=3, seed=11, cache_dir=tmp_path)
    cached.load(0)
    calls = len(fake_generator)
    np.testing.assert_array_equal(SyntheticVolumeSource(n=3, seed=11, cache_dir=tmp_path).load(0), cached.load(0))
    assert len(fake_generator) == calls


def test_none_means_synthetic(fake_generator) -> None:
    source = volume_source_from_arg(None, synthetic_n=4, seed=3)
    assert source.is_synthetic and len(source) == 4
    assert source.load(0).dtype == np.float32


def test_real_synthetic_generator_small() -> None:
    from genesis.data.synthetic import SyntheticConfig

    cfg = SyntheticConfig(shape=(16, 40, 40))
    source = SyntheticVolumeSource(n=2, seed=5, synthetic_cfg=cfg)
    a, b = source.load(0), source.load(1)
    assert a.shape == (16, 40, 40) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, SyntheticVolumeSource(n=2, seed=5, synthetic_cfg=cfg).load(0))
