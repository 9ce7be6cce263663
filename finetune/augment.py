"""3D augmentation for fine-tuning: flips, 90-degree rotations (hence transposes), Gaussian noise.

Built from MONAI dictionary transforms so image and mask move together (Zhou et al. 2021 fine-tune
with "3D augmentation"; methods digest section 6). Rotations only turn planes whose two sides are
equal, so an anisotropic crop such as 32x64x64 keeps its shape; a rotation by 90 degrees followed
by a flip is a transpose, so transposes need no transform of their own. Noise touches the image only.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np
import torch

from finetune.config import AugmentConfig


def _plain(x) -> torch.Tensor:
    """MONAI returns MetaTensors; the training loop wants plain tensors."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


class Augmenter:
    """Random augmentation of a (C, D, H, W) image and optional mask, seeded per call.

    Args:
        cfg: probabilities and noise level.
        crop: the (D, H, W) shape of the crops (decides which planes may rotate).
        with_mask: whether a ``mask`` key is transformed alongside the image.
        rotate_degrees: random in-plane rotation within +-this many degrees (0: none).
    """

    def __init__(self, cfg: AugmentConfig, crop: Sequence[int], with_mask: bool, rotate_degrees: float = 0.0) -> None:
        # imported here: MONAI takes 1.5-5 s to import, which the fine-tuning CLI's setting checks
        # (run before any Augmenter is built) should not wait for
        from monai.transforms import Compose, RandFlipd, RandGaussianNoised, RandRotate90d, RandRotated

        self.enabled = cfg.enabled
        keys = ["image", "mask"] if with_mask else ["image"]
        self.with_mask = with_mask
        # (D, H, W) crops flip over three axes, 2D (H, W) crops over two
        transforms: list = [RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=axis) for axis in range(len(crop))]
        for plane in itertools.combinations(range(len(crop)), 2):
            if crop[plane[0]] == crop[plane[1]]:
                transforms.append(RandRotate90d(keys, prob=cfg.rotate90_prob, max_k=3, spatial_axes=plane))
        if rotate_degrees > 0:  # in-plane (about the slice axis), shape kept; Ke et al.: up to 20 degrees
            angle = float(np.deg2rad(rotate_degrees))
            transforms.append(RandRotated(keys, range_x=angle, prob=1.0, keep_size=True, padding_mode="zeros",
                                          mode=["bilinear", "nearest"] if with_mask else "bilinear"))
        if cfg.noise_prob > 0 and cfg.noise_std > 0:
            transforms.append(RandGaussianNoised(["image"], prob=cfg.noise_prob, mean=0.0, std=cfg.noise_std))
        self.transform = Compose(transforms)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor | None = None, *, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment one sample; the same ``seed`` gives the same result (exact resume)."""
        if not self.enabled:
            return image, mask
        self.transform.set_random_state(seed=int(seed) % (2**32))
        data = {"image": image}
        if self.with_mask and mask is not None:
            data["mask"] = mask
        out = self.transform(data)
        new_mask = _plain(out["mask"]).contiguous() if "mask" in out else mask
        return _plain(out["image"]).contiguous(), new_mask

    def batch(
        self, images: torch.Tensor, masks: torch.Tensor | None, seeds: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a (B, C, D, H, W) batch sample by sample with one seed each."""
        if not self.enabled:
            return images, masks
        outs_i, outs_m = [], []
        for k in range(images.shape[0]):
            im, m = self(images[k], None if masks is None else masks[k], seed=int(seeds[k]))
            outs_i.append(im)
            outs_m.append(m)
        return torch.stack(outs_i), (torch.stack(outs_m) if masks is not None else None)
