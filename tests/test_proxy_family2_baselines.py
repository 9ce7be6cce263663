"""Models Genesis appendix baselines: in-painting, patch shuffling, jigsaw, Rubik's cube, DeepCluster."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import proxy_tasks
from proxy_tasks.deepcluster import ClusterContext, kmeans
from proxy_tasks.jigsaw import crop_tiles, hamming_permutations, place_tiles


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_inpainting_holes_are_inside_the_margin_and_filled() -> None:
    batch = torch.rand(16, 1, 24, 36, 36)
    task = proxy_tasks.build("inpainting")
    pair = task(batch, generator=_gen())
    assert task.loss_region == "mask"
    mask = pair.mask[:, 0]
    assert mask.flatten(1).any(dim=1).all()  # at least one hole per sample
    assert not mask[:, :3].any() and not mask[:, -3:].any() and not mask[:, :, :, :3].any()
    assert not mask[:, :, -3:].any() and not mask[:, :, :, -3:].any()
    assert torch.equal(pair.input[~pair.mask], batch[~pair.mask])
    assert not torch.equal(pair.input[pair.mask], batch[pair.mask])
    # a single hole is at most a third of each side
    single = proxy_tasks.build("inpainting", max_holes=1)(batch, generator=_gen(1)).mask[:, 0]
    assert int(single.any(dim=2).any(dim=2).sum(dim=1).max()) <= 24 // 3


def test_patch_shuffle_preserves_the_histogram_and_moves_patches() -> None:
    batch = torch.rand(6, 1, 16, 32, 32)
    pair = proxy_tasks.build("patch_shuffle")(batch, generator=_gen())
    assert torch.equal(pair.input.flatten(1).sort(dim=1).values, batch.flatten(1).sort(dim=1).values)
    assert torch.equal(pair.input[~pair.mask], batch[~pair.mask])
    changed = (pair.input != batch).flatten(1).float().mean(dim=1)
    assert torch.all(changed > 0.05)
    one = proxy_tasks.build("patch_shuffle", n_swaps=1, side_range=(0.5, 0.5))(torch.rand(3, 1, 8, 8), generator=_gen())
    assert torch.all(one.mask.flatten(1).sum(dim=1) == 2 * 16)  # two disjoint 4x4 patches
    with pytest.raises(ValueError):
        proxy_tasks.build("patch_shuffle", side_range=(0.25, 0.6))


def test_jigsaw_permutation_set_is_distinct_and_far_apart() -> None:
    task = proxy_tasks.build("jigsaw")
    perms = task.permutations.numpy()
    assert perms.shape == (100, 27)
    assert len({tuple(p) for p in perms}) == 100
    assert all(sorted(p) == list(range(27)) for p in perms)
    assert perms[0].tolist() == list(range(27))  # class 0 = unshuffled
    distance = (perms[:, None] != perms[None]).sum(-1) + 100 * np.eye(100, dtype=int)
    assert distance.min() == task.min_distance >= 18  # 18 = the enforced floor, int(0.7 * 27)
    again, _ = hamming_permutations(27, 100, seed=0)
    assert np.array_equal(again, perms)
    assert not np.array_equal(hamming_permutations(27, 100, seed=1)[0], perms)
    with pytest.raises(ValueError, match="Hamming"):
        hamming_permutations(27, 100, seed=0, min_distance=27)


@pytest.mark.parametrize("layout", ["volume", "stack"])
def test_jigsaw_tiles_are_the_permuted_cells(layout: str) -> None:
    batch = torch.rand(4, 1, 9, 12, 15)
    task = proxy_tasks.build("jigsaw", jitter=0, layout=layout)
    pair = task(batch, generator=_gen())
    assert pair.label.shape == (4,) and int(pair.label.max()) < 100 and task.num_classes == 100
    cells = crop_tiles(batch, 3, (3, 4, 5), torch.zeros(4, 27, 3, dtype=torch.long))
    if layout == "stack":
        assert pair.input.shape == (4, 27, 3, 4, 5)
        shuffled = pair.input.view(4, 27, 1, 3, 4, 5)
    else:
        assert pair.input.shape == batch.shape
        shuffled = crop_tiles(pair.input, 3, (3, 4, 5), torch.zeros(4, 27, 3, dtype=torch.long))
    for b in range(4):
        perm = task.permutations[pair.label[b]]
        for i in range(27):
            assert torch.equal(shuffled[b, i], cells[b, perm[i]])


def test_jigsaw_jitter_keeps_tiles_inside_their_cells() -> None:
    batch = torch.rand(2, 1, 32, 64, 64)
    pair = proxy_tasks.build("jigsaw")(batch, generator=_gen())
    assert pair.input.shape == batch.shape
    # each 10x21x21 cell holds an 8x19x19 tile at its origin and zeros in the 2-voxel gaps
    assert torch.all(pair.input[:, :, 8:10] == 0) and torch.all(pair.input[:, :, :, 19:21] == 0)
    assert torch.all(pair.input[:, :, 30:] == 0)  # 32 = 3 * 10 + 2 leftover slices
    values = set(batch.flatten().tolist())
    assert set(pair.input[:, :, :8, :19, :19].flatten().tolist()) <= values


def test_place_tiles_inverts_crop_tiles() -> None:
    batch = torch.rand(2, 1, 6, 8)
    tiles = crop_tiles(batch, 2, (3, 4), torch.zeros(2, 4, 2, dtype=torch.long))
    assert torch.equal(place_tiles(tiles, 2, (6, 8)), batch)


@pytest.mark.parametrize("shape", [(6, 1, 8, 12, 16), (6, 1, 10, 14)])
def test_rubiks_cube_inverse_recovers_the_original(shape: tuple[int, ...]) -> None:
    batch = torch.rand(shape)
    task = proxy_tasks.build("rubiks_cube")
    pair = task(batch, generator=_gen())
    ndim = len(shape) - 2
    n_cubes = 2**ndim
    assert pair.label.shape == (shape[0], 1 + n_cubes) and pair.label.dtype == torch.long
    assert int(pair.label[:, 1:].max()) < task.n_rotations(ndim)
    assert torch.equal(task.invert(pair.input, pair.label), batch)
    assert not torch.equal(pair.input, batch)
    logits = torch.zeros(shape[0], task.output_size(ndim), requires_grad=True)
    loss = task.loss(logits, pair.label)
    expected = np.log(task.n_permutation_classes(ndim)) + np.log(task.n_rotations(ndim))
    assert abs(loss.item() - expected) < 1e-5  # uniform logits: log(#classes) for each term


def test_rubiks_cube_rotation_is_180_degrees_of_one_cube() -> None:
    task = proxy_tasks.build("rubiks_cube", rotation_prob=1.0)
    batch = torch.rand(1, 1, 4, 4, 4)
    pair = task(batch, generator=_gen(5))
    perm = task.permutation_set(3)[0][pair.label[0, 0]]
    cubes = crop_tiles(batch, 2, (2, 2, 2), torch.zeros(1, 8, 3, dtype=torch.long))
    puzzle = crop_tiles(pair.input, 2, (2, 2, 2), torch.zeros(1, 8, 3, dtype=torch.long))
    axes = {1: (-2, -1), 2: (-3, -1)}
    for i in range(8):
        rotation = int(pair.label[0, 1 + i])
        assert rotation in (1, 2)
        assert torch.equal(puzzle[0, i], cubes[0, perm[i]].flip(axes[rotation]))
    perms = task.permutation_set(3)[0].numpy()
    distance = (perms[:, None] != perms[None]).sum(-1) + 100 * np.eye(len(perms), dtype=int)
    assert distance.min() == task.permutation_set(3)[1] >= task.min_hamming


def test_kmeans_labels_are_nearest_centroids() -> None:
    g = _gen()
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 5.0]])
    points = (centres[:, None] + 0.1 * torch.randn(3, 50, 2, generator=g)).reshape(-1, 2)
    centroids, labels = kmeans(points, 3, generator=_gen(1))
    assert torch.equal(labels, torch.cdist(points, centroids).argmin(dim=1))
    groups = [set(labels[i * 50 : (i + 1) * 50].tolist()) for i in range(3)]
    assert all(len(s) == 1 for s in groups) and len(set.union(*groups)) == 3
    again = kmeans(points, 3, generator=_gen(1))
    assert torch.equal(again[0], centroids)
    with pytest.raises(ValueError, match="clusters"):
        kmeans(points[:2], 3)


class _Features(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def test_deepcluster_pseudo_labels_follow_the_nearest_centroid() -> None:
    torch.manual_seed(0)
    net = _Features()
    batches = [torch.rand(10, 1, 6, 6, 6, generator=_gen(i)) for i in range(4)]
    task = proxy_tasks.build("deepcluster", k=8, iterations=10)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        task(batches[0])
    task.on_epoch_start(ClusterContext(features=net, batches=[(b, None) for b in batches]))
    assert task.centroids.shape == (8, 6) and task.num_classes == 8 and task.refreshes == 1
    pair = task(batches[1])
    assert pair.label.shape == (10,) and pair.label.dtype == torch.long and pair.target is None
    assert torch.equal(pair.label, task.last_labels[10:20])  # same labels as the clustering gave
    with torch.no_grad():
        pooled = net(batches[1]).mean(dim=(2, 3, 4))
    points = task.points(batches[1])
    centred = pooled - torch.cat([net(b).mean(dim=(2, 3, 4)) for b in batches]).mean(dim=0).detach()
    assert torch.allclose(points, torch.nn.functional.normalize(centred, dim=1), atol=1e-6)
    assert torch.equal(pair.label, torch.cdist(points, task.centroids).argmin(dim=1))
    assert len(set(task.last_labels.tolist())) == 8  # no empty cluster
    task.on_epoch_start({"features": net, "batches": batches})
    assert task.refreshes == 2


def test_every_family2_task_is_registered() -> None:
    expected = {"masked_region", "masked_curriculum", "next_slice", "denoise_sp", "denoise_gaussian", "rotation",
                "flip", "inpainting", "patch_shuffle", "jigsaw", "rubiks_cube", "deepcluster"}
    assert expected <= set(proxy_tasks.list_tasks())
    assert all(len(set(p)) == 27 for p in itertools.islice(proxy_tasks.build("jigsaw").permutations.tolist(), 5))
