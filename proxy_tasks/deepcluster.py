"""DeepCluster baseline (Models Genesis appendix; Caron et al. 2018): classify k-means pseudo-labels.

At the start of every epoch the engine calls ``task.on_epoch_start(context)``; the task embeds the
epoch's batches with the current encoder (``context.features``), clusters the embeddings with
k-means (k = 260 by default) and keeps the centroids. During the epoch ``task(batch)`` labels each
sample with its nearest centroid under the same feature function, and the network is trained to
predict that label (cross-entropy over k classes); its classification head should be re-initialised
after each refresh, as in the paper, because cluster indices are arbitrary.

The k-means runs in torch (seeded k-means++ seeding, vectorised Lloyd iterations,
empty clusters re-seeded from the points farthest from their centroid) so it runs on the GPU.
Features are mean-pooled over space, centred and L2-normalised before clustering (the paper also
PCA-whitens them; omitted here).

``context`` is a :class:`ClusterContext` or any object / mapping with ``features`` (a callable
batch -> (B, F) or (B, F, *spatial) tensor) and ``batches`` (an iterable of (B, 1, *spatial)
batches, or of tuples/lists whose first item is one). Labels depend on the feature function: the
engine should pass a frozen snapshot of the encoder if it wants labels fixed for the epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task


@dataclass
class ClusterContext:
    """What ``DeepCluster.on_epoch_start`` needs: a feature function and the epoch's batches."""

    features: Callable[[torch.Tensor], torch.Tensor]
    batches: Iterable[Any]


def _first_tensor(item: Any) -> torch.Tensor:
    if isinstance(item, torch.Tensor):
        return item
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], torch.Tensor):
        return item[0]
    if isinstance(item, dict):
        for key in ("image", "input", "volume"):
            if isinstance(item.get(key), torch.Tensor):
                return item[key]
    raise TypeError(f"deepcluster: cannot find a batch tensor in a {type(item).__name__}")


def _context_field(context: Any, name: str) -> Any:
    if isinstance(context, dict):
        if name not in context:
            raise TypeError(f"deepcluster: the epoch context has no {name!r}")
        return context[name]
    if not hasattr(context, name):
        raise TypeError(f"deepcluster: the epoch context has no {name!r}")
    return getattr(context, name)


def pool_features(features: torch.Tensor) -> torch.Tensor:
    """(B, F, *spatial) or (B, F) -> (B, F) float32 (global average pooling)."""
    features = features.float()
    return features.flatten(2).mean(dim=2) if features.dim() > 2 else features


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): each new centroid is drawn with
    probability proportional to the squared distance to the nearest centroid so far.

    The loop runs over the k centroids (each step one vectorised distance update), never over points.
    """
    device = generator.device if generator is not None else points.device
    n = points.shape[0]
    first = torch.randint(0, n, (1,), generator=generator, device=device).to(points.device)
    chosen = [first]
    nearest = (points - points[first]).pow(2).sum(dim=1)
    for _ in range(k - 1):
        weights = nearest.clamp(min=0).to(device)
        if float(weights.sum()) <= 0:  # fewer distinct points than k: fall back to uniform picks
            weights = torch.ones_like(weights)
        pick = torch.multinomial(weights, 1, generator=generator).to(points.device)
        chosen.append(pick)
        nearest = torch.minimum(nearest, (points - points[pick]).pow(2).sum(dim=1))
    return points[torch.cat(chosen)].clone()


def kmeans(points: torch.Tensor, k: int, iterations: int = 20, generator: torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on (N, F) points, vectorised in torch (any device).

    Initial centroids come from :func:`kmeans_plus_plus` with ``generator``; a cluster that empties is
    re-seeded with the point farthest from its current centroid (Caron et al. re-seed from a large
    cluster for the same reason: avoid trivial solutions).

    Returns:
        (centroids (k, F), labels (N,) long) with every label the index of the nearest centroid.

    Raises:
        ValueError: if there are fewer points than clusters.
    """
    n = points.shape[0]
    if n < k:
        raise ValueError(f"deepcluster: {n} feature vectors cannot form {k} clusters; lower k or add batches")
    centroids = kmeans_plus_plus(points, k, generator)
    labels = torch.cdist(points, centroids).argmin(dim=1)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, points)
        empty = counts == 0
        new = sums / counts.clamp(min=1).unsqueeze(1).to(points.dtype)
        if bool(empty.any()):
            distance = (points - new[labels]).norm(dim=1)
            far = distance.topk(int(empty.sum())).indices
            new[empty] = points[far]
        centroids = new
        updated = torch.cdist(points, centroids).argmin(dim=1)
        if torch.equal(updated, labels) and not bool(empty.any()):
            break
        labels = updated
    return centroids, labels


