"""MedMNIST 3D npz loader: tiny files written here, plus the real AdrenalMNIST3D file when present."""

from __future__ import annotations

import numpy as np
import pytest

from genesis.data.public.medmnist import load_medmnist3d
from genesis.errors import DatasetLayoutError, InputFileError


def _write(path, size=28, n=(3, 2, 2), **replace):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(count, size, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, size=(count, 1), dtype=np.uint8)
    arrays.update(replace)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


def test_loads_float_images_and_labels(tmp_path):
    arrays = _write(tmp_path / "organmnist3d.npz")
    data = load_medmnist3d(tmp_path / "organmnist3d.npz")
    assert set(data) == {"train", "val", "test"}
    train = data["train"]
    assert train.images.dtype == np.float32 and train.images.shape == (3, 28, 28, 28) and len(train) == 3
    assert np.allclose(train.images * 255.0, arrays["train_images"])
    assert 0.0 <= train.images.min() and train.images.max() <= 1.0
    assert train.labels.shape == (3,) and train.labels.dtype == np.int64
    only_test = load_medmnist3d(tmp_path / "organmnist3d.npz", splits=("test",))
    assert list(only_test) == ["test"]


def test_size_64_and_multilabel(tmp_path):
    labels = np.zeros((1, 3), dtype=np.uint8)
    _write(tmp_path / "m64.npz", size=64, n=(1, 1, 1), train_labels=labels)
    data = load_medmnist3d(tmp_path / "m64.npz")
    assert data["val"].images.shape == (1, 64, 64, 64) and data["train"].labels.shape == (1, 3)


def test_errors(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_medmnist3d(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="npz"):
        load_medmnist3d(tmp_path / "junk.npz")
    _write(tmp_path / "nolabels.npz", val_labels=None)
    with pytest.raises(DatasetLayoutError, match="val_labels"):
        load_medmnist3d(tmp_path / "nolabels.npz")
    rng = np.random.default_rng(1)
    two_d = {f"{s}_images": rng.integers(0, 255, (2, 28, 28), dtype=np.uint8) for s in ("train", "val", "test")}
    two_d.update({f"{s}_labels": np.zeros((2, 1), np.uint8) for s in ("train", "val", "test")})
    np.savez(tmp_path / "pneumoniamnist.npz", **two_d)
    with pytest.raises(DatasetLayoutError, match="2D MedMNIST"):
        load_medmnist3d(tmp_path / "pneumoniamnist.npz")
    rgb = {k: (np.zeros((2, 28, 28, 3), np.uint8) if k.endswith("images") else v) for k, v in two_d.items()}
    np.savez(tmp_path / "pathmnist.npz", **rgb)
    with pytest.raises(DatasetLayoutError, match="2D MedMNIST"):
        load_medmnist3d(tmp_path / "pathmnist.npz")
    _write(tmp_path / "mismatch.npz", test_labels=np.zeros((5, 1), np.uint8))
    with pytest.raises(DatasetLayoutError, match="labels"):
        load_medmnist3d(tmp_path / "mismatch.npz")


def test_real_adrenalmnist3d(real_data):
    path = real_data / "medmnist" / "adrenalmnist3d.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    data = load_medmnist3d(path)
    assert data["train"].images.shape == (1188, 28, 28, 28)
    assert len(data["val"]) == 98 and len(data["test"]) == 298
    assert set(np.unique(data["train"].labels)) == {0, 1}
    assert 0.0 <= data["test"].images.min() and data["test"].images.max() <= 1.0
