"""Issue 12 gaps: --assume-spacing for fine-tuning, huge arrays-file headers, checkpoint OSErrors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _owndata import classification_csv  # noqa: E402

from genesis.errors import GenesisWarning, VolumeReadError  # noqa: E402


class _Loaded(Exception):
    """Raised right after the target's data were read: the test needs no training."""


def _zero_spacing(path: Path) -> None:
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    broken = nib.Nifti1Image(data, None)  # no sform, no qform: pixdim alone gives the spacing
    broken.header["pixdim"][1:4] = (0.0, 2.0, 2.0)
    nib.save(broken, str(path))


def test_finetune_assume_spacing_reaches_the_target_readers(tmp_path, monkeypatch) -> None:
    from finetune import engine
    from genesis.cli.finetune import build_parser, config_from_args

    root = tmp_path / "ds"
    csv_path = classification_csv(root, n=6)
    _zero_spacing(root / "vol" / "v1.nii.gz")

    def stop(data, target):
        raise _Loaded(data)

    monkeypatch.setattr(engine, "_check_splits", stop)
    argv = ["--target", "classification", "--data", str(csv_path), "--device", "cpu", "--width", "2"]
    cfg = config_from_args(build_parser().parse_args(argv + ["--out", str(tmp_path / "a")]))
    with pytest.raises(VolumeReadError, match="--assume-spacing") as info:
        engine.run_finetune(cfg, log=lambda line: None)
    assert "v1.nii.gz" in str(info.value)

    cfg = config_from_args(build_parser().parse_args(argv + ["--out", str(tmp_path / "b"), "--assume-spacing", "1.5"]))
    assert cfg.assume_spacing == 1.5
    with pytest.warns(GenesisWarning, match="assuming 1.5 mm"), pytest.raises(_Loaded) as loaded:
        engine.run_finetune(cfg, log=lambda line: None)
    data = loaded.value.args[0]
    assert len(data.train) + len(data.val) + len(data.test) == 6
    # the setting is scoped to the target's loading: a bare read afterwards is strict again
    from genesis.io import load_volume

    with pytest.raises(VolumeReadError, match="--assume-spacing"):
        load_volume(root / "vol" / "v1.nii.gz")


def test_finetune_assume_spacing_is_validated_and_keys_the_volume_cache(tmp_path) -> None:
    from finetune.config import FinetuneConfig
    from finetune.targets._common import cached_array
    from genesis.errors import ConfigError

    with pytest.raises(ConfigError, match="assume_spacing"):
        FinetuneConfig(out=str(tmp_path / "x"), assume_spacing=0.0).validate()
    source = tmp_path / "scan.nii"
    source.write_bytes(b"scan")
    calls: list[float | None] = []

    def compute(mm):
        def run():
            calls.append(mm)
            return np.full(3, mm or 0.0, np.float32), {}
        return run

    for mm in (None, 1.5, None, 1.5):
        cfg = FinetuneConfig(out=str(tmp_path / "out"), assume_spacing=mm)
        array, _ = cached_array(cfg, "ncc", source, ("params",), compute(mm))
        assert float(array[0]) == (mm or 0.0)
    assert calls == [None, 1.5]  # one entry per setting, each reused


def _scan(path: Path, pixdim) -> Path:
    """A small float CT-like scan (air around a noisy body) with the given NIfTI pixdim."""
    import nibabel as nib

    rng = np.random.default_rng(len(path.name))
    data = np.full((24, 24, 24), -1000.0, np.float32) + rng.normal(0, 10, (24, 24, 24)).astype(np.float32)
    data[4:20, 4:20, 4:20] = 40 + rng.normal(0, 30, (16, 16, 16))
    image = nib.Nifti1Image(data, None)  # no sform, no qform: pixdim alone gives the spacing
    image.header["pixdim"][1:4] = pixdim
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def test_pretrain_assume_spacing_reaches_folder_discovery_and_layouts(tmp_path) -> None:
    from genesis.data.preprocess import PreprocessConfig
    from genesis.data.sources import volume_source_from_arg

    folder = tmp_path / "vol"
    _scan(folder / "a.nii.gz", (1.0, 1.0, 1.0))
    _scan(folder / "b.nii.gz", (0.0, 1.0, 1.0))
    strict = volume_source_from_arg(folder, PreprocessConfig(), cache_dir=tmp_path / "c1")
    assert [s.status for s in strict.data_report.scans] == ["used", "skipped"]
    lenient = volume_source_from_arg(folder, PreprocessConfig(assume_spacing=1.5), cache_dir=tmp_path / "c2")
    assert [s.status for s in lenient.data_report.scans] == ["used", "used"]
    assert any("assuming 1.5 mm" in w for w in lenient.data_report.scans[1].seen_warnings)  # said in data.csv
    csv_path = tmp_path / "images.csv"
    csv_path.write_text("image,label,group\nvol/a.nii.gz,0,p0\nvol/b.nii.gz,1,p1\n")
    layout = volume_source_from_arg(csv_path, PreprocessConfig(assume_spacing=1.5), cache_dir=tmp_path / "c3")
    with pytest.warns(GenesisWarning, match="assuming 1.5 mm"):
        assert layout.load(1).ndim == 3


