"""3D jigsaw baseline (Models Genesis appendix; Noroozi and Favaro 2016 in 3D): order the tiles.

The sub-volume is cut into a ``grid`` x ``grid`` x ``grid`` lattice of cells (3x3x3 = 27 in the
appendix; a 2D batch gives grid x grid tiles). From each cell a tile smaller than the cell by up to
``jitter`` voxels per axis is cropped at a random offset, so the network cannot solve the puzzle
from edge continuity. The tiles are reordered by one of ``n_permutations`` fixed permutations
(chosen Hamming-distant, see :func:`hamming_permutations`) and the label is the permutation index.

Convention: position ``i`` of the shuffled puzzle holds the tile of cell ``perm[i]``.

``layout`` decides what ``pair.input`` looks like:

* ``"volume"`` (default): the shuffled tiles placed back on the lattice, each at the origin of its
  cell with zeros in the gaps, padded to the batch's shape: (B, C, *spatial), same as the batch,
  so any encoder of the right input size can be used.
* ``"stack"``: the tiles as channels, (B, n_tiles * C, *tile) in shuffled order (a shared-weight
  "siamese" encoder can split them back with ``input.view(B, n_tiles, C, *tile)``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from proxy_tasks.base import ProxyPair, ProxyTask, check_batch, register_task
from proxy_tasks.masked_region import randint


@functools.lru_cache(maxsize=16)
def _hamming_permutations(n_items: int, n_permutations: int, seed: int, pool_size: int) -> tuple[np.ndarray, int]:
    if n_permutations > math.factorial(n_items):
        raise ValueError(f"cannot choose {n_permutations} distinct permutations of {n_items} items")
    rng = np.random.default_rng(seed)
    if math.factorial(n_items) <= pool_size:  # small sets: the pool is every permutation
        from itertools import permutations

        pool = np.array(list(permutations(range(n_items))), dtype=np.int64)  # identity first
        pool[1:] = pool[1 + rng.permutation(len(pool) - 1)]
    else:
        pool = np.argsort(rng.random((pool_size, n_items)), axis=1)
        pool[0] = np.arange(n_items)
    # the identity (unshuffled puzzle) is always class 0
    chosen = [0]
    min_dist = (pool != pool[0]).sum(axis=1)
    achieved = n_items
    for _ in range(n_permutations - 1):
        best = int(np.argmax(min_dist))
        # greedy max-min: every later pick is at least this far from all earlier picks, and the
        # value never increases, so the last one is the set's minimum pairwise distance
        achieved = min(achieved, int(min_dist[best]))
        chosen.append(best)
        min_dist = np.minimum(min_dist, (pool != pool[best]).sum(axis=1))
    return pool[chosen].copy(), achieved


def hamming_permutations(n_items: int, n_permutations: int = 100, seed: int = 0, pool_size: int = 10_000,
                         min_distance: int = 2) -> tuple[np.ndarray, int]:
    """Choose permutations far apart in Hamming distance (seeded greedy max-min, Noroozi 2016).

    From a seeded pool of ``pool_size`` random permutations (all of them if there are fewer), start
    with the identity and repeatedly add the pool member whose smallest Hamming distance to the
    chosen ones is largest.

    Returns:
        (permutations (n_permutations, n_items) int64, their minimum pairwise Hamming distance).
        For 27 items, 100 permutations and the default pool the minimum distance is 24.

    Raises:
        ValueError: if the set's minimum distance is below ``min_distance`` (the guarantee the
            caller asks for; 2 means merely distinct).
    """
    perms, achieved = _hamming_permutations(int(n_items), int(n_permutations), int(seed), int(pool_size))
    if achieved < min_distance:
        raise ValueError(
            f"only reached a minimum Hamming distance of {achieved} (< {min_distance}) for "
            f"{n_permutations} permutations of {n_items} items; lower min_hamming or raise pool_size"
        )
    return perms.copy(), achieved


def crop_tiles(batch: torch.Tensor, grid: int, tile: tuple[int, ...], offsets: torch.Tensor) -> torch.Tensor:
    """Crop one tile per lattice cell: (B, C, *spatial) -> (B, n_tiles, C, *tile).

    ``offsets`` (B, n_tiles, ndim) are each tile's offset inside its cell; cells are enumerated
    in C order over the lattice.
    """
    b, spatial = batch.shape[0], batch.shape[2:]
    ndim = len(spatial)
    cells = [dim // grid for dim in spatial]
    lattice = torch.cartesian_prod(*[torch.arange(grid, device=batch.device)] * ndim).view(-1, ndim)
    first = lattice * torch.tensor(cells, device=batch.device) + offsets  # (B, T, ndim)
    index: list[torch.Tensor] = [torch.arange(b, device=batch.device).view(b, 1, *([1] * ndim))]
    for axis in range(ndim):
        view = [1] * ndim
        view[axis] = tile[axis]
        steps = torch.arange(tile[axis], device=batch.device).view(1, 1, *view)
        index.append(first[..., axis].view(b, -1, *([1] * ndim)) + steps)
    return batch.movedim(1, -1)[tuple(index)].movedim(-1, 2)  # (B, T, *tile, C) -> (B, T, C, *tile)


def place_tiles(tiles: torch.Tensor, grid: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Put tiles (B, T, C, *tile) at the origins of their lattice cells: (B, C, *spatial), zeros elsewhere."""
    b, t, c = tiles.shape[:3]
    tile = tiles.shape[3:]
    ndim = len(tile)
    cells = [dim // grid for dim in spatial]
    pad: list[int] = []
    for axis in reversed(range(ndim)):
        pad += [0, cells[axis] - tile[axis]]
    padded = F.pad(tiles, pad).view(b, *([grid] * ndim), c, *cells)
    # (B, g1..gn, C, c1..cn) -> (B, C, g1, c1, ..., gn, cn)
    order = [0, ndim + 1] + [v for axis in range(ndim) for v in (1 + axis, ndim + 2 + axis)]
    volume = padded.permute(order).reshape(b, c, *[grid * cell for cell in cells])
    rest: list[int] = []
    for axis in reversed(range(ndim)):
        rest += [0, spatial[axis] - grid * cells[axis]]
    return F.pad(volume, rest)


@register_task("jigsaw")
class Jigsaw(ProxyTask):
    """Shuffle lattice tiles by one of ``n_permutations`` fixed permutations; predict which.

    Args:
        grid: cells per axis (appendix: 3, i.e. 27 tiles for a sub-volume).
        n_permutations: number of classes (appendix: 100).
        jitter: tiles are up to this many voxels smaller than their cell per axis, at a random offset.
        layout: ``"volume"`` or ``"stack"`` (see the module docstring).
        seed: seed of the permutation set (fixed, so pretraining and evaluation agree).
        min_hamming: minimum pairwise Hamming distance the permutation set must reach; default
            ``max(2, int(0.7 * n_tiles))``, i.e. 18 for 27 tiles (the default set reaches 24).
        pool_size: candidate pool of the greedy selection.

    Attributes:
        permutations: (n_permutations, n_tiles) long tensor; ``min_distance``: its minimum
        pairwise Hamming distance.
    """

    kind = "classification"
    paper = "Noroozi & Favaro 2016, as in Zhou et al. 2021's appendix"
    num_classes = 100
    loss_region = "all"
    spatial_dims = None

    def __init__(self, grid: int = 3, n_permutations: int = 100, jitter: int = 2, layout: str = "volume",
                 seed: int = 0, min_hamming: int | None = None, pool_size: int = 10_000) -> None:
        if layout not in ("volume", "stack"):
            raise ValueError(f"jigsaw: layout must be 'volume' or 'stack', got {layout!r}")
        if grid < 2 or jitter < 0:
            raise ValueError(f"jigsaw: need grid >= 2 and jitter >= 0, got grid={grid}, jitter={jitter}")
        self.grid = int(grid)
        self.n_permutations = int(n_permutations)
        self.jitter = int(jitter)
        self.layout = layout
        self.seed = int(seed)
        self.min_hamming = None if min_hamming is None else int(min_hamming)
        self.pool_size = int(pool_size)
        self.num_classes = self.n_permutations  # type: ignore[misc]  # per-instance class count
        self._perms: dict[int, tuple[torch.Tensor, int]] = {}

    def permutation_set(self, ndim: int = 3) -> tuple[torch.Tensor, int]:
        """The permutations for ``ndim``-D batches and their minimum Hamming distance."""
        if ndim not in self._perms:
            n_tiles = self.grid**ndim
            floor = self.min_hamming if self.min_hamming is not None else max(2, int(0.7 * n_tiles))
            perms, dist = hamming_permutations(n_tiles, self.n_permutations, self.seed, self.pool_size, floor)
            self._perms[ndim] = (torch.from_numpy(perms), dist)
        return self._perms[ndim]

    @property
    def permutations(self) -> torch.Tensor:
        return self.permutation_set(3)[0]

    @property
    def min_distance(self) -> int:
        return self.permutation_set(3)[1]

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, n_permutations={self.n_permutations}, jitter={self.jitter}, "
                f"layout={self.layout!r}, seed={self.seed}")

    def tile_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        cells = [dim // self.grid for dim in spatial]
        if min(cells) < 1:
            raise ValueError(f"jigsaw: image {spatial} is smaller than the {self.grid}-cell lattice")
        return tuple(max(1, cell - self.jitter) for cell in cells)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> ProxyPair:
        check_batch(batch, "jigsaw")
        b, c, spatial = batch.shape[0], batch.shape[1], tuple(batch.shape[2:])
        ndim = len(spatial)
        perms, _ = self.permutation_set(ndim)
        perms = perms.to(batch.device)
        tile = self.tile_shape(spatial)
        n_tiles = self.grid**ndim
        slack = torch.tensor([dim // self.grid - t for dim, t in zip(spatial, tile)], device=batch.device)
        offsets = randint(0, slack, (b, n_tiles, ndim), generator, batch.device)
        label = torch.randint(0, self.n_permutations, (b,), generator=generator, device=batch.device)
        tiles = crop_tiles(batch, self.grid, tile, offsets)
        order = perms[label].view(b, n_tiles, *([1] * (ndim + 1))).expand(-1, -1, c, *tile)
        shuffled = torch.gather(tiles, 1, order)
        if self.layout == "stack":
            return ProxyPair(input=shuffled.reshape(b, n_tiles * c, *tile), label=label)
        return ProxyPair(input=place_tiles(shuffled, self.grid, spatial), label=label)
