"""Embedding export and the linear probe (Tariq et al. 2023, attribute-bias experiment).

The paper feeds the encoder features of each exam's middle slice to a small classifier that
predicts sex, age band and race, to see how much of a sensitive attribute leaks into
self-supervised features. Here:

* :func:`extract_embeddings` pools a network's encoder features (``forward_features``) for each
  volume: the middle (or a chosen) axial slice for 2D networks, the whole (sub-)volume for 3D ones;
* :func:`save_embeddings` / :func:`load_embeddings` store them with ids and labels in a ``.npz``;
* :func:`linear_probe` fits a multinomial logistic regression in torch (no scikit-learn at run
  time) and reports accuracy, balanced accuracy, macro one-vs-rest AUROC and log-loss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from genesis.errors import GenesisError, InputFileError
from genesis.fileio import atomic_path

#: threshold of "body" in the [-1000, 1000] HU -> [0, 1] window: -500 HU, used by slice="largest_body"
BODY_THRESHOLD = 0.25


def _feature_network(model: nn.Module) -> nn.Module:
    """The network whose ``forward_features`` gives the encoder features (``.backbone`` if present)."""
    backbone = getattr(model, "backbone", None)
    net = backbone if isinstance(backbone, nn.Module) and hasattr(backbone, "forward_features") else model
    if not hasattr(net, "forward_features"):
        raise GenesisError(f"{type(model).__name__} has no forward_features(x); cannot export embeddings")
    return net


def model_spatial_dims(model: nn.Module) -> int:
    """2 or 3: the ``spatial_dims`` attribute, else the kind of the first convolution."""
    dims = getattr(model, "spatial_dims", None)
    if dims in (2, 3):
        return int(dims)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            return 2
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            return 3
    raise GenesisError(f"cannot tell whether {type(model).__name__} is 2D or 3D; give it a spatial_dims attribute")


def select_slice(volume: torch.Tensor, slice: str | int = "middle") -> torch.Tensor:
    """Pick one axial slice of each volume of a batch (B, C, D, H, W) -> (B, C, H, W).

    Args:
        slice: ``"middle"`` (index D // 2), ``"largest_body"`` (the slice with the most voxels above
            :data:`BODY_THRESHOLD`, the paper's "largest body cross-section"), or an index.
    """
    depth = volume.shape[2]
    if slice == "middle":
        index = torch.full((volume.shape[0],), depth // 2, dtype=torch.long, device=volume.device)
    elif slice == "largest_body":
        index = (volume[:, 0] > BODY_THRESHOLD).flatten(2).sum(dim=2).argmax(dim=1)
    elif isinstance(slice, int) and -depth <= slice < depth:
        index = torch.full((volume.shape[0],), slice % depth, dtype=torch.long, device=volume.device)
    else:
        raise GenesisError(f"slice must be 'middle', 'largest_body' or an index below {depth}, got {slice!r}")
    gather = index.view(-1, 1, 1, 1, 1).expand(-1, volume.shape[1], 1, *volume.shape[3:])
    return torch.gather(volume, 2, gather).squeeze(2)


def _as_batch(item: Any, dims: int) -> torch.Tensor:
    """A float batch: (B, 1, D, H, W) from a volume (D, H, W), (1, D, H, W) or a batch of volumes;
    for 2D models a (B, 1, H, W) batch of slices is passed through as it is."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    elif isinstance(item, Mapping):
        for key in ("image", "input", "volume"):
            if key in item:
                item = item[key]
                break
    tensor = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item)
    if tensor.dim() == 3:
        tensor = tensor[None, None]
    elif tensor.dim() == 4 and dims == 2 and tensor.shape[1] == 1:
        return tensor.float()  # already slices
    elif tensor.dim() == 4:
        tensor = tensor[None]
    if tensor.dim() != 5:
        raise GenesisError(f"expected a volume (D, H, W) or a batch (B, 1, D, H, W), got shape {tuple(tensor.shape)}")
    return tensor.float()


def extract_embeddings(model: nn.Module, volumes_or_loader: Iterable[Any], device: torch.device | str = "cpu",
                       slice: str | int = "middle") -> np.ndarray:
    """Pooled encoder features for each volume.

    Args:
        model: a network with ``forward_features(x)`` (or a ``.backbone`` that has it). 2D networks
            see one axial slice per volume, 3D networks the whole (sub-)volume.
        volumes_or_loader: volumes (numpy/torch (D, H, W) in [0, 1]) or batches (B, 1, D, H, W), e.g. a
            DataLoader; tuples/lists and dicts with an ``"image"`` entry are unpacked. For 2D
            networks, batches of slices (B, 1, H, W) are embedded as they are.
        device: where to run the network.
        slice: which slice a 2D network sees (see :func:`select_slice`).

    Returns:
        float32 array (N, F): features averaged over the spatial axes.
    """
    device = torch.device(device)
    net = _feature_network(model)
    dims = model_spatial_dims(net)
    was_training = net.training
    net.eval()
    chunks: list[np.ndarray] = []
    try:
        with torch.no_grad():
            for item in volumes_or_loader:
                batch = _as_batch(item, dims).to(device)
                if batch.dim() == 5 and dims == 2:
                    batch = select_slice(batch, slice)
                features = net.forward_features(batch)
                if isinstance(features, (list, tuple)):
                    features = features[-1]
                pooled = features.float().flatten(2).mean(dim=2) if features.dim() > 2 else features.float()
                chunks.append(pooled.cpu().numpy())
    finally:
        net.train(was_training)
    if not chunks:
        raise GenesisError("no volumes to embed")
    return np.concatenate(chunks).astype(np.float32)