def _huge_h5(path: Path, name: str = "images", shape=(1 << 20, 1, 64, 1024, 1024)) -> Path:
    """An HDF5 file of a few KB whose chunked dataset declares ~256 TiB (nothing written)."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset(name, shape=shape, dtype="float32", chunks=(1,) * (len(shape) - 2) + (8, 2))
        if name == "images":
            handle.create_dataset("labels", data=np.zeros(4, np.int64))
    return path


def test_huge_arrays_file_header_is_refused_before_allocating(tmp_path) -> None:
    from genesis.data.layouts import read_dataset
    from genesis.data.public.medmnist import load_medmnist3d
    from genesis.errors import DatasetLayoutError, InputFileError

    path = _huge_h5(tmp_path / "claims.h5")
    assert path.stat().st_size < 64 << 10
    with pytest.raises(DatasetLayoutError, match="GiB") as info:
        read_dataset(path)
    assert "claims.h5" in str(info.value) and "images" in str(info.value)

    # npz: a compressed member whose .npy header claims far more than it holds (a zip bomb of one)
    import zipfile

    header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 16, 1, 512, 512, 512)}
    buffer = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    npz = tmp_path / "claims.npz"
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images.npy", buffer.getvalue() + b"\0" * 1024)
        archive.writestr("labels.npy", _npy(np.zeros(4, np.int64)))
    with pytest.raises(DatasetLayoutError, match="GiB") as info:
        read_dataset(npz)
    assert "claims.npz" in str(info.value)
    medmnist = tmp_path / "organ.npz"
    with zipfile.ZipFile(medmnist, "w", zipfile.ZIP_DEFLATED) as archive:
        for split in ("train", "val", "test"):
            archive.writestr(f"{split}_images.npy", buffer.getvalue() + b"\0" * 1024)
            archive.writestr(f"{split}_labels.npy", _npy(np.zeros((4, 1), np.int64)))
    with pytest.raises(InputFileError, match="GiB") as info:
        load_medmnist3d(medmnist)
    assert "organ.npz" in str(info.value)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_huge_keras_weights_header_is_refused_before_allocating(tmp_path) -> None:
    from genesis.errors import CheckpointError
    from genesis.weights.convert import convert_keras_h5

    # 1 TiB declared: over the weights limit on any machine (and never allocatable by mistake)
    path = _huge_h5(tmp_path / "keras.h5", "model_weights/depth_0_conv/kernel", shape=(1 << 14, 1024, 1024, 16))
    with pytest.raises(CheckpointError, match="GiB") as info:
        convert_keras_h5(path)
    assert "keras.h5" in str(info.value) and "depth_0_conv/kernel" in str(info.value)


def test_io_errors_while_persisting_an_epoch_are_one_line(tmp_path, capsys, monkeypatch) -> None:
    import errno

    from genesis.cli._common import user_errors_exit
    from genesis.cli.pretrain import main
    from genesis.training import engine

    tiny = ["--steps-per-epoch", "1", "--batch-size", "2", "--width", "2", "--crop", "8", "16", "16", "--device",
            "cpu", "--no-progress", "--task", "masked_region", "--set", "data.synthetic_shape=[16,32,32]",
            "--set", "data.synthetic_volumes=2", "--set", "data.val_cubes=2", "--set", "log.grids=false",
            "--set", "log.tensorboard=false", "--out", str(tmp_path / "run"), "--epochs", "1"]

    def failing_disk(history, path, **kwargs):
        raise OSError(errno.EIO, "Input/output error")  # no filename: the engine names it

    monkeypatch.setattr(engine, "write_csv_log", failing_disk)
    assert main(tiny) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "log.csv" in line and "Input/output error" in line
    assert (tmp_path / "run" / "last.pt").is_file()  # the checkpoint written before it is intact

    @user_errors_exit
    def reads():
        raise OSError(errno.EIO, "Input/output error", "/mnt/scans/a.nii.gz")

    assert reads() == 2
    assert capsys.readouterr().err.strip() == "error: Input/output error: /mnt/scans/a.nii.gz"
