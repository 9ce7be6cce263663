"""2D slice-based and 2.5D orthogonal-plane inputs for the NCS cubes (Models Genesis sec. 4.5).

Zhou et al. 2021 compare 3D models with 2D ones fed "adjacent axial slices" (2D slice-based) or
"axial, coronal and sagittal slices" (2.5D), and for segmentation "predict the mask slice by slice
and form the 3D segmentation volume by simply stacking the 2D segmentation maps" (Table 4 and the
text around it; Table 4 lists 2.5D numbers for the classification targets only). Here a 2D U-Net
(``unet2d``) segments NCS that way, and the test metrics are the 3D Dice / IoU of the stacked
prediction on the same test regions as the 3D model, so the numbers compare directly:

* ``axial`` (2D): the network sees an axial slice (``context`` 1) or the slice with its two
  neighbours as channels (``context`` 3, the paper's "three adjacent axial views"; ``--channels
  neighbors``) and predicts that slice's mask; the test prediction stacks the axial masks.
* ``orthogonal`` (2.5D): the same network is trained on axial, coronal and sagittal planes, and
  a voxel's probability is the mean of the three stacked predictions, i.e. of the axial, coronal
  and sagittal planes through that voxel. This is the dense form of the triplanar input of
  Prasoon et al. 2013 / Roth et al. 2014 that Zhou et al. cite for 2.5D: stacking the three
  planes through the cube centre as channels (their classification input, ``--view orthogonal``
  on ncc/ecc) gives channels that are not aligned with a slice's mask, so it cannot segment.

Training planes come from the same crops the 3D model trains on (:func:`finetune.data.random_crop`
of the 3D crop around a nodule, rotated so the slicing axis comes first), one plane drawn
uniformly along the slicing axis, so the 2D and 3D models see the same voxels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from finetune.data import SegCase, random_crop

SLICE_VIEWS = ("axial", "orthogonal")
#: slicing axes (of a (z, y, x) volume) of each view: axial; axial, coronal, sagittal
VIEW_AXES = {"axial": (0,), "orthogonal": (0, 1, 2)}
#: ``--channels`` -> slices per input: one slice, or slices n-1, n, n+1
CONTEXT = {"repeat": 1, "neighbors": 3}


def _along(axis: int) -> tuple[int, int, int]:
    """Axis order putting ``axis`` first, the other two in their order."""
    return (axis, *(a for a in range(3) if a != axis))


def _rotated(case: SegCase, axis: int) -> SegCase:
    order = _along(axis)
    return SegCase(image=np.transpose(case.image, order), mask=np.transpose(case.mask, order), name=case.name,
                   centers=[tuple(c[a] for a in order) for c in case.centers], group=case.group)


def _slab(volume: np.ndarray, k: int, context: int) -> np.ndarray:
    """Slices ``k - context // 2 .. k + context // 2`` of ``volume`` (zeros, i.e. air, outside)."""
    half = context // 2
    lo, hi = k - half, k + half + 1
    out = volume[max(lo, 0):min(hi, volume.shape[0])]
    if lo < 0 or hi > volume.shape[0]:
        out = np.pad(out, ((max(-lo, 0), max(hi - volume.shape[0], 0)), (0, 0), (0, 0)))
    return out


@dataclass(frozen=True)
class SliceInput:
    """How a 2D network reads the 3D NCS cases.

    Attributes:
        view: ``axial`` (2D slice-based) or ``orthogonal`` (2.5D, three slicing axes).
        context: slices per input (its channels): 1 or 3 (the slice and its neighbours).
        volume_crop: the 3D training crop (D, H, W) the planes are cut from.
        plane: the 2D crop (H, W) of every plane, whatever the slicing axis.
    """

    view: str
    context: int
    volume_crop: tuple[int, int, int]
    plane: tuple[int, int]

    def __post_init__(self) -> None:
        if self.view not in SLICE_VIEWS:
            raise ValueError(f"view must be one of {SLICE_VIEWS}, got {self.view!r}")
        if self.context not in (1, 3):
            raise ValueError(f"context must be 1 or 3 slices, got {self.context}")

    @property
    def axes(self) -> tuple[int, ...]:
        return VIEW_AXES[self.view]

    def describe(self) -> str:
        slices = "one slice" if self.context == 1 else "three adjacent slices as channels"
        if self.view == "axial":
            return (f"2D slice-based: unet2d on axial planes ({slices}), the test volume predicted slice by "
                    "slice and the masks stacked; 3D Dice/IoU of the stack")
        return (f"2.5D orthogonal: one unet2d on axial, coronal and sagittal planes ({slices}); a voxel's "
                "probability is the mean over the three planes through it; 3D Dice/IoU")

    def sample(self, train: list[SegCase], batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch: (B, context, H, W) planes and (B, 1, H, W) masks of their middle slice."""
        images, masks = [], []
        for _ in range(batch_size):
            case = train[int(rng.integers(len(train)))]
            axis = self.axes[int(rng.integers(len(self.axes)))]
            depth = self.volume_crop[axis]
            image, mask = random_crop(_rotated(case, axis), (depth, *self.plane), rng)
            k = int(rng.integers(depth))
            images.append(_slab(image, k, self.context))
            masks.append(mask[k][None])
        return (torch.from_numpy(np.stack(images).astype(np.float32)),
                torch.from_numpy(np.stack(masks).astype(np.float32)))

    def predict(self, image: np.ndarray, predict_planes: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Foreground probability (z, y, x) of a volume, plane by plane.

        ``predict_planes`` maps (N, context, h, w) planes to their (N, h, w) probabilities (the
        engine's sliding-window :func:`finetune.engine.predict_volume` with the 2D crop), so planes
        larger than the training crop are covered the same way as the 3D model's regions.
        """
        total = np.zeros(image.shape, dtype=np.float32)
        for axis in self.axes:
            order = _along(axis)
            rotated = np.transpose(image, order)
            planes = np.stack([_slab(rotated, k, self.context) for k in range(rotated.shape[0])])
            total += np.transpose(predict_planes(planes), np.argsort(order))
        return total / len(self.axes)


def slice_input(view: str, channels: str, volume_crop: Sequence[int], plane: Sequence[int]) -> SliceInput:
    """The :class:`SliceInput` of ``--view`` / ``--channels``; ``ValueError`` for other channel modes."""
    if channels not in CONTEXT:
        raise ValueError(f"--channels {channels}: 2D/2.5D NCS takes 'repeat' (one slice) or 'neighbors' "
                         "(slices n-1, n, n+1 as channels)")
    return SliceInput(view, CONTEXT[channels], tuple(int(c) for c in volume_crop), tuple(int(c) for c in plane))
