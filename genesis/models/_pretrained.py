"""Shared base of the networks rebuilt to load upstream (torchvision) checkpoints.

The video ResNets (:mod:`genesis.models.video`) and the 2D ResNets/ResNeXts
(:mod:`genesis.models.resnet2d`) keep torchvision's parameter names so the released state dicts
load as they are. This base adds what our pipeline needs on top, uniformly:

* grey CT input: with ``in_channels=1`` the single channel is repeated to RGB (Ke et al., 2023) so
  the pretrained first convolution is used as released;
* ``normalize=True``: the checkpoint's mean/std applied to inputs in [0, 1], stored as
  non-persistent buffers so state dicts stay torchvision-compatible;
* ``forward_features(x)`` (last-stage feature map), ``feature_dim``, ``replace_head(n)``,
  ``encoder_only()`` and ``encoder_state_prefixes`` (what ``load_weights(part="encoder")`` loads);
* ``head_path``: the dotted name of the published final layer (``fc`` for torchvision ResNets,
  ``head`` for Swin3D, ``blocks.5.proj`` for PyTorchVideo ResNets, ``classifier.1`` for S3D), so
  the head is replaced and dropped where the released checkpoint keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from genesis.models._blocks import InputShapeError

#: grey CT -> 3 channels (``--channels``): the same slice three times (Ke et al.), slices n-1, n, n+1
#: (2.5D context for 2D networks), or three HU windows of the same slice
CHANNEL_MODES = ("repeat", "neighbors", "windows")
#: the three HU windows of ``channels="windows"``: lung (W1500/L-600), mediastinum (W350/L50) and a
#: pulmonary-embolism / CT-angiography window (W700/L100)
CT_WINDOWS: tuple[tuple[float, float], ...] = ((-1350.0, 150.0), (-125.0, 225.0), (-250.0, 450.0))
#: the HU span the input must cover for ``channels="windows"`` (the union of :data:`CT_WINDOWS`)
CT_WINDOWS_SPAN = (min(w[0] for w in CT_WINDOWS), max(w[1] for w in CT_WINDOWS))
SLICE_AGGREGATES = ("max", "mean")
#: what a 2D network sees of a (B, 1, D, H, W) window: every slice (scored, then aggregated), the
#: centre slice with its two neighbours as RGB (2D, Models Genesis Table 4) or the axial, coronal and
#: sagittal planes through the centre as RGB (2.5D)
VIEWS = ("window", "axial", "orthogonal")

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_AXES = {4: "(B, C, H, W)", 5: "(B, C, D, H, W)"}


class PretrainedBackbone(nn.Module):
    """Grey-to-RGB input handling, normalisation, features/head API shared by the baselines.

    Subclasses set ``spatial_dims``, ``feature_dim``, ``encoder_state_prefixes``, build ``fc`` and
    implement ``forward_features``; ``input_ranks`` lists the tensor ranks they accept (2D nets
    also take a (B, C, D, H, W) window of slices).
    """

    spatial_dims: int
    feature_dim: int = 512
    head_path: str = "fc"
    encoder_state_prefixes: tuple[str, ...]
    input_ranks: tuple[int, ...] = ()

    def _init_input(self, in_channels: int, normalize: bool, mean: Sequence[float], std: Sequence[float]) -> None:
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey, repeated to RGB) or 3, got {in_channels}")
        self.in_channels = in_channels
        self.normalize = normalize
        view = (1, 3) + (1,) * self.spatial_dims
        self.register_buffer("input_mean", torch.tensor(mean).view(view), persistent=False)
        self.register_buffer("input_std", torch.tensor(std).view(view), persistent=False)

    def _check_input(self, x: torch.Tensor) -> None:
        ranks = self.input_ranks or (self.spatial_dims + 2,)
        if x.dim() not in ranks or x.shape[1] != self.in_channels:
            axes = " or ".join(_AXES.get(r, f"{r}D") for r in ranks)
            raise InputShapeError(
                f"{type(self).__name__} expects {axes} with C={self.in_channels}, got shape {tuple(x.shape)}"
            )

    def set_input_mode(self, channels: str = "repeat", hu_window: Sequence[float] | None = None,
                       slice_aggregate: str = "max", view: str = "window") -> PretrainedBackbone:
        """How grey CT becomes the network's three channels, and how a 2D network scores a window.

        Args:
            channels: ``"repeat"`` (the slice three times, Ke et al.), ``"neighbors"`` (slices n-1,
                n, n+1; needs windows of slices (B, 1, D, H, W), edges repeat the end slice) or
                ``"windows"`` (three HU windows, :data:`CT_WINDOWS`, of the same slice).
            hu_window: the HU range that the [0, 1] input spans (needed by ``"windows"``; the input
                should cover :data:`CT_WINDOWS_SPAN` so no window is clipped).
            slice_aggregate: 2D networks on windows of slices: a window's logit is the ``max`` (Ke
                et al.) or ``mean`` of its per-slice logits.
            view: 2D networks only: ``"window"`` (every slice), ``"axial"`` (slices c-1, c, c+1 at
                the window's centre as RGB: one 2D image) or ``"orthogonal"`` (the axial, coronal and
                sagittal planes through the centre as RGB: 2.5D). These make RGB themselves, so
                ``channels`` must stay ``"repeat"``.
        """
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        if view != "window" and self.spatial_dims != 2:
            raise ValueError(f"view={view!r} feeds a 2D network with one image per window; this is a 3D network")
        if view != "window" and channels != "repeat":
            raise ValueError(f"view={view!r} makes the three channels itself; leave channels at 'repeat'")
        if channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be one of {CHANNEL_MODES}, got {channels!r}")
        if slice_aggregate not in SLICE_AGGREGATES:
            raise ValueError(f"slice_aggregate must be one of {SLICE_AGGREGATES}, got {slice_aggregate!r}")
        if channels != "repeat" and self.in_channels != 1:
            raise ValueError(f"channels={channels!r} makes RGB from grey input; this network takes "
                             f"{self.in_channels}-channel input")
        if channels == "windows" and (hu_window is None or len(hu_window) != 2 or hu_window[1] <= hu_window[0]):
            raise ValueError(f"channels='windows' needs the HU range of the input (low, high), got {hu_window!r}")
        self.channel_mode = channels
        self.channel_hu_window = tuple(float(v) for v in hu_window) if hu_window is not None else None
        self.slice_aggregate = slice_aggregate
        self.view = view
        return self

    def _grey_to_rgb(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, ...) grey in [0, 1] -> (B, 3, ...) as :meth:`set_input_mode` says."""
        view = getattr(self, "view", "window")
        if view != "window" and x.dim() == 5:
            return self._view_rgb(x, view)
        mode = getattr(self, "channel_mode", "repeat")
        if mode == "repeat":
            return x.expand(-1, 3, *x.shape[2:])
        if mode == "neighbors":
            if x.dim() != 5:
                raise InputShapeError(f"channels='neighbors' needs windows of slices (B, 1, D, H, W), got shape "
                                      f"{tuple(x.shape)}")
            before = torch.cat([x[:, :, :1], x[:, :, :-1]], dim=2)
            after = torch.cat([x[:, :, 1:], x[:, :, -1:]], dim=2)
            return torch.cat([before, x, after], dim=1)
        low, high = self.channel_hu_window  # type: ignore[misc]
        hu = low + x * (high - low)
        return torch.cat([((hu - a) / (b - a)).clamp(0.0, 1.0) for a, b in CT_WINDOWS], dim=1)

    @staticmethod
    def _view_rgb(x: torch.Tensor, view: str) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, 3, 1, H, W): one RGB image per window (a window of one slice)."""
        d, h, w = x.shape[2:]
        if view == "axial":
            c = d // 2
            index = torch.tensor([max(c - 1, 0), c, min(c + 1, d - 1)], device=x.device)
            return x.index_select(2, index).transpose(1, 2)[:, :, None].reshape(x.shape[0], 3, 1, h, w)
        axial = x[:, :, d // 2]
        coronal, sagittal = x[:, :, :, h // 2, :], x[:, :, :, :, w // 2]
        if (d, w) != (h, w):  # non-cubic windows: planes resampled to the axial size
            coronal = nn.functional.interpolate(coronal, size=(h, w), mode="bilinear", align_corners=False)
        if (d, h) != (h, w):
            sagittal = nn.functional.interpolate(sagittal, size=(h, w), mode="bilinear", align_corners=False)
        return torch.cat([axial, coronal, sagittal], dim=1)[:, :, None]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            view = (1, 3) + (1,) * (x.dim() - 2)
            x = (x - self.input_mean.reshape(view)) / self.input_std.reshape(view)
        return x

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Check the shape, make RGB from grey and normalise; ``x`` has rank ``spatial_dims + 2``."""
        self._check_input(x)
        if self.in_channels == 1:
            x = self._grey_to_rgb(x)
        return self._normalize(x)

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a model trained from scratch matches the baseline
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def head_layer(self) -> nn.Module | None:
        """The final layer at ``head_path`` (None once :meth:`encoder_only` dropped it)."""
        try:
            layer = self.get_submodule(self.head_path)
        except AttributeError:
            return None
        return None if isinstance(layer, nn.Identity) else layer

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F, ...) last-stage features -> (B, F): global average (MViT overrides: class token)."""
        return features.flatten(2).mean(2)

    def forward_head(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits of pooled features; a 1x1x1 convolution head (S3D) acts as the linear layer it is."""
        layer = self.head_layer()
        if layer is None:
            raise RuntimeError(f"{type(self).__name__} was made encoder-only; it has no classifier")
        dropout = getattr(self, "head_dropout", None)
        if dropout is not None:
            pooled = dropout(pooled)
        if isinstance(layer, nn.Conv3d):
            return layer(pooled[:, :, None, None, None]).flatten(1)
        return layer(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes): the head on pooled last-stage features.

        A 2D network given a window of slices (B, C, D, H, W) scores every slice and returns the
        max (or mean, :meth:`set_input_mode`) of the slice logits: Ke et al.'s "max over slices".
        """
        features = self.forward_features(x)
        if self.spatial_dims == 2 and x.dim() == 5:
            b, f, d = features.shape[:3]
            slices = features.transpose(1, 2).reshape(b * d, f, *features.shape[3:])
            logits = self.forward_head(self.pool(slices)).reshape(b, d, -1)
            return logits.amax(1) if getattr(self, "slice_aggregate", "max") == "max" else logits.mean(1)
        return self.forward_head(self.pool(features))

    def _set_layer(self, path: str, layer: nn.Module) -> None:
        parent_name, _, child = path.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            parent[int(child)] = layer
        else:
            setattr(parent, child, layer)

    def replace_head(self, num_classes: int) -> PretrainedBackbone:
        """New (freshly initialised) final layer of the published kind, e.g. 1 logit for PE vs no PE."""
        device = next(self.parameters()).device
        old = self.head_layer()
        if isinstance(old, nn.Conv3d):
            new: nn.Module = nn.Conv3d(self.feature_dim, num_classes, kernel_size=1)
        else:
            new = nn.Linear(self.feature_dim, num_classes)
        self._set_layer(self.head_path, new.to(device))
        self.num_classes = num_classes
        return self

    def encoder_only(self) -> PretrainedBackbone:
        """Drop the head (the network then serves as the backbone of ``encoder_classifier`` or ``lrcn``)."""
        if self.head_path in self._modules:
            # deleted, not set to None, so loading a full checkpoint reports fc.* as unexpected
            delattr(self, self.head_path)
        elif self.head_layer() is not None:
            self._set_layer(self.head_path, nn.Identity())  # nested: a parameter-free placeholder
        return self
