"""Embedding export and the linear probe (the attribute-bias experiment of Tariq et al. 2023)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from genesis.embeddings import (
    auroc_ovr,
    extract_embeddings,
    linear_probe,
    load_embeddings,
    save_embeddings,
    select_slice,
)
from genesis.errors import GenesisError, InputFileError


class _Tiny2D(nn.Module):
    """forward_features returns per-channel sums over a 2x2 grid, so the pooled features are known."""

    feature_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([1.0, -2.0]).view(2, 1, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Tiny3D(nn.Module):
    feature_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _WithBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = _Tiny2D()
        self.head = nn.Linear(2, 5)


def _volumes(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random((5, 4, 4)).astype(np.float32) for _ in range(n)]


def test_2d_models_embed_the_middle_slice() -> None:
    volumes = _volumes()
    emb = extract_embeddings(_Tiny2D(), volumes, "cpu")
    assert emb.shape == (3, 2) and emb.dtype == np.float32
    expected = np.array([[v[2].mean(), -2 * v[2].mean()] for v in volumes])
    np.testing.assert_allclose(emb, expected, rtol=1e-5)
    # a model with a backbone is embedded through it; a DataLoader of batches gives the same rows
    loader = torch.utils.data.DataLoader(torch.from_numpy(np.stack(volumes))[:, None], batch_size=2)
    np.testing.assert_allclose(extract_embeddings(_WithBackbone(), loader, "cpu"), expected, rtol=1e-5)
    slices = torch.from_numpy(np.stack([v[2] for v in volumes]))[:, None]  # (B, 1, H, W): used as given
    np.testing.assert_allclose(extract_embeddings(_Tiny2D(), [slices], "cpu"), expected, rtol=1e-5)
    first = extract_embeddings(_Tiny2D(), volumes, "cpu", slice=0)
    np.testing.assert_allclose(first[:, 0], [v[0].mean() for v in volumes], rtol=1e-5)


def test_largest_body_slice_and_bad_slice() -> None:
    volume = torch.zeros(2, 1, 6, 4, 4)
    volume[0, 0, 4] = 0.8
    volume[1, 0, 1, :2] = 0.8
    picked = select_slice(volume, "largest_body")
    assert torch.equal(picked[0, 0], volume[0, 0, 4]) and torch.equal(picked[1, 0], volume[1, 0, 1])
    with pytest.raises(GenesisError):
        select_slice(volume, "top")


def test_3d_models_embed_the_whole_volume_and_keep_training_mode() -> None:
    model = _Tiny3D().train()
    volumes = _volumes()
    emb = extract_embeddings(model, [(torch.from_numpy(v)[None], "id") for v in volumes], "cpu")
    with torch.no_grad():
        expected = np.stack([model.conv(torch.from_numpy(v)[None, None]).mean(dim=(2, 3, 4))[0].numpy()
                             for v in volumes])
    np.testing.assert_allclose(emb, expected, rtol=1e-5)
    assert model.training
    with pytest.raises(GenesisError, match="forward_features"):
        extract_embeddings(nn.Conv3d(1, 1, 1), volumes, "cpu")


def test_save_and_load_embeddings(tmp_path: Path) -> None:
    emb = np.arange(12, dtype=np.float32).reshape(4, 3)
    path = save_embeddings(tmp_path / "out" / "emb.npz", emb, ["a", "b", "c", "d"],
                           {"sex": ["F", "M", "F", "M"], "age_band": [3, 4, 5, 6]})
    data = load_embeddings(path)
    np.testing.assert_array_equal(data["embeddings"], emb)
    assert data["ids"].tolist() == ["a", "b", "c", "d"]
    assert data["label_sex"].tolist() == ["F", "M", "F", "M"] and data["label_age_band"].tolist() == [3, 4, 5, 6]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["emb.npz"]  # no temporary left behind
    plain = load_embeddings(save_embeddings(tmp_path / "p.npz", emb, list("wxyz"), [0, 1, 0, 1]))
    assert plain["label"].tolist() == [0, 1, 0, 1]
    with pytest.raises(GenesisError, match="rows"):
        save_embeddings(tmp_path / "bad.npz", emb, list("wxyz"), {"sex": ["F"]})
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputFileError, match="junk.npz"):
        load_embeddings(tmp_path / "junk.npz")


def test_linear_probe_separates_separable_classes_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0]])
    labels = np.array(["a", "b", "c"])
    y = rng.integers(0, 3, 300)
    x = centres[y] + 0.5 * rng.standard_normal((300, 4))
    result = linear_probe(x[:200], labels[y[:200]], x[200:], labels[y[200:]], seed=0)
    assert result["accuracy"] > 0.95 and result["auroc"] > 0.99 and result["n_classes"] == 3
    assert result["classes"] == ["a", "b", "c"] and result["n_test"] == 100
    assert result == linear_probe(x[:200], labels[y[:200]], x[200:], labels[y[200:]], seed=0)
    noise = linear_probe(rng.standard_normal((200, 4)), y[:200], rng.standard_normal((100, 4)), y[200:], seed=0)
    assert noise["auroc"] < 0.7 and noise["balanced_accuracy"] < 0.5
    with pytest.raises(GenesisError, match="two classes"):
        linear_probe(x[:10], np.zeros(10), x[10:20], np.zeros(10), seed=0)
    with pytest.raises(GenesisError, match="do not occur"):
        linear_probe(x[:10], y[:10] % 2, x[10:20], np.full(10, 7), seed=0)


def test_auroc_matches_the_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((40, 2))
    labels = rng.integers(0, 2, 40)

    def pairwise(c: int) -> float:  # P(score of a class-c sample > score of another sample)
        return float(np.mean(scores[labels == c, c][:, None] > scores[labels != c, c][None]))

    assert abs(auroc_ovr(scores, labels) - (pairwise(0) + pairwise(1)) / 2) < 1e-12