def save_embeddings(path: str | Path, embeddings: np.ndarray, ids: Sequence[str],
                    labels: Mapping[str, Sequence[Any]] | Sequence[Any] | None = None) -> Path:
    """Write embeddings, ids and labels to ``path`` (.npz, atomically).

    Args:
        labels: one label per row (stored as ``label``) or a mapping of attribute name -> labels
            (stored as ``label_<name>``, e.g. ``label_sex``, ``label_age_band``, ``label_race``).

    Raises:
        GenesisError: if the numbers of rows, ids and labels differ.
    """
    path = Path(path)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(ids) != len(embeddings):
        raise GenesisError(f"need (N, F) embeddings and N ids, got {embeddings.shape} and {len(ids)} ids", path)
    arrays: dict[str, np.ndarray] = {"embeddings": embeddings, "ids": np.asarray([str(i) for i in ids])}
    if labels is not None:
        named = labels if isinstance(labels, Mapping) else {"": labels}
        for name, values in named.items():
            values = np.asarray(values)
            if len(values) != len(embeddings):
                raise GenesisError(f"label {name or 'label'!r} has {len(values)} rows, embeddings {len(embeddings)}",
                                   path)
            arrays[f"label_{name}" if name else "label"] = values
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # a file handle, so numpy does not append ".npz" to the temp name
    return path


def load_embeddings(path: str | Path) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_embeddings` (keys ``embeddings``, ``ids``, ``label*``)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise InputFileError(f"not a readable embeddings file ({exc})", path) from None
    if "embeddings" not in arrays or "ids" not in arrays:
        raise InputFileError("embeddings file lacks 'embeddings' or 'ids'", path)
    return arrays


def auroc_ovr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Macro one-vs-rest AUROC (Mann-Whitney U); classes absent from ``labels`` are skipped."""
    values = []
    for c in range(scores.shape[1]):
        positive = labels == c
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(scores[:, c])
        values.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(values)) if values else float("nan")


def linear_probe(train_X: np.ndarray, train_y: Sequence[Any], test_X: np.ndarray, test_y: Sequence[Any],
                 seed: int = 0, weight_decay: float = 1e-3, max_iter: int = 200) -> dict[str, Any]:
    """Fit a multinomial logistic regression on train embeddings, score it on test embeddings.

    Features are standardised with the training mean and standard deviation. The fit is full-batch
    L-BFGS on the L2-regularised cross-entropy (convex, so the seed only fixes the initialisation
    and results are reproducible).

    Args:
        train_y, test_y: class labels of any type (e.g. "F"/"M", age bands); test labels must occur
            in training.

    Returns:
        dict with ``accuracy``, ``balanced_accuracy``, ``auroc`` (macro one-vs-rest), ``log_loss``,
        ``n_classes``, ``classes``, ``n_train``, ``n_test``.

    Raises:
        GenesisError: on mismatched shapes, fewer than two classes, or unseen test labels.
    """
    train_X, test_X = np.asarray(train_X, dtype=np.float64), np.asarray(test_X, dtype=np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if train_X.ndim != 2 or test_X.ndim != 2 or train_X.shape[1] != test_X.shape[1]:
        raise GenesisError(f"linear probe needs (N, F) features of one width, got {train_X.shape}, {test_X.shape}")
    if len(train_X) != len(train_y) or len(test_X) != len(test_y):
        raise GenesisError("linear probe: features and labels have different lengths")
    classes, train_idx = np.unique(train_y, return_inverse=True)
    if len(classes) < 2:
        raise GenesisError(f"linear probe needs at least two classes in training, got {classes.tolist()}")
    unseen = sorted(set(test_y.tolist()) - set(classes.tolist()))
    if unseen:
        raise GenesisError(f"linear probe: test labels {unseen} do not occur in training")
    test_idx = np.searchsorted(classes, test_y)

    mean, std = train_X.mean(axis=0), train_X.std(axis=0)
    std[std < 1e-12] = 1.0
    x_train = torch.from_numpy((train_X - mean) / std)
    x_test = torch.from_numpy((test_X - mean) / std)
    y_train = torch.from_numpy(train_idx.astype(np.int64))
    generator = torch.Generator().manual_seed(int(seed))
    linear = nn.Linear(x_train.shape[1], len(classes)).double()
    with torch.no_grad():
        linear.weight.copy_(0.01 * torch.randn(linear.weight.shape, generator=generator, dtype=torch.float64))
        linear.bias.zero_()
    optimiser = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(linear(x_train), y_train) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        probs = torch.softmax(linear(x_test), dim=1).numpy()
    predicted = probs.argmax(axis=1)
    recalls = [float((predicted[test_idx == c] == c).mean()) for c in range(len(classes)) if (test_idx == c).any()]
    log_loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(test_idx)), test_idx], 1e-15, 1.0))))
    return {
        "accuracy": float((predicted == test_idx).mean()),
        "balanced_accuracy": float(np.mean(recalls)),
        "auroc": auroc_ovr(probs, test_idx),
        "log_loss": log_loss if math.isfinite(log_loss) else float("inf"),
        "n_classes": int(len(classes)),
        "classes": classes.tolist(),
        "n_train": int(len(train_X)),
        "n_test": int(len(test_X)),
    }
