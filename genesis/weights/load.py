"""Load released or trained weights into a network: ``load_weights(model, path_or_name)``.

Reads our checkpoints (``.pt`` via :func:`genesis.training.checkpoint.load_checkpoint`, which
never unpickles code, and ``.safetensors``), the official Models Genesis ``Genesis_Chest_CT.pt``
and ``Genesis_Chest_CT.h5`` (converted to our (z, y, x) layout, see :mod:`genesis.weights.convert`)
and plain state dicts (torchvision, MedicalNet). Shape mismatches are reported, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import torch
from torch import nn

from genesis.errors import CheckpointError
from genesis.checkpoint import load_checkpoint
from genesis.weights.convert import (
    convert_keras_h5,
    convert_official_pt,
    looks_like_official_genesis,
    rename_legacy_densenet_keys,
    reverse_spatial_axes,
    strip_prefix,
)
from genesis.weights.manifest import NAME_PATTERN, WeightsSettings

Part = Literal["full", "encoder"]
Layout = Literal["auto", "zyx", "xyz"]
DEFAULT_ENCODER_PREFIXES = ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
_BOOKKEEPING = ("num_batches_tracked",)
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin", ".safetensors", ".h5", ".hdf5", ".keras")


@dataclass
class LoadReport:
    """What :func:`load_weights` did.

    Attributes:
        missing: target parameters/buffers (within the loaded part) the source did not provide.
        unexpected: source tensors with no counterpart in the target.
        loaded: names that were copied.
        source: the file (and registry name) the weights came from.
        mismatched: ``(name, source shape, target shape)`` of tensors skipped for their shape.
        target: ``"model"`` or ``"model.backbone"``.
        converted: the conversion applied (e.g. ``"official-genesis-pt (x,y,z) -> (z,y,x)"``), or ``""``.
        inflated: 2D kernels loaded into 3D layers by inflation (see :func:`inflate_kernel`).
        method_only: tensors of a pretraining checkpoint that belong to its method only (heads,
            projectors, decoders of masked image modelling, an EMA teacher): never transferred.
    """

    missing: list[str]
    unexpected: list[str]
    loaded: list[str]
    source: str
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    target: str = "model"
    converted: str = ""
    inflated: list[str] = field(default_factory=list)
    method_only: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        text = (f"loaded {len(self.loaded)} tensors into {self.target} from {self.source}; "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} shape mismatches")
        text += f"; {len(self.inflated)} 2D kernels inflated to 3D" if self.inflated else ""
        text += (f"; {len(self.method_only)} tensors of the pretraining method's own heads left out"
                 if self.method_only else "")
        return text + (f" ({self.converted})" if self.converted else "")


def inflate_kernel(kernel: torch.Tensor, depth: int, transposed: bool) -> torch.Tensor:
    """A 2D kernel (out, in, kh, kw) repeated along a new depth axis: (out, in, depth, kh, kw).

    The I3D inflation (Carreira and Zisserman, 2017): a convolution is divided by ``depth`` so the
    3D layer gives the 2D layer's response on a volume that is constant along z; a stride-``depth``
    transposed convolution is not divided, since each output slice receives one input slice.
    A 2D pretraining run (e.g. Tariq et al.'s slice tasks on ``unet2d``) thus initialises a 3D U-Net.
    """
    inflated = kernel.unsqueeze(2).repeat(1, 1, depth, 1, 1)
    return inflated if transposed else inflated / depth


@dataclass
class SourceState:
    """A state dict in our layout and how it was obtained."""

    state: dict[str, torch.Tensor]
    converted: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


def _tensors(mapping: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in mapping.items() if isinstance(v, torch.Tensor)}


def read_state(path: str | Path, fmt: str | None = None, layout: Layout = "auto", bn_eps: float = 1e-5) -> SourceState:
    """Read a weights file into a state dict in our (z, y, x) layout.

    Args:
        path: ``.pt``/``.pth``/``.ckpt``/``.tar`` (torch), ``.safetensors`` or ``.h5``/``.hdf5`` (Keras).
        fmt: manifest ``format`` when known (else guessed from the file).
        layout: ``"xyz"`` forces the official-release axis conversion, ``"zyx"`` forbids it,
            ``"auto"`` converts the official Models Genesis files only.
        bn_eps: batch-norm epsilon of the target (Keras epsilon is folded into the variance).

    Raises:
        CheckpointError: unreadable, unsafe (needs pickled code) or without a state dict.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CheckpointError("weights file not found", path)
    if fmt == "keras-genesis-h5" or suffix in (".h5", ".hdf5"):
        state = convert_keras_h5(path, bn_eps=bn_eps)
        return SourceState(state, "keras-genesis-h5 (x,y,z) -> (z,y,x)")
    if suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
        stored = metadata.get("layout", "zyx")
        if layout == "xyz" or (layout == "auto" and stored == "xyz"):
            return SourceState(reverse_spatial_axes(state), "(x,y,z) -> (z,y,x)", metadata)
        return SourceState(state, "", metadata)
    obj = load_checkpoint(path)
    official = fmt == "official-genesis-pt" or (
        fmt is None and isinstance(obj.get("state_dict"), Mapping) and looks_like_official_genesis(obj["state_dict"])
    )
    if (official and layout != "zyx") or layout == "xyz":
        inner = obj.get("state_dict", obj.get("model", obj))
        return SourceState(convert_official_pt({"state_dict": inner}), "official-genesis-pt (x,y,z) -> (z,y,x)")
    if isinstance(obj.get("model"), Mapping):  # our checkpoints: {"model": state_dict, "config": ...}
        meta = {"config": obj.get("config"), "epoch": obj.get("epoch")}
        state = _tensors(obj["model"])
        if "parts" in obj or "model_name" in obj:  # a pretraining run: its method's heads are not the backbone
            from genesis.checkpoint import checkpoint_parts, pretrained_backbone

            parts = checkpoint_parts(obj)
            meta["parts"] = parts
            meta["method_only"] = pretrained_backbone(obj)[3] if parts.get("heads") or parts.get("teacher") else []
            if parts.get("backbone") == "" and meta["method_only"]:
                state = {k: v for k, v in state.items() if k not in set(meta["method_only"])}
        return SourceState(state, "", meta)
    if isinstance(obj.get("model_state"), Mapping):  # PyTorchVideo model zoo (.pyth), PENet (.pth.tar)
        return SourceState(_tensors(strip_prefix(obj["model_state"])), "")
    if isinstance(obj.get("state_dict"), Mapping):  # MedicalNet and other DataParallel dumps
        return SourceState(_tensors(strip_prefix(obj["state_dict"])), "")
    state = rename_legacy_densenet_keys(_tensors(obj))  # torchvision's densenet files use old names
    if not state:
        raise CheckpointError(f"no state dict found (top-level keys: {sorted(obj)[:10]})", path)
    return SourceState(state, "")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file: {exc}", path) from None
    return state, metadata


def _first_bn_eps(module: nn.Module) -> float:
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            return float(sub.eps)
    return 1e-5


def _inflatable(source: torch.Tensor, target: torch.Tensor) -> bool:
    """A 2D conv kernel whose 3D counterpart only adds a depth axis."""
    return (source.dim() == 4 and target.dim() == 5
            and tuple(source.shape) == tuple(target.shape[:2]) + tuple(target.shape[3:]))


def _check_dtypes(state: dict[str, torch.Tensor], target_state: dict[str, torch.Tensor], file: Path) -> None:
    """Refuse tensors whose kind cannot be the target's: integer or boolean values for float
    weights (int8-quantised or mislabelled files would load "with 0 shape mismatches" and train
    from garbage), floats for integer buffers, and non-finite float weights.

    Float precisions (fp16/bf16/fp64) are fine: ``load_state_dict`` converts them.

    Raises:
        CheckpointError: naming up to five offending tensors and their dtypes.
    """
    wrong, nonfinite = [], []
    for key, value in state.items():
        want = target_state.get(key)
        if want is None or not isinstance(value, torch.Tensor):
            continue
        if value.is_complex() or value.is_floating_point() != want.is_floating_point() or (
                value.dtype == torch.bool) != (want.dtype == torch.bool):
            wrong.append(f"{key}: {str(value.dtype).removeprefix('torch.')} vs {str(want.dtype).removeprefix('torch.')}")
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            nonfinite.append(key)
    if wrong:
        raise CheckpointError(f"refused: {len(wrong)} tensors have the wrong dtype for this model "
                              f"({', '.join(wrong[:5])}{' ...' if len(wrong) > 5 else ''})", file)
    if nonfinite:
        raise CheckpointError(f"refused: {len(nonfinite)} tensors hold NaN or infinite values "
                              f"({', '.join(nonfinite[:5])}{' ...' if len(nonfinite) > 5 else ''})", file)


def _in_prefixes(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def resolve_source(path_or_name: str | Path, settings: WeightsSettings | None) -> tuple[Path, str | None, str]:
    """A file path (when it exists) or a registry name -> (file, manifest format, description)."""
    path = Path(path_or_name)
    if path.is_file():
        return path, None, str(path)
    name = str(path_or_name)
    settings = WeightsSettings.from_env() if settings is None else settings
    registry = settings.registry()
    looks_like_name = NAME_PATTERN.match(name) is not None and path.suffix.lower() not in WEIGHT_FILE_SUFFIXES
    if name in registry or looks_like_name:
        from genesis.weights.download import download

        entry = registry.get(name)  # UnknownNameError lists the names
        file = download(entry, settings)
        return file, entry.format, f"{name} ({file})"
    raise CheckpointError("weights file not found (and not a registered weights name)", path)


def load_weights(
    model: nn.Module,
    path_or_name: str | Path,
    part: Part = "full",
    strict: bool = False,
    *,
    layout: Layout = "auto",
    settings: WeightsSettings | None = None,
) -> LoadReport:
    """Load weights from a file or a registered name into ``model``.

    A model with a ``.backbone`` (a classifier around a U-Net encoder) receives encoder weights in
    its backbone, unless the source itself has ``backbone.`` keys (a saved classifier) and
    ``part="full"``. The encoder of a saved classifier loads into a plain U-Net (or another
    classifier's backbone) with the ``backbone.`` prefix stripped.
    ``part="encoder"`` loads only ``model.encoder_state_prefixes`` (``down_tr64`` ... ``down_tr512``).

    Args:
        model: the target network.
        path_or_name: a weights file or a registry name such as ``unet3d.genesis_chest_ct``.
        part: ``"full"`` or ``"encoder"``.
        strict: raise instead of reporting missing, unexpected or mismatched tensors.
        layout: see :func:`read_state`.
        settings: cache/registry/offline settings (default: from the environment).

    Returns:
        A :class:`LoadReport`.

    Raises:
        CheckpointError: unreadable/unsafe file, or (``strict``) an incomplete match.
        WeightsError, ChecksumError, UnknownNameError: registry/download problems.
    """
    if part not in ("full", "encoder"):
        raise ValueError(f"part must be 'full' or 'encoder', got {part!r}")
    file, fmt, description = resolve_source(path_or_name, settings)
    target, target_name = model, "model"
    backbone = getattr(model, "backbone", None)
    source = read_state(file, fmt=fmt, layout=layout, bn_eps=_first_bn_eps(model))
    state = source.state
    method_only = list(source.metadata.get("method_only") or [])
    has_backbone_keys = any(k.startswith("backbone.") for k in state)
    if method_only and has_backbone_keys and part == "full" and set(state) != set(model.state_dict()):
        part = "backbone"  # another network than the method's module: its backbone, not the heads
    if part == "backbone":
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        part = "full" if not isinstance(backbone, nn.Module) else "encoder"
        if isinstance(backbone, nn.Module):
            target, target_name = backbone, "model.backbone"
    elif has_backbone_keys and (part == "encoder" or not isinstance(backbone, nn.Module)):
        # A saved classifier (e.g. a rotation/flip pretraining run): its encoder is under backbone.
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        part = "encoder"
        if isinstance(backbone, nn.Module):
            target, target_name = backbone, "model.backbone"
    elif isinstance(backbone, nn.Module) and not has_backbone_keys:
        target, target_name, part = backbone, "model.backbone", "encoder"
    if part == "encoder":
        prefixes = tuple(getattr(target, "encoder_state_prefixes", DEFAULT_ENCODER_PREFIXES))
        state = {k: v for k, v in state.items() if _in_prefixes(k, prefixes)}
        if not state:
            raise CheckpointError(f"no encoder weights ({', '.join(prefixes)}) in this file", file)
    target_state = target.state_dict()
    _check_dtypes(state, target_state, file)
    loaded, unexpected, mismatched = [], [], []
    to_load: dict[str, torch.Tensor] = {}
    inflated: list[str] = []
    for key, value in state.items():
        if key in target_state and _inflatable(value, target_state[key]):
            layer = target.get_submodule(key.rsplit(".", 1)[0])
            value = inflate_kernel(value, target_state[key].shape[2], isinstance(layer, nn.ConvTranspose3d))
            inflated.append(key)
        if key not in target_state:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(target_state[key].shape):
            mismatched.append((key, tuple(value.shape), tuple(target_state[key].shape)))
        else:
            to_load[key] = value
            loaded.append(key)
    wanted = [k for k in target_state if part == "full" or _in_prefixes(k, prefixes)]
    missing = [k for k in wanted if k not in to_load and not k.endswith(_BOOKKEEPING)]
    report = LoadReport(
        missing=missing, unexpected=unexpected, loaded=loaded, source=description,
        mismatched=mismatched, target=target_name, converted=source.converted, inflated=inflated,
        method_only=method_only,
    )
    if strict and not report.ok:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            details.append("shape mismatches " + ", ".join(f"{k}: {a} vs {b}" for k, a, b in mismatched[:5]))
        raise CheckpointError("weights do not fit the model: " + "; ".join(details), file)
    target.load_state_dict(to_load, strict=False)
    return report
