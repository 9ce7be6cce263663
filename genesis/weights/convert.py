"""Converters from the official Models Genesis releases to our parameter layout.

Axis order: the official release was trained on arrays ordered (x, y, z) (64 x 64 x 32 cubes,
LUNA16 arrays transposed from SimpleITK's (z, y, x)). Our arrays are (z, y, x). A convolution
kernel whose spatial axes are (x, y, z) computes on an (x, y, z) volume exactly what the same
kernel with its spatial axes reversed computes on the (z, y, x) volume (max-pooling, nearest
upsampling, batch norm and 1x1 convolutions do not care). So converting reverses the three
spatial axes of every 3D (transposed) convolution kernel, and our network then computes the
official function on our layout: ``ours(v.transpose) == official(v).transpose``.

Keras (``Genesis_Chest_CT.h5``, Zhou et al. 2019, ``keras/unet3d.py`` of MrGiovanni/ModelsGenesis):
layers ``depth_{0..13}_{conv,bn,relu}`` (two conv units per level: 0-7 encoder, 8-13 decoder),
then one unnamed 1x1x1 ``Conv3D``. ``Conv3D`` kernels are stored (k1, k2, k3, in, out) over
(x, y, z); batch norm as gamma, beta, moving_mean, moving_variance with Keras' epsilon 1e-3.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from genesis.errors import CheckpointError

#: our parameter prefix of Keras conv unit ``depth_<i>`` (encoder levels, then decoder levels).
KERAS_UNITS = tuple(
    f"{level}.ops.{unit}"
    for level in ("down_tr64", "down_tr128", "down_tr256", "down_tr512", "up_tr256", "up_tr128", "up_tr64")
    for unit in (0, 1)
)
KERAS_BN_EPSILON = 1e-3
_DECODER_UP = ("up_tr256.up_conv", "up_tr128.up_conv", "up_tr64.up_conv")


def reverse_spatial_axes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reverse the spatial axes of every 3D (transposed) convolution kernel: (x, y, z) <-> (z, y, x).

    Conv3d weights are (out, in, k1, k2, k3) and ConvTranspose3d weights (in, out, k1, k2, k3);
    both become (., ., k3, k2, k1). Other tensors are returned unchanged.
    """
    return {
        key: value.permute(0, 1, 4, 3, 2).contiguous() if value.dim() == 5 and key.endswith("weight") else value
        for key, value in state.items()
    }


