"""Sparse-convolution semantics on a dense CNN encoder (SparK, Tian et al. ICLR 2023), and encoder views.

SparK treats a masked image as a sparse set of visible patches: every encoder layer must behave as
if the masked positions did not exist. On dense layers that means (SparK's ``SparseConv`` /
``SparseBatchNorm``):

* after every convolution and pooling, the masked positions are set back to zero (a convolution
  near a mask boundary writes into masked positions; its bias writes everywhere);
* normalisation statistics are computed over the visible positions only, and masked positions
  stay zero (batch norm: per channel over the visible voxels of the batch; instance norm: per
  sample and channel over its visible voxels).

:func:`sparsify` does this *in place without changing any parameter or state-dict key*, so the
network trained sparsely is exactly the network that nnU-Net / genesis rebuilds: convolutions and
poolings get a forward hook that multiplies their output by the mask; normalisation layers get a
subclass of their own class (same parameters and buffers) whose forward uses the visible positions
when a mask is active and is the dense forward otherwise. The active mask lives in one
:class:`SparseContext` owned by the trained module (no global state, unlike nnssl's
``_cur_active``). Layers other than these must map zero to zero (activations, dropout): anything
else in an encoder is refused with a :class:`~genesis.errors.ConfigError`.

:func:`encoder_view` gives the encoder stages and decoder of the networks SparK supports: the
Models Genesis U-Nets (``unet3d``, ``unet2d``) and nnU-Net's PlainConvUNet / ResidualEncoderUNet
(``nnunet``, behind its intensity map, or bare).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from genesis.errors import ConfigError


# ------------------------------------------------------------------------------------ the mask
class SparseContext:
    """The visible positions of the current forward pass at the coarsest resolution (None: dense).

    ``keep`` is (B, *grid) bool, True where visible; :meth:`at` gives it at any finer resolution
    whose sides are multiples of the grid (nearest upsampling), cached for the pass.
    """

    def __init__(self) -> None:
        self.keep: torch.Tensor | None = None
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}

    @contextmanager
    def active(self, keep: torch.Tensor) -> Iterator[None]:
        """Run the encoder sparsely with visible positions ``keep`` (B, *grid) inside the block."""
        keep = keep.bool()
        counts = keep.flatten(1).sum(1)
        if bool((counts != counts[:1]).any()):  # sparse instance norm relies on it
            raise ValueError(f"every sample needs the same number of visible positions, got {counts.tolist()}")
        self.keep, self._cache = keep, {}
        try:
            yield
        finally:
            self.keep, self._cache = None, {}

    def at(self, x: torch.Tensor) -> torch.Tensor | None:
        """``keep`` at the spatial size of ``x`` (B, 1, *sides) bool, or None when no mask is active."""
        if self.keep is None:
            return None
        sides = tuple(int(s) for s in x.shape[2:])
        if sides not in self._cache:
            self._cache[sides] = upsample_grid(self.keep, sides)
        return self._cache[sides]


def upsample_grid(grid: torch.Tensor, sides: Sequence[int]) -> torch.Tensor:
    """A (B, *grid) mask (or per-patch values) repeated to (B, 1, *sides); each side a multiple of the grid's."""
    b, *g = grid.shape
    if len(g) != len(sides) or any(s % n for s, n in zip(sides, g)):
        raise ValueError(f"a mask grid {tuple(g)} cannot be upsampled to {tuple(sides)} (sides must be multiples)")
    # one repeat_interleave per axis: 0.040 ms/sample for a bool (2, 4, 4) grid to (32, 64, 64) on
    # one CPU thread, against 0.085 for a single expand + reshape copy (measured at batch 6 and 32)
    out = grid.unsqueeze(1)
    for axis, (n, s) in enumerate(zip(g, sides)):
        if s != n:
            out = out.repeat_interleave(s // n, dim=2 + axis)
    return out


# --------------------------------------------------------------------------- sparse normalisation
def _visible_rows(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels-last view of ``x`` and its visible positions as rows (N, C)."""
    last = x.movedim(1, -1)
    return last, last[keep[:, 0]]


def _scatter_rows(last: torch.Tensor, keep: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows written back at the visible positions of a zero tensor shaped like ``last``, channels first."""
    out = last.new_zeros(last.shape).index_put((keep[:, 0],), rows.to(last.dtype))
    return out.movedim(-1, 1)


class _SparseNorm:
    """Mixin of the sparse normalisation classes; ``_sparse_context`` is set by :func:`sparsify`.

    Without an active mask the layer is the plain torch layer; with one, :meth:`_sparse_forward`
    normalises the visible positions only.
    """

    _sparse_context: SparseContext

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self._sparse_context.at(x)
        if keep is None:
            return super().forward(x)  # type: ignore[misc]
        return self._sparse_forward(x, keep)

    def _sparse_forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class _SparseBatchNorm(_SparseNorm):
    def _sparse_forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        bn: nn.modules.batchnorm._BatchNorm = self  # type: ignore[assignment]
        # running-statistics bookkeeping exactly as torch's _BatchNorm.forward
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
        track = not bn.training or bn.track_running_stats
        last, rows = _visible_rows(x, keep)
        rows = F.batch_norm(rows, bn.running_mean if track else None, bn.running_var if track else None,
                            bn.weight, bn.bias, use_batch, factor, bn.eps)
        return _scatter_rows(last, keep, rows)


class _SparseInstanceNorm(_SparseNorm):
    def _sparse_forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        norm: nn.modules.instancenorm._InstanceNorm = self  # type: ignore[assignment]
        b, c = x.shape[:2]
        last, rows = _visible_rows(x, keep)
        # every sample has the same number of visible positions (the mask ratio is exact), so the
        # rows of one sample are contiguous and of equal count: (B, C, L) for instance norm
        per_sample = rows.reshape(b, -1, c).transpose(1, 2)
        out = F.instance_norm(per_sample, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                              norm.training or not norm.track_running_stats, norm.momentum or 0.0, norm.eps)
        return _scatter_rows(last, keep, out.transpose(1, 2).reshape(-1, c))


class SparseBatchNorm2d(_SparseBatchNorm, nn.BatchNorm2d):
    """BatchNorm2d with statistics over visible positions while a mask is active."""


class SparseBatchNorm3d(_SparseBatchNorm, nn.BatchNorm3d):
    """BatchNorm3d with statistics over visible positions while a mask is active."""


class SparseInstanceNorm2d(_SparseInstanceNorm, nn.InstanceNorm2d):
    """InstanceNorm2d with statistics over visible positions while a mask is active."""


class SparseInstanceNorm3d(_SparseInstanceNorm, nn.InstanceNorm3d):
    """InstanceNorm3d with statistics over visible positions while a mask is active."""


#: dense class -> its sparse subclass (same parameters and buffers)
SPARSE_NORMS: dict[type, type] = {
    nn.BatchNorm2d: SparseBatchNorm2d, nn.BatchNorm3d: SparseBatchNorm3d,
    nn.InstanceNorm2d: SparseInstanceNorm2d, nn.InstanceNorm3d: SparseInstanceNorm3d,
}
#: layers whose output is re-masked by a hook
_MASKED_OUTPUT = (nn.Conv2d, nn.Conv3d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool2d, nn.AvgPool3d)
#: layers that map zero to zero (masked positions stay zero through them)
_ZERO_PRESERVING = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.PReLU, nn.Identity,
                    nn.Dropout, nn.Dropout2d, nn.Dropout3d)


def _remask(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    """Forward hook: the output with the masked positions set to zero while a mask is active."""
    keep = module._sparse_context.at(output)
    return output if keep is None else output * keep.to(output.dtype)


def sparse_norm(norm: nn.Module, context: SparseContext) -> nn.Module:
    """Make ``norm`` (a batch or instance norm) sparse in place and return it."""
    cls = SPARSE_NORMS.get(type(norm))
    if cls is None and type(norm) not in SPARSE_NORMS.values():
        raise ConfigError(f"SparK: no sparse form of {type(norm).__name__}; supported: "
                          f"{', '.join(c.__name__ for c in SPARSE_NORMS)}")
    if cls is not None:
        norm.__class__ = cls
    norm._sparse_context = context  # a plain attribute: not a parameter, buffer or state-dict entry
    return norm


def sparsify(modules: Sequence[nn.Module], context: SparseContext) -> list[torch.utils.hooks.RemovableHandle]:
    """Give every layer of ``modules`` sparse semantics under ``context`` (see the module docstring).

    Returns the forward-hook handles (``handle.remove()`` undoes the re-masking of conv outputs).

    Raises:
        ConfigError: a layer that is neither a convolution, pooling, batch/instance norm nor
            zero-preserving (its output at masked positions would not stay zero).
    """

    handles = []
    for root in modules:
        for name, layer in root.named_modules():
            if any(True for _ in layer.children()):
                continue  # containers: their leaves are handled
            if isinstance(layer, _MASKED_OUTPUT):
                layer._sparse_context = context  # read by the hook (a deep copy of the module keeps it consistent)
                handles.append(layer.register_forward_hook(_remask))
            elif type(layer) in SPARSE_NORMS or isinstance(layer, _SparseNorm):
                sparse_norm(layer, context)
            elif not isinstance(layer, _ZERO_PRESERVING):
                raise ConfigError(f"SparK: encoder layer {name or type(root).__name__} ({type(layer).__name__}) has no "
                                  "sparse form; supported: convolutions, pooling, batch/instance norm, activations")
    return handles


# ------------------------------------------------------------------------------- encoder views
class EncoderView:
    """How SparK runs a network's encoder and decoder (holds the network; no parameters of its own).

    Attributes:
        net: the network.
        encoder_modules: the modules whose layers get sparse semantics.
        channels: channels of each encoder feature, finest first.
        stride: total downsampling of the coarsest feature per axis (the mask patch).
        spatial_dims: 2 or 3.
        norm: the encoder's normalisation (``"batch"`` or ``"instance"``; SparK's densifying norms follow it).
    """

    net: nn.Module
    encoder_modules: list[nn.Module]
    channels: list[int]
    stride: tuple[int, ...]
    spatial_dims: int

    @property
    def norm(self) -> str:
        for root in self.encoder_modules:
            for layer in root.modules():
                if isinstance(layer, nn.modules.instancenorm._InstanceNorm):
                    return "instance"
        return "batch"

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The method's [0, 1] input as the encoder takes it."""
        return x

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        """Encoder features, finest first."""
        raise NotImplementedError

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        """The network's output from (densified) encoder features."""
        raise NotImplementedError


class GenesisUNetView(EncoderView):
    """The Models Genesis U-Nets: ``encode`` gives the three skips and the bottom (stride 8)."""

    def __init__(self, net: nn.Module) -> None:
        if getattr(net, "bn_batch_stats_in_eval", False):  # that switch bypasses the norms' forward
            raise ConfigError("SparK: bn_batch_stats_in_eval (the reference batch-norm defect) has no sparse form; "
                              "leave it off")
        self.net = net
        self.encoder_modules = [getattr(net, name) for name in net.encoder_state_prefixes]
        w = int(net.base_width)
        self.channels = [2 * w, 4 * w, 8 * w, 16 * w]
        self.spatial_dims = int(net.spatial_dims)
        self.stride = (int(net.size_multiple),) * self.spatial_dims

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.net.encode(x)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.net.decode(features)


class NNUNetView(EncoderView):
    """nnU-Net's PlainConvUNet / ResidualEncoderUNet (``dynamic_network_architectures``), bare or behind
    genesis' ``nnunet`` intensity map (``wrapper``)."""

    def __init__(self, network: nn.Module, wrapper: nn.Module | None = None) -> None:
        self.net = network
        self.wrapper = wrapper
        encoder = network.encoder
        if not getattr(encoder, "return_skips", True):
            raise ConfigError("SparK: the nnU-Net encoder does not return its skips")
        self.encoder_modules = [encoder]
        self.spatial_dims = 3 if encoder.conv_op is nn.Conv3d else 2
        strides = [tuple(int(v) for v in s) if isinstance(s, (list, tuple)) else (int(s),) * self.spatial_dims
                   for s in encoder.strides]
        self.stride = tuple(math.prod(s[a] for s in strides) for a in range(self.spatial_dims))
        self.channels = [int(c) for c in encoder.output_channels]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        w = self.wrapper
        return x if w is None else x * w.input_scale.to(x.dtype) + w.input_low.to(x.dtype)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net.encoder(x))

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.net.decoder(features)
        return out[0] if isinstance(out, (list, tuple)) else out


def encoder_view(net: nn.Module) -> EncoderView:
    """The :class:`EncoderView` of a network SparK supports.

    Raises:
        ConfigError: a network without a CNN encoder SparK can run (a ViT, an encoder-only net...).
    """
    if hasattr(net, "encoder_state_prefixes") and hasattr(net, "encode") and getattr(net, "has_decoder", False):
        return GenesisUNetView(net)
    inner = getattr(net, "network", None)
    if inner is not None and hasattr(inner, "encoder") and hasattr(inner, "decoder") and hasattr(net, "input_scale"):
        return NNUNetView(inner, net)
    if hasattr(net, "encoder") and hasattr(net, "decoder") and hasattr(net.encoder, "strides"):
        return NNUNetView(net)
    raise ConfigError(f"SparK needs a U-Net-like CNN (unet3d, unet2d, nnunet's PlainConvUNet / ResidualEncoderUNet); "
                      f"{type(net).__name__} has no encoder it can run sparsely (for a ViT use --task mae or simmim)")
