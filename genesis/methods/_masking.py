"""What the masked image modelling methods (MAE, SimMIM, SparK) share: patch masks, views, loss, metrics.

* **Masks** (:func:`random_patch_mask`): per sample, exactly ``round(ratio * L)`` of the L patches
  of a grid are masked, drawn from the step's generator for the whole batch at once (uniform noise,
  ``argsort``, ``scatter``: MAE's shuffle, vectorised).
* **Views** (:class:`MaskedViews`): the images (one random axial slice per cube for 2D), the mask
  on the patch grid and, for ``norm_pix_loss``, the per-patch normalised target (MAE / SparK:
  ``(x - mean) / sqrt(var + 1e-6)`` over the voxels of each patch, unbiased variance).
* **Loss** (:func:`masked_loss`): MSE (MAE, SparK) or L1 (SimMIM) over the masked voxels of the
  batch. Every patch has the same number of voxels, so this is exactly the papers' "mean over the
  patch, then mean over the masked patches".
* **Metrics** (:func:`validation_sums`): the model's error on the masked voxels next to the trivial
  baseline it must beat: predicting the mean of the sample's visible voxels there
  (``val_mask_mean_*``), scored in the loss's own target space.
* :class:`ImageSpaceMIM`: any image-to-image network restoring masked patches that were replaced in
  the input (zeros: MAE's CNN form as in nnssl; a learnable token: SimMIM's CNN form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.methods.proxy import provider_kwargs
from genesis.methods.base import Method, NetworkRequest, NetworkSpec, Parts
from genesis.models import create_model, unpack_output
from genesis.models.base import MODELS
from genesis.models.sparse import upsample_grid

#: epsilon of the per-patch target normalisation (MAE's and SparK's)
NORM_PIX_EPS = 1e-6


# ---------------------------------------------------------------------------------- images
def take_images(cubes: torch.Tensor, generator: torch.Generator, dims: int) -> torch.Tensor:
    """The batch as the network sees it: the cubes (B, 1, D, H, W), or for ``dims == 2`` one random axial
    slice of each (B, 1, H, W), drawn from ``generator`` (as the restoration methods do)."""
    if cubes.dim() != 5:
        raise ValueError(f"expected cubes (B, C, D, H, W), got shape {tuple(cubes.shape)}")
    if dims == 3:
        return cubes
    b, _, d = cubes.shape[:3]
    index = torch.randint(0, d, (b,), generator=generator, device=cubes.device)
    return cubes[torch.arange(b, device=cubes.device), :, index]


def patch_tuple(patch: int | tuple[int, ...], dims: int) -> tuple[int, ...]:
    return tuple(int(p) for p in patch) if isinstance(patch, (tuple, list)) else (int(patch),) * dims


def patch_grid(sides: tuple[int, ...], patch: tuple[int, ...], what: str = "patch") -> tuple[int, ...]:
    """The grid of patches of ``patch`` over an image of ``sides``.

    Raises:
        ConfigError: a side the patch does not divide.
    """
    if len(sides) != len(patch) or any(p < 1 or s % p for s, p in zip(sides, patch)):
        raise ConfigError(f"{what} size {tuple(patch)} must divide the image sides {tuple(sides)} "
                          "(change the crop or the patch size)")
    return tuple(s // p for s, p in zip(sides, patch))


def masked_count(num_patches: int, ratio: float) -> int:
    """How many of ``num_patches`` a mask of ``ratio`` hides: ``round(ratio * L)``, at least one of each kind.

    Raises:
        ConfigError: a ratio outside (0, 1), or too few patches to mask some and keep some.
    """
    if not 0.0 < ratio < 1.0:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {ratio}")
    n = int(round(ratio * num_patches))
    if not 0 < n < num_patches:
        raise ConfigError(f"mask_ratio {ratio} of {num_patches} patches masks {n}: the crop needs more patches "
                          "(a larger crop or a smaller patch)")
    return n


def random_patch_mask(batch: int, grid: tuple[int, ...], ratio: float, generator: torch.Generator,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """A (B, *grid) bool mask, True where a patch is masked: exactly :func:`masked_count` per sample.

    The patches to mask are the first of a random permutation per sample (argsort of uniform
    noise), computed for the whole batch in one call.
    """
    num = math.prod(grid)
    n = masked_count(num, ratio)
    noise = torch.rand((batch, num), generator=generator, device=device)
    order = noise.argsort(dim=1)
    mask = torch.zeros((batch, num), dtype=torch.bool, device=noise.device)
    mask.scatter_(1, order[:, :n], True)
    return mask.view(batch, *grid)


# ---------------------------------------------------------------------------------- patches
def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *sides) -> (B, L, prod(patch) * C): patches in raster order of the grid, each as
    (patch voxels..., channels) like MAE's ``patchify``."""
    b, c, *sides = x.shape
    d = len(sides)
    grid = [s // p for s, p in zip(sides, patch)]
    shape = [b, c]
    for g, p in zip(grid, patch):
        shape += [g, p]
    perm = [0] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)] + [1]
    return x.reshape(shape).permute(perm).reshape(b, math.prod(grid), math.prod(patch) * c)


