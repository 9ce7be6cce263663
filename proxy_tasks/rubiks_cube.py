"""Rubik's cube baseline (Models Genesis appendix; Zhuang et al. 2019): order and orient 2x2x2 cubes.

The sub-volume is cut into a 2 x 2 x 2 lattice of cubes (2 x 2 squares for a 2D batch). The cubes
are reordered by one of ``n_permutations`` fixed Hamming-distant permutations (shared with
:mod:`proxy_tasks.jigsaw`) and each one is independently rotated by 180 degrees, so the task is
cast as one permutation classification plus one orientation classification per cube:

* ``pair.label`` is (B, 1 + n_cubes) long: column 0 is the permutation index in
  [0, n_permutations); column 1 + i is the rotation class of the cube at puzzle position i:
  0 = none, 1 = 180 degrees in the axial (H, W) plane, 2 = 180 degrees in the coronal (D, W) plane
  (3D only; 2D has classes 0 and 1).
* A network for this task outputs ``output_size = n_permutations + n_cubes * n_rotations`` logits;
  :meth:`RubiksCube.loss` is the cross-entropy of the permutation plus the mean cross-entropy of the
  cube orientations (Zhuang et al. weight the two terms equally).

Convention: position ``i`` holds cube ``perm[i]`` (rotated by ``label[:, 1 + i]``).
:meth:`RubiksCube.invert` undoes the transform. The input keeps the batch's shape; if a side is
odd its last voxel is outside the lattice and is set to 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task
from proxy_tasks.jigsaw import crop_tiles, hamming_permutations, place_tiles

# rotation class -> tile axes flipped together (a 180-degree rotation flips the two axes of its plane),
# counted from the first spatial axis of a (B, T, C, *tile) tensor
_ROTATIONS = {3: [(), (-2, -1), (-3, -1)], 2: [(), (-2, -1)]}


def _rotate_tiles(tiles: torch.Tensor, rotation: torch.Tensor, ndim: int) -> torch.Tensor:
    """Rotate tiles (B, T, C, *tile) by their classes (B, T); self-inverse."""
    out = tiles
    view = rotation.view(*rotation.shape, *([1] * (ndim + 1)))
    for value, axes in enumerate(_ROTATIONS[ndim]):
        if axes:
            out = torch.where(view == value, torch.flip(tiles, dims=axes), out)
    return out


@register_task("rubiks_cube")
class RubiksCube(ProxyTask):
    """Permute and rotate the 2x2x2 cubes; predict the permutation and each cube's rotation.

    Args:
        n_permutations: number of permutation classes (fixed Hamming-distant set).
        seed: seed of the permutation set.
        min_hamming: required minimum pairwise Hamming distance of the set (8 cubes, 100
            permutations: the seeded greedy choice reaches 5). In 2D the 4 squares have only 24
            orders, all of which are used.
        rotation_prob: probability that a cube is rotated (its rotation class is then uniform
            among the non-zero ones).
    """

    kind = "classification"
    paper = "Zhuang et al. 2019, as in Zhou et al. 2021's appendix"
    num_classes = 100
    loss_region = "all"
    spatial_dims = None
    grid = 2

    def __init__(self, n_permutations: int = 100, seed: int = 0, min_hamming: int = 4,
                 rotation_prob: float = 0.5) -> None:
        self.n_permutations = int(n_permutations)
        self.seed = int(seed)
        self.min_hamming = int(min_hamming)
        self.rotation_prob = float(rotation_prob)
        self.num_classes = self.n_permutations  # type: ignore[misc]  # per-instance class count
        self._perms: dict[int, tuple[torch.Tensor, int]] = {}

    def extra_repr(self) -> str:
        return f"n_permutations={self.n_permutations}, seed={self.seed}, rotation_prob={self.rotation_prob}"

    def permutation_set(self, ndim: int = 3) -> tuple[torch.Tensor, int]:
        """The permutations for ``ndim``-D batches and their minimum Hamming distance."""
        if ndim not in self._perms:
            n_items = self.grid**ndim
            # 2D has only 4! = 24 orders of its 4 squares: use them all (distinct, distance >= 2)
            count = min(self.n_permutations, math.factorial(n_items))
            floor = self.min_hamming if count == self.n_permutations else 2
            perms, dist = hamming_permutations(n_items, count, self.seed, min_distance=floor)
            self._perms[ndim] = (torch.from_numpy(perms), dist)
        return self._perms[ndim]

    @staticmethod
    def n_rotations(ndim: int = 3) -> int:
        return len(_ROTATIONS[ndim])

    def output_size(self, ndim: int = 3) -> int:
        """Number of logits a network needs: permutation classes + per-cube rotation classes."""
        return self.n_permutation_classes(ndim) + self.grid**ndim * self.n_rotations(ndim)

    def n_permutation_classes(self, ndim: int = 3) -> int:
        """``n_permutations`` in 3D; at most 24 in 2D (all orders of 4 squares)."""
        return min(self.n_permutations, math.factorial(self.grid**ndim))

    def loss(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Permutation cross-entropy + mean per-cube rotation cross-entropy.

        Args:
            logits: (B, output_size(ndim)).
            label: (B, 1 + n_cubes) as produced by ``__call__``.
        """
        n_cubes = label.shape[1] - 1
        ndim = 3 if n_cubes == self.grid**3 else 2
        n_perm, n_rot = self.n_permutation_classes(ndim), self.n_rotations(ndim)
        if logits.shape[1] != n_perm + n_cubes * n_rot:
            raise ValueError(f"rubiks_cube: expected {n_perm + n_cubes * n_rot} logits, got {logits.shape[1]}")
        perm_loss = F.cross_entropy(logits[:, :n_perm], label[:, 0])
        rot_logits = logits[:, n_perm:]
        rot_loss = F.cross_entropy(rot_logits.reshape(-1, n_rot), label[:, 1:].reshape(-1))
        return perm_loss + rot_loss

    def _cells(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        cells = tuple(dim // self.grid for dim in spatial)
        if min(cells) < 1:
            raise ValueError(f"rubiks_cube: image {spatial} is too small for a {self.grid}-cube lattice")
        return cells

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "rubiks_cube")
        b, c, spatial = batch.shape[0], batch.shape[1], tuple(batch.shape[2:])
        ndim = len(spatial)
        perms = self.permutation_set(ndim)[0].to(batch.device)
        n_cubes, n_rot = self.grid**ndim, self.n_rotations(ndim)
        cells = self._cells(spatial)
        tiles = crop_tiles(batch, self.grid, cells, torch.zeros((b, n_cubes, ndim), dtype=torch.long,
                                                                    device=batch.device))
        index = torch.randint(0, len(perms), (b,), generator=generator, device=batch.device)
        order = perms[index].view(b, n_cubes, *([1] * (ndim + 1))).expand(-1, -1, c, *cells)
        rotated = torch.rand((b, n_cubes), generator=generator, device=batch.device) < self.rotation_prob
        which = torch.randint(1, n_rot, (b, n_cubes), generator=generator, device=batch.device)
        rotation = torch.where(rotated, which, 0)
        shuffled = _rotate_tiles(torch.gather(tiles, 1, order), rotation, ndim)
        label = torch.cat([index.view(b, 1), rotation], dim=1)
        return ProxyPair(input=place_tiles(shuffled, self.grid, spatial), label=label)

    def invert(self, puzzle: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Undo the rotations and the permutation named by ``label``: returns the original lattice."""
        b, c, spatial = puzzle.shape[0], puzzle.shape[1], tuple(puzzle.shape[2:])
        ndim = len(spatial)
        perms = self.permutation_set(ndim)[0].to(puzzle.device)
        n_cubes, cells = self.grid**ndim, self._cells(spatial)
        tiles = crop_tiles(puzzle, self.grid, cells, torch.zeros((b, n_cubes, ndim), dtype=torch.long,
                                                                     device=puzzle.device))
        upright = _rotate_tiles(tiles, label[:, 1:], ndim)
        inverse = torch.argsort(perms[label[:, 0]], dim=1)
        order = inverse.view(b, n_cubes, *([1] * (ndim + 1))).expand(-1, -1, c, *cells)
        return place_tiles(torch.gather(upright, 1, order), self.grid, spatial)