@register_task("deepcluster")
class DeepCluster(ProxyTask):
    """Predict the k-means cluster of each sample's encoder features (refreshed every epoch).

    Args:
        k: number of clusters / classes (appendix: 260).
        iterations: Lloyd iterations per refresh.
        seed: seed of the k-means initialisation (combined with the epoch count).
        max_batches: use at most this many batches of the context per refresh (None: all).

    Attributes:
        centroids: (k, F) after the first ``on_epoch_start``; ``refreshes``: how many so far.
    """

    kind = "classification"
    paper = "Caron et al. 2018, as in Zhou et al. 2021's appendix"
    num_classes = 260
    loss_region = "all"
    spatial_dims = None

    def __init__(self, k: int = 260, iterations: int = 20, seed: int = 0, max_batches: int | None = None) -> None:
        if k < 2:
            raise ValueError(f"deepcluster: k must be >= 2, got {k}")
        self.k = int(k)
        self.num_classes = self.k  # type: ignore[misc]  # per-instance class count
        self.iterations = int(iterations)
        self.seed = int(seed)
        self.max_batches = max_batches
        self.refreshes = 0
        self.centroids: torch.Tensor | None = None
        self.last_labels: torch.Tensor | None = None  # labels of the clustered features, in batch order
        self._mean: torch.Tensor | None = None
        self._features: Callable[[torch.Tensor], torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return f"k={self.k}, iterations={self.iterations}, seed={self.seed}, refreshes={self.refreshes}"

    def _embed(self, batch: torch.Tensor) -> torch.Tensor:
        assert self._features is not None
        with torch.no_grad():
            return pool_features(self._features(batch))

    def _normalise(self, features: torch.Tensor) -> torch.Tensor:
        assert self._mean is not None
        return torch.nn.functional.normalize(features - self._mean.to(features.device), dim=1)

    def on_epoch_start(self, context: Any) -> None:
        """Embed the context's batches, run k-means, keep the centroids."""
        self._features = _context_field(context, "features")
        collected = []
        for i, item in enumerate(_context_field(context, "batches")):
            if self.max_batches is not None and i >= self.max_batches:
                break
            collected.append(self._embed(_first_tensor(item)))
        if not collected:
            raise ValueError("deepcluster: the epoch context has no batches to cluster")
        features = torch.cat(collected)
        self._mean = features.mean(dim=0, keepdim=True)
        generator = torch.Generator(device=features.device)
        generator.manual_seed(self.seed * 1_000_003 + self.refreshes)
        self.centroids, self.last_labels = kmeans(self._normalise(features), self.k, self.iterations, generator)
        self.refreshes += 1

    def _check_ready(self) -> torch.Tensor:
        if self.centroids is None:
            raise RuntimeError("deepcluster: call on_epoch_start(context) before using the task")
        return self.centroids

    def points(self, batch: torch.Tensor) -> torch.Tensor:
        """The clustered representation of a batch: pooled, centred, L2-normalised features (B, F)."""
        self._check_ready()
        return self._normalise(self._embed(batch))

    def assign(self, points: torch.Tensor) -> torch.Tensor:
        """Nearest-centroid labels (B,) of points given by :meth:`points`."""
        centroids = self._check_ready()
        return torch.cdist(points, centroids.to(points.device)).argmin(dim=1)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "deepcluster")
        return ProxyPair(input=batch, label=self.assign(self.points(batch)).to(batch.device))