def unpatchify(p: torch.Tensor, patch: tuple[int, ...], grid: tuple[int, ...], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, L, prod(patch) * C) -> (B, C, *sides)."""
    b, d = p.shape[0], len(patch)
    x = p.reshape(b, *grid, *patch, channels)
    perm = [0, 2 * d + 1]
    for i in range(d):
        perm += [1 + i, 1 + d + i]
    return x.permute(perm).reshape(b, channels, *[g * s for g, s in zip(grid, patch)])


def normalise_patches(x: torch.Tensor, patch: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-patch target normalisation: ``(x - mean) / sqrt(var + 1e-6)`` over the voxels and
    channels of each patch (unbiased variance, as ``torch.var`` in MAE and SparK).

    Returns:
        the normalised image (shaped like ``x``), and the per-patch mean and ``sqrt(var + eps)``,
        each (B, *grid).
    """
    b, c, *sides = x.shape
    grid = tuple(s // p for s, p in zip(sides, patch))
    patches = patchify(x, patch)
    # two passes (mean, then squared deviations, reused for the target): 0.27 ms/sample for a
    # (1, 32, 64, 64) cube in 16^3 patches on one CPU thread, against 0.79 with torch.var_mean
    mean = patches.mean(dim=-1, keepdim=True)
    centred = patches - mean
    var = centred.square().sum(dim=-1, keepdim=True) / max(patches.shape[-1] - 1, 1)
    std = (var + NORM_PIX_EPS).sqrt_()
    normalised = unpatchify(centred.div_(std), patch, grid, c)
    return normalised, mean.view(b, *grid), std.view(b, *grid)


# ---------------------------------------------------------------------------------- views
@dataclass
class MaskedViews:
    """One batch of masked image modelling.

    Attributes:
        image: the images (B, C, *sides) in [0, 1].
        mask: (B, *grid) bool, True where a patch is masked.
        patch: patch sides.
        target: what the prediction is scored against: ``image``, or its per-patch normalised form.
        patch_mean / patch_std: the per-patch mean and ``sqrt(var + eps)`` of ``image`` (B, *grid)
            (``norm_pix_loss``), else None.
    """

    image: torch.Tensor
    mask: torch.Tensor
    patch: tuple[int, ...]
    target: torch.Tensor
    patch_mean: torch.Tensor | None = None
    patch_std: torch.Tensor | None = None

    @cached_property
    def voxel_mask(self) -> torch.Tensor:
        """The mask at voxel resolution (B, 1, *sides) bool."""
        return upsample_grid(self.mask, tuple(self.image.shape[2:]))

    @cached_property
    def input(self) -> torch.Tensor:
        """The images with the masked patches set to zero (what MAE's CNN form feeds the network)."""
        return self.image.masked_fill(self.voxel_mask, 0.0)

    def per_voxel(self, values: torch.Tensor) -> torch.Tensor:
        """Per-patch values (B, *grid) repeated over the voxels and channels of their patch (B, C, *sides)."""
        image = self.image
        return upsample_grid(values, tuple(image.shape[2:])).expand(-1, image.shape[1], *image.shape[2:])

    def to_image_space(self, prediction: torch.Tensor) -> torch.Tensor:
        """A prediction in target space as intensities (undoes the per-patch normalisation with the
        target's own statistics, as MAE's visualisation does: for pictures, not for scores)."""
        if self.patch_mean is None or self.patch_std is None:
            return prediction
        return prediction * self.per_voxel(self.patch_std) + self.per_voxel(self.patch_mean)


def make_views(images: torch.Tensor, mask: torch.Tensor, patch: tuple[int, ...], norm_pix: bool) -> MaskedViews:
    """The :class:`MaskedViews` of ``images`` under ``mask`` (targets normalised per patch if ``norm_pix``)."""
    if not norm_pix:
        return MaskedViews(images, mask, patch, images)
    target, mean, std = normalise_patches(images.float(), patch)
    return MaskedViews(images, mask, patch, target, mean, std)


@dataclass
class MIMOutput:
    """The network's prediction of the whole image in target space (B, C, *sides), and an extra loss."""

    prediction: torch.Tensor
    aux_loss: torch.Tensor | None = None


# ---------------------------------------------------------------------------------- loss, metrics
def _error(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    diff = prediction.float() - target.float()
    return diff.square() if kind == "mse" else diff.abs()


def masked_loss(prediction: torch.Tensor, views: MaskedViews, kind: str) -> torch.Tensor:
    """Mean ``kind`` error (``"mse"`` or ``"l1"``) over the masked voxels of the batch (float32)."""
    err = _error(prediction, views.target, kind)
    m = views.voxel_mask.expand_as(err)
    return err.masked_fill(~m, 0.0).sum() / m.sum()


def _per_sample(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.expand_as(err)
    return err.masked_fill(~m, 0.0).flatten(1).sum(1) / m.flatten(1).sum(1)


def visible_mean_prediction(views: MaskedViews) -> torch.Tensor:
    """The trivial prediction: each sample's mean over its visible voxels, everywhere, in target space."""
    image = views.image.float()
    visible = ~views.voxel_mask.expand_as(image)
    mean = image.masked_fill(~visible, 0.0).flatten(1).sum(1) / visible.flatten(1).sum(1)
    constant = mean.view(-1, *([1] * (image.dim() - 1))).expand_as(image)
    if views.patch_mean is None or views.patch_std is None:
        return constant
    return (constant - views.per_voxel(views.patch_mean)) / views.per_voxel(views.patch_std)


def validation_sums(prediction: torch.Tensor, views: MaskedViews, kind: str) -> dict[str, float]:
    """Per-batch sums over samples of the errors on the masked voxels, in the loss's target space.

    ``val_masked_mse`` (the model), ``val_mask_mean_mse`` (the mean of the visible voxels); with
    ``kind == "l1"`` the same as ``val_masked_l1`` / ``val_mask_mean_l1``. With normalised targets
    also ``val_patch_mean_mse``: predicting zero, i.e. each masked patch's own mean, the best
    constant per patch in that space (a constant the network can output without seeing anything).
    """
    baseline = visible_mean_prediction(views)
    m = views.voxel_mask
    out = {"val_masked_mse": float(_per_sample(_error(prediction, views.target, "mse"), m).sum()),
           "val_mask_mean_mse": float(_per_sample(_error(baseline, views.target, "mse"), m).sum())}
    if kind == "l1":
        out["val_masked_l1"] = float(_per_sample(_error(prediction, views.target, "l1"), m).sum())
        out["val_mask_mean_l1"] = float(_per_sample(_error(baseline, views.target, "l1"), m).sum())
    if views.patch_mean is not None:
        out["val_patch_mean_mse"] = float(_per_sample(views.target.float().square(), m).sum())
    return out


def per_sample_errors(prediction: torch.Tensor, views: MaskedViews, kind: str) -> dict[str, torch.Tensor]:
    """Per-sample ``kind`` errors (B,) on the masked voxels for the training loop's collapse check:
    ``model``, ``fill`` (the visible-voxel mean, the restoration methods' name for it) and, with
    normalised targets, ``patch_mean`` (predicting zero there)."""
    m = views.voxel_mask
    out = {"model": _per_sample(_error(prediction, views.target, kind), m),
           "fill": _per_sample(_error(visible_mean_prediction(views), views.target, kind), m)}
    if views.patch_mean is not None:
        out["patch_mean"] = _per_sample(_error(torch.zeros_like(views.target), views.target, kind), m)
    return out


def middle_slice(x: torch.Tensor) -> np.ndarray:
    """The middle axial slice of channel 0 of one image (C, *sides)."""
    img = x.detach().float().cpu()[0]
    return (img[img.shape[0] // 2] if img.dim() == 3 else img).numpy()


def save_mim_grid(views: MaskedViews, outputs: MIMOutput, path: Path, title: str, n: int) -> None:
    """PNG of ``n`` samples: the input with its masked patches blanked, the reconstruction (visible
    patches from the input, masked ones predicted), the original."""
    from genesis.viz import save_grid

    restored = views.to_image_space(outputs.prediction.detach().float())
    pasted = torch.where(views.voxel_mask, restored, views.image.float())
    k = min(n, views.image.shape[0])
    rows = [[middle_slice(views.input[i]), middle_slice(pasted[i]), middle_slice(views.image[i])] for i in range(k)]
    save_grid(rows, path, row_titles=[f"sample {i}" for i in range(k)],
              col_titles=["input (masked patches blank)", "reconstruction", "original"], title=title)


# ---------------------------------------------------------------------------------- networks
class ImageSpaceMIM(nn.Module):
    """An image-to-image network restoring masked patches replaced in its input.

    Args:
        backbone: the network (``unet3d``, ``unet2d``, ``nnunet``, ``primus``...).
        in_channels: image channels.
        mask_token: replace masked voxels by a learnable value per channel (SimMIM) instead of zero (MAE).
    """

    def __init__(self, backbone: nn.Module, in_channels: int = 1, mask_token: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, in_channels))
            nn.init.trunc_normal_(self.mask_token, std=0.02)  # SimMIM's initialisation
        else:
            self.mask_token = None

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> Any:
        """The backbone's output on ``image`` with the patches of ``mask`` (B, *grid) replaced."""
        m = upsample_grid(mask, tuple(image.shape[2:]))
        if self.mask_token is None:
            return self.backbone(image.masked_fill(m, 0.0))
        token = self.mask_token.to(image.dtype).view(1, -1, *([1] * (image.dim() - 2)))
        return self.backbone(torch.where(m, token, image))


#: constructor arguments that genesis' image-to-image networks take besides the channels
_WIDTH_NETWORKS = frozenset({"unet3d", "unet2d", "nnunet"})
#: networks built for 3D crops only
_3D_ONLY = frozenset({"unet3d", "nnunet", "primus"})


def image_network_spec(name: str, request: NetworkRequest, method: str) -> NetworkSpec:
    """Constructor arguments of an image-to-image network for ``request`` (user arguments last).

    A network with a pretraining hook (``MODELS.get(name).pretraining_kwargs``, e.g. nnU-Net's plans)
    gets its arguments from it.

    Raises:
        ConfigError: a network of the wrong dimensionality.
    """
    dims = request.dims
    if name in _3D_ONLY and dims != 3:
        raise ConfigError(f"{method}: --model {name} is a 3D network; use unet2d (or vit) for --dims 2")
    if name == "unet2d" and dims != 2:
        raise ConfigError(f"{method}: --model unet2d is a 2D network; use unet3d (or vit) for --dims 3")
    # networks built from plans take them from --plans; without it, from the user's model_kwargs
    from_plans = bool(getattr(MODELS.get(name), "architecture_from_plans", False))
    kwargs = None if from_plans and not request.plans else provider_kwargs(
        name, request, request.in_channels, request.out_channels)
    if kwargs is None:
        kwargs = {"in_channels": request.in_channels, "out_channels": request.out_channels}
        if name in _WIDTH_NETWORKS:
            kwargs["base_width"] = request.width
        if name == "primus":
            kwargs["input_shape"] = tuple(int(s) for s in request.crop[-3:])
    kwargs.update(request.model_kwargs)
    return NetworkSpec(name, kwargs)


def vit_spec(request: NetworkRequest, sides: tuple[int, ...], patch: int, method: str, parameter: str) -> NetworkSpec:
    """The ViT of a masked-image method: its patch is the method's (``parameter``), never the model's own.

    Raises:
        ConfigError: ``--model-kwargs`` give the ViT another patch size.
    """
    given = request.model_kwargs.get("patch_size")
    if given is not None and patch_tuple(given, request.dims) != patch_tuple(patch, request.dims):
        raise ConfigError(f"{method}: set the ViT's patch with task parameter {parameter} (now {patch}), not the "
                          f"model's ({given})")
    return NetworkSpec("vit", {"spatial_dims": request.dims, "in_channels": request.in_channels, "img_size": sides,
                               "patch_size": patch, **request.model_kwargs})


def build_network(spec: NetworkSpec, method: str) -> nn.Module:
    """``create_model(spec)`` with constructor errors as ConfigErrors naming the method and network."""
    try:
        return create_model(spec.name, **dict(spec.kwargs))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{method}: model {spec.name!r} with {dict(spec.kwargs)}: {exc}") from None


def image_sides(request: NetworkRequest) -> tuple[int, ...]:
    """The network's input sides for ``request`` (the last ``dims`` sides of the crop)."""
    return tuple(int(s) for s in request.crop[-request.dims:])


# ---------------------------------------------------------------------------------- the method base
class MaskedImageMethod(Method):
    """What MAE, SimMIM and SparK share: views, forward, loss, metrics and grid (see the module docstring).

    Subclasses set :attr:`loss_kind`, resolve :meth:`patch` and ``norm_pix`` and build the module,
    whose ``forward(image, mask)`` returns the whole image predicted in target space.
    """

    family = "masked image modelling"
    monitor_key = "val_masked_mse"
    log_keys = ("val_masked_mse", "val_mask_mean_mse", "val_patch_mean_mse")
    loss_kind: ClassVar[str] = "mse"

    #: the CNN form writes a learnable token into the masked voxels (SimMIM) instead of zeros (MAE)
    cnn_mask_token: ClassVar[bool] = False

    def build_model(self, spec: NetworkSpec) -> nn.Module:
        """The CNN form around any image-to-image network, or the method's ViT module."""
        self.bind(spec)
        backbone = build_network(spec, self.name)
        if getattr(self, "form", "cnn") == "cnn":
            return ImageSpaceMIM(backbone, int(spec.kwargs.get("in_channels", 1)), mask_token=self.cnn_mask_token)
        assert hasattr(backbone, "patch_tokens"), "a ViT encoder (genesis.models.vit)"
        return self.vit_module(backbone)

    def vit_module(self, backbone: nn.Module) -> nn.Module:  # pragma: no cover - ViT methods override
        raise NotImplementedError

    def __init__(self, mask_ratio: float) -> None:
        ratio = float(mask_ratio)
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.mask_ratio = ratio
        self.norm_pix = False

    def patch(self, dims: int) -> tuple[int, ...]:  # pragma: no cover - abstract
        """The mask's patch sides for ``dims``-D images."""
        raise NotImplementedError

    def parts_for(self, spec: NetworkSpec, heads: tuple[str, ...]) -> Parts:
        return Parts(backbone="backbone.", network=spec, heads=heads)

    def views(self, cubes: torch.Tensor, generator: torch.Generator, dims: int) -> MaskedViews:
        images = take_images(cubes, generator, dims)
        patch = self.patch(dims)
        grid = patch_grid(tuple(images.shape[2:]), patch, f"{self.name} mask patch")
        mask = random_patch_mask(images.shape[0], grid, self.mask_ratio, generator, images.device)
        return make_views(images, mask, patch, self.norm_pix)

    def forward(self, model: nn.Module, views: MaskedViews) -> MIMOutput:
        out = unpack_output(model(views.image, views.mask))
        return MIMOutput(out.output, out.aux_loss)

    def loss(self, outputs: MIMOutput, views: MaskedViews) -> tuple[torch.Tensor, dict[str, float]]:
        loss = masked_loss(outputs.prediction, views, self.loss_kind)
        if outputs.aux_loss is not None:
            loss = loss + outputs.aux_loss.float()
        return loss, {}

    def validation(self, outputs: MIMOutput, views: MaskedViews) -> dict[str, float]:
        return validation_sums(outputs.prediction, views, self.loss_kind)

    def per_sample(self, outputs: MIMOutput, views: MaskedViews) -> dict[str, torch.Tensor]:
        return per_sample_errors(outputs.prediction, views, self.loss_kind)

    def count(self, views: MaskedViews) -> int:
        return int(views.image.shape[0])

    def grid(self, views: MaskedViews, outputs: MIMOutput, path: Path, title: str, n: int) -> None:
        save_mim_grid(views, outputs, path, title, n)

    def settings(self) -> Mapping[str, Any]:
        """The method's own settings for :meth:`describe`."""
        return {"mask_ratio": self.mask_ratio}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "paper": self.paper, "loss": self.loss_kind,
                "norm_pix_loss": self.norm_pix, **self.settings()}