def strip_prefix(state: Mapping[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop a ``DataParallel``-style prefix from every key that has it."""
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}


#: torchvision's DenseNet checkpoints predate its module names: ``denselayer1.norm.1`` is ``norm1``.
_LEGACY_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def rename_legacy_densenet_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """``features.denseblock1.denselayer1.norm.1.weight`` -> ``...denselayer1.norm1.weight``, as
    torchvision's ``densenet._load_state_dict`` does; other keys are returned unchanged."""
    out = {}
    for key, value in state.items():
        match = _LEGACY_DENSENET.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def looks_like_official_genesis(state: Mapping[str, Any]) -> bool:
    """True for the key set of the official PyTorch U-Net (``[module.]down_tr64.ops.0.conv1.weight`` ...)."""
    return any(re.match(r"^(module\.)?down_tr64\.ops\.0\.conv1\.weight$", key) for key in state)


def convert_official_pt(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``Genesis_Chest_CT.pt`` content (``{"state_dict": {"module.down_tr64...": ...}}``) -> our state dict."""
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping):
        raise CheckpointError("official Models Genesis checkpoint without a state_dict mapping")
    tensors = {k: v for k, v in strip_prefix(state).items() if isinstance(v, torch.Tensor)}
    return reverse_spatial_axes(tensors)


# --------------------------------------------------------------------------------------- Keras
def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _weight_kind(weight_name: str) -> str:
    """``depth_0_conv/kernel:0`` -> ``kernel`` (also Keras 1's ``W``/``b`` names)."""
    base = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
    aliases = {"W": "kernel", "b": "bias", "running_mean": "moving_mean", "running_var": "moving_variance"}
    for suffix in ("moving_variance", "moving_mean", "kernel", "bias", "gamma", "beta"):
        if base == suffix or base.endswith("_" + suffix):
            return suffix
    return aliases.get(base.rsplit("_", 1)[-1], base)


def _keras_layers(handle: Any) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(layer name, {kind: array}) for every layer with weights, in the file's layer order."""
    root = handle["model_weights"] if "model_weights" in handle else handle
    names = [_text(n) for n in root.attrs["layer_names"]] if "layer_names" in root.attrs else list(root.keys())
    layers = []
    for name in names:
        if name not in root:
            continue
        group = root[name]
        if not hasattr(group, "visititems"):  # a dataset at the top level: not a Keras layer group
            continue
        if "weight_names" in group.attrs:
            weight_names = [_text(n) for n in group.attrs["weight_names"]]
        else:  # walk the group (files written without the attribute)
            weight_names = []
            group.visititems(lambda n, obj: weight_names.append(n) if hasattr(obj, "shape") else None)
        arrays = {_weight_kind(w): np.asarray(group[w]) for w in weight_names}
        if arrays:
            layers.append((name, arrays))
    return layers


#: Largest Keras weights file we read: the Models Genesis U-Net is about 80 MB (19 M float32).
MAX_KERAS_WEIGHTS_BYTES = 4 << 30


def _check_declared_sizes(handle: Any, path: Path) -> None:
    """Refuse datasets whose declared sizes add up to more than a U-Net could need (or than memory
    holds) before any is read: a chunked HDF5 dataset of 1 TB takes a few KB on disk."""
    from genesis.io.integrity import check_declared_arrays

    declared: dict[str, tuple[Any, Any]] = {}
    handle.visititems(lambda name, obj: declared.__setitem__(name, (obj.shape, obj.dtype)) if hasattr(obj, "dtype") else None)
    check_declared_arrays(declared, path, "weights", limit=MAX_KERAS_WEIGHTS_BYTES, error=CheckpointError)


def _keras_bn_epsilon(handle: Any) -> dict[str, float]:
    """Per-layer batch-norm epsilon from the stored model config (full-model files only)."""
    config = handle.attrs.get("model_config")
    if config is None:
        return {}
    try:
        layers = json.loads(_text(config))["config"]["layers"]
    except (ValueError, KeyError, TypeError):
        return {}
    return {
        layer["config"]["name"]: float(layer["config"].get("epsilon", KERAS_BN_EPSILON))
        for layer in layers
        if isinstance(layer, dict) and layer.get("class_name") == "BatchNormalization"
    }


def convert_keras_h5(path: str | Path, bn_eps: float = 1e-5) -> dict[str, torch.Tensor]:
    """Read a Models Genesis Keras ``.h5`` (full model or weights only) into our state dict.

    The result loads into ``UNet3D(up_mode="upsample")`` at the file's width (the converter does
    not assume width 32). Keras normalises with ``sqrt(var + 1e-3)``; to reproduce it exactly in
    eval mode with our batch norm epsilon ``bn_eps``, ``1e-3 - bn_eps`` is folded into the
    running variance.

    Raises:
        CheckpointError: unreadable file or a layer layout that is not the Models Genesis U-Net.
    """
    import h5py

    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(f"cannot read Keras HDF5 file: {exc}", path) from None
    with handle:
        _check_declared_sizes(handle, path)
        try:
            layers = _keras_layers(handle)
            epsilons = _keras_bn_epsilon(handle)
        except (KeyError, ValueError, OSError) as exc:
            raise CheckpointError(f"unreadable Keras weights: {exc}", path) from None
    state: dict[str, torch.Tensor] = {}
    extra_convs: list[tuple[str, dict[str, np.ndarray]]] = []
    for name, arrays in layers:
        match = re.fullmatch(r"depth_(\d+)_(conv|bn)", name)
        if match is None:
            if "kernel" in arrays:
                extra_convs.append((name, arrays))
            continue
        index, kind = int(match.group(1)), match.group(2)
        if index >= len(KERAS_UNITS):
            raise CheckpointError(f"Keras layer {name} is beyond the 14 conv units of the U-Net", path)
        unit = KERAS_UNITS[index]
        if kind == "conv":
            state[f"{unit}.conv1.weight"] = _keras_kernel(arrays, name, path)
            if "bias" in arrays:
                state[f"{unit}.conv1.bias"] = torch.from_numpy(arrays["bias"].astype(np.float32))
        else:
            state.update(_keras_bn(arrays, f"{unit}.bn1", epsilons.get(name, KERAS_BN_EPSILON), bn_eps, name, path))
    if not state:
        raise CheckpointError("no 'depth_<i>_conv' layers: not a Models Genesis Keras file", path)
    # Unnamed layers: UpSampling3D has no weights; Deconvolution3D (deconvolution=True) layers come
    # before the final 1x1x1 convolution, one per decoder level.
    *ups, final = extra_convs if extra_convs else [None]
    if final is not None:
        state["out_tr.final_conv.weight"] = _keras_kernel(final[1], final[0], path)
        if "bias" in final[1]:
            state["out_tr.final_conv.bias"] = torch.from_numpy(final[1]["bias"].astype(np.float32))
    if ups and len(ups) != len(_DECODER_UP):
        raise CheckpointError(f"unexpected unnamed layers {[u[0] for u in ups]} in a Models Genesis Keras file", path)
    for prefix, (name, arrays) in zip(_DECODER_UP, ups):
        # Conv3DTranspose kernels are (k1, k2, k3, out, in); ours (in, out, k3, k2, k1).
        state[f"{prefix}.weight"] = _keras_kernel(arrays, name, path)
        if "bias" in arrays:
            state[f"{prefix}.bias"] = torch.from_numpy(arrays["bias"].astype(np.float32))
    return state


def _keras_kernel(arrays: Mapping[str, np.ndarray], name: str, path: Path) -> torch.Tensor:
    kernel = arrays.get("kernel")
    if kernel is None or kernel.ndim != 5:
        raise CheckpointError(f"Keras layer {name} has no 5D kernel", path)
    # (kx, ky, kz, in, out) -> (out, in, kz, ky, kx): channels first, spatial axes reversed to (z, y, x).
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(4, 3, 2, 1, 0)).astype(np.float32))


def _keras_bn(
    arrays: Mapping[str, np.ndarray], prefix: str, keras_eps: float, bn_eps: float, name: str, path: Path
) -> dict[str, torch.Tensor]:
    try:
        mean, var = arrays["moving_mean"], arrays["moving_variance"]
    except KeyError:
        raise CheckpointError(f"Keras batch norm {name} lacks moving_mean/moving_variance", path) from None
    gamma = arrays.get("gamma", np.ones_like(mean))  # scale=False / center=False layers store none
    beta = arrays.get("beta", np.zeros_like(mean))
    var = np.maximum(var.astype(np.float64) + keras_eps - bn_eps, 0.0)
    as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    return {
        f"{prefix}.weight": as_tensor(gamma),
        f"{prefix}.bias": as_tensor(beta),
        f"{prefix}.running_mean": as_tensor(mean),
        f"{prefix}.running_var": as_tensor(var),
    }
