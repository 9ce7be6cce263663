"""Which network a fine-tuning run trains: the Models Genesis U-Net or a baseline classifier.

Ke et al. 2023 (methods digest section 7) compare pretrained 3D networks with video-pretrained 3D
networks (Kinetics-400 ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``, ``mvit_v2_s``, ``swin3d_t``
(torchvision layout), ``slow_r50``, ``slowfast_r50``, ``r2plus1d_r50``, ``csn_r101`` (PyTorchVideo
layout) and ``penet``), ImageNet 2D networks applied to
windows of slices (``resnet18/34/50``, ``resnext101_32x8d``; ``lrcn`` adds a GRU over the slices)
and MedicalNet (``resnet18_3d``, ``resnet50_3d``). Any registered network with ``forward_features``
and ``replace_head`` serves classification targets (``ncc``, ``ecc``, ``pe``); segmentation targets
keep the 3D U-Net.

The network is ``cfg.model``; when that is ``None`` it is the architecture the weights were made
for (a registered name's manifest ``architecture``, or the ``model_name`` stored in one of our
checkpoints), else ``unet3d``. So ``genesis-finetune --target pe --weights r3d_18.kinetics400``
fine-tunes R3D-18. Nothing here downloads: registered names are resolved from the manifests only.

Baselines read the targets' 1-channel crops in [0, 1]: grey is repeated to RGB and, by default
(``normalize=True``), the input statistics the released weights expect are applied (the
Kinetics/ImageNet mean and s.d.; MedicalNet's per-volume z-score), with or without weights so a
random-init baseline differs from its pretrained counterpart only in the weights. Crops must be at
least the network's downsampling factor on every axis (e.g. R3D-18: 8 x 16 x 16, 2D ResNets:
1 x 32 x 32, MedicalNet: 32 x 32 x 32); :func:`check_crop` says so before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genesis.errors import ConfigError
from genesis.models import create_model
from genesis.models.base import MODELS

UNET = "unet3d"
#: constructor arguments of a released architecture that describe its original head, not ours
_HEAD_ARGS = ("num_classes", "feed_forward")
_PROBE = 64  # side of the meta-device probe that measures the downsampling factors


@dataclass
class ModelChoice:
    """The network of a run.

    Attributes:
        name: registered model name (``unet3d`` for the Models Genesis U-Net / its encoder).
        args: constructor arguments taken from the weights' architecture and ``cfg.model_args``
            (without the head size).
        weights_architecture: the architecture ``cfg.weights`` was made for, when known.
    """

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    weights_architecture: str | None = None

    @property
    def is_baseline(self) -> bool:
        return self.name not in (UNET, "unet2d")  # the 2D U-Net of the generic targets on 2D images


def weights_architecture(weights: str | None) -> tuple[str | None, dict[str, Any]]:
    """``(model name, constructor args)`` that ``weights`` were made for, or ``(None, {})`` if unknown.

    A registered weights name answers from its manifest; one of our checkpoints (``.pt``/``.pth``
    with ``model_name``) from what it stores (a classifier around a U-Net counts as ``unet3d``).
    Plain state dicts (e.g. a torchvision download) say nothing.
    """
    if not weights:
        return None, {}
    path = Path(weights)
    if path.is_file():
        if path.suffix not in (".pt", ".pth"):
            return None, {}
        from genesis.training.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        name = ckpt.get("model_name")
        if not isinstance(name, str):
            return None, {}
        kwargs = {k: v for k, v in dict(ckpt.get("model_kwargs") or {}).items() if k not in _HEAD_ARGS}
        if name == UNET or (name == "encoder_classifier" and kwargs.get("encoder", UNET) == UNET):
            return UNET, {}
        try:  # a fine-tuned baseline (e.g. genesis-finetune's best.pt of r3d_18)
            if name in MODELS and is_classifier(_build_on_meta(name, {**kwargs, "num_classes": 1})):
                return name, kwargs
        except ConfigError:
            pass
        # anything else (a VQ-VAE, a classifier around another encoder): the U-Net path explains
        return None, {}
    from genesis.weights.manifest import WeightsSettings

    registry = WeightsSettings.from_env().registry()
    if str(weights) not in registry:
        return None, {}  # load_weights reports the unknown name / missing file later
    arch = registry.get(str(weights)).architecture or {}
    args = {k: v for k, v in dict(arch.get("args") or {}).items() if k not in _HEAD_ARGS}
    return arch.get("name"), args


def _is_2d_backbone(name: str) -> bool:
    try:
        with torch.device("meta"):
            net = create_model(name)
    except Exception:  # noqa: BLE001 - any failure just means "not a usable 2D backbone"
        return False
    return getattr(net, "spatial_dims", None) == 2 and 5 in getattr(net, "input_ranks", ())


def resolve_model(cfg: Any, task: str) -> ModelChoice:
    """The network ``cfg`` asks for on a ``task`` (``"classification"`` or ``"segmentation"``).

    Raises:
        ConfigError: a baseline on a segmentation target, an unknown or non-classifier model, or
            weights made for another architecture.
    """
    arch, arch_args = weights_architecture(cfg.weights)
    name = cfg.model or arch or UNET
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; classification targets take {UNET} or one of "
                          f"{', '.join(classifier_names())}")
    args: dict[str, Any] = {}
    if arch is not None and arch != name:
        if name == "lrcn" and _is_2d_backbone(arch):
            args["backbone"] = arch  # ImageNet weights fill the LRCN's per-slice backbone
        else:
            raise ConfigError(f"--weights {cfg.weights} were made for {arch!r}, not for --model {name!r}; "
                              f"leave --model out to use {arch!r}")
    elif arch == name:
        args.update(arch_args)
    args.update(dict(cfg.model_args or {}))
    choice = ModelChoice(name=name, args=args, weights_architecture=arch)
    if choice.is_baseline and task == "segmentation":
        raise ConfigError(f"segmentation targets (ncs, lcs, bms) fine-tune the 3D U-Net ({UNET}), not "
                          f"{name!r}: the baselines serve classification targets (ncc, ecc, pe); leave "
                          "--model and baseline --weights out here")
    return choice


def baseline_kwargs(choice: ModelChoice, num_classes: int = 1) -> dict[str, Any]:
    """Constructor arguments of a baseline: its architecture, ``num_classes`` logits, normalised input."""
    return {"normalize": True, **choice.args, "num_classes": num_classes}


def _build_on_meta(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The network with meta tensors (no memory, no compute): shapes and API only."""
    try:
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r} cannot be built with {kwargs}: {exc}") from None


def is_classifier(model: nn.Module) -> bool:
    return callable(getattr(model, "replace_head", None)) and callable(getattr(model, "forward_features", None))


def classifier_names() -> list[str]:
    """Registered networks that fine-tune on classification targets (besides ``unet3d``)."""
    names = []
    for name in MODELS.names():
        try:
            with torch.device("meta"):
                net = create_model(name, num_classes=1)
        except Exception:  # noqa: BLE001, S112 - networks that cannot be classifiers are not listed
            continue
        if is_classifier(net) and name != "encoder_classifier":
            names.append(name)
    return names


def downsampling(model: nn.Module) -> tuple[int, int, int]:
    """How much the network shrinks (D, H, W) before its head, measured on a meta-device probe."""
    features = getattr(getattr(model, "backbone", None), "forward_features", None) or model.forward_features
    was_training = model.training
    model.eval()
    try:
        out = features(torch.empty(1, 1, _PROBE, _PROBE, _PROBE, device="meta"))
    finally:
        model.train(was_training)
    if out.dim() != 5:
        return (1, 1, 1)
    return tuple(max(1, -(-_PROBE // s)) for s in out.shape[2:])  # type: ignore[return-value]


def check_baseline(choice: ModelChoice, crop: tuple[int, int, int], target_name: str) -> tuple[int, int, int]:
    """Raise a :class:`ConfigError` if ``choice`` is no classifier or ``crop`` is below its minimum.

    Returns:
        The minimum crop (D, H, W) of the network.
    """
    kwargs = baseline_kwargs(choice)
    try:
        model = _build_on_meta(choice.name, kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; classification targets take {UNET} or a classifier: "
                          f"{', '.join(classifier_names())}") from None
    if not is_classifier(model):
        raise ConfigError(f"model {choice.name!r} is not a classifier (no forward_features/replace_head); "
                          f"classification targets take {UNET} or one of {', '.join(classifier_names())}")
    minimum = downsampling(model)
    if any(c < m for c, m in zip(crop, minimum)):
        raise ConfigError(
            f"model {choice.name!r} downsamples (D, H, W) by {minimum}, so every crop side must be at "
            f"least that; the {target_name} crop is {tuple(crop)}: use --crop {' '.join(str(max(c, m)) for c, m in zip(crop, minimum))} "
            "or larger")
    return minimum


def check_model(cfg: Any, task: str, crop: tuple[int, int, int], target_name: str) -> ModelChoice:
    """Resolve and check the network of a run, and fetch registered weights, before any data is read.

    Fetching here (into the verified cache; a no-op once cached) makes a missing download or
    offline mode fail before minutes of data preparation rather than at the first run.
    """
    choice = resolve_model(cfg, task)
    if choice.name == "unet2d" and len(crop) == 3 and target_name not in ("segmentation", "classification"):
        # the generic targets on 2D data take unet2d; they check it against their data
        raise ConfigError(f"model 'unet2d' is a 2D network; target {target_name} has 3D crops {tuple(crop)}: use "
                          f"{UNET} or a classifier ({', '.join(classifier_names())})")
    if choice.is_baseline:
        check_baseline(choice, crop, target_name)
    elif (getattr(cfg, "channels", "repeat") != "repeat" or getattr(cfg, "view", "window") != "window") \
            and not _slice_view_target(cfg, target_name):
        raise ConfigError(f"--channels / --view make RGB from grey CT for the pretrained RGB baselines; "
                          f"the {UNET} U-Net takes the grey volume itself (leave them out)")
    if cfg.weights and not Path(cfg.weights).is_file():
        from genesis.weights.load import resolve_source

        resolve_source(cfg.weights, None)  # unknown names, failed downloads: GenesisError
    return choice


def _slice_view_target(cfg: Any, target_name: str) -> bool:
    """A 3D target that takes ``--view axial|orthogonal`` with the U-Net (2D/2.5D ncs, finetune.slicewise)."""
    from finetune.targets import get_target

    return getattr(cfg, "view", "window") in getattr(get_target(target_name), "slice_views", ())


def encoder_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of the part pretrained weights fill (the rest is new)."""
    if isinstance(getattr(model, "backbone", None), nn.Module):
        return ("backbone",)
    return tuple(getattr(model, "encoder_state_prefixes", ()))


def _in_prefixes(name: str, prefixes: tuple[str, ...]) -> bool:
    # prefixes may be dotted (PyTorchVideo's "blocks.0" ... "blocks.4": the head is "blocks.5")
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def new_modules(model: nn.Module) -> list[nn.Module]:
    """Layers pretrained weights do not fill (head, GRU...): initialised by ``--init``.

    For a network with a published head (:class:`genesis.models._pretrained.PretrainedBackbone`)
    that is the head layer alone, wherever the layout keeps it; otherwise the top-level children
    outside :func:`encoder_prefixes`.
    """
    head_layer = getattr(model, "head_layer", None)
    if callable(head_layer) and not isinstance(getattr(model, "backbone", None), nn.Module):
        head = head_layer()
        return [head] if head is not None else []
    prefixes = encoder_prefixes(model)
    return [child for name, child in model.named_children() if not _in_prefixes(name, prefixes)]


def apply_input_mode(model: nn.Module, cfg: Any, name: str) -> None:
    """``cfg.channels`` / ``cfg.aggregate`` on the RGB network of a baseline (its ``backbone`` for LRCN)."""
    from finetune.targets import get_target

    net = model if callable(getattr(model, "set_input_mode", None)) else getattr(model, "backbone", None)
    channels, view = getattr(cfg, "channels", "repeat"), getattr(cfg, "view", "window")
    if not callable(getattr(net, "set_input_mode", None)) or (view != "window" and net is not model):
        if channels != "repeat" or view != "window":
            raise ConfigError(f"--channels {channels} / --view {view}: these make RGB from grey CT for the "
                              f"pretrained RGB baselines (--view: 2D ones); {name!r} does not take them")
        return
    try:
        net.set_input_mode(channels, get_target(cfg.target).hu_window(cfg), getattr(cfg, "aggregate", "max"), view)
    except ValueError as exc:
        raise ConfigError(f"model {name!r}: {exc}") from None


def build_baseline(
    choice: ModelChoice, cfg: Any, load: Any, apply_init: Any, num_classes: int = 1
) -> tuple[nn.Module, str, dict[str, Any], dict[str, Any]]:
    """Build a baseline classifier, load ``cfg.weights`` into its encoder and replace its head.

    Args:
        choice: from :func:`resolve_model`.
        cfg: a :class:`finetune.config.FinetuneConfig`.
        load: ``load(model, weights, part) -> info`` (:func:`finetune.transfer.load_pretrained`).
        apply_init: ``apply_init(module, scheme)``.
        num_classes: logits of the target (1: binary, BCE with logits).

    Returns:
        ``(model, name, kwargs, transfer_info)`` as :func:`finetune.transfer.build_model`.
    """
    kwargs = baseline_kwargs(choice, num_classes)
    try:
        model = create_model(choice.name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {choice.name!r} cannot be built with {kwargs}: {exc}") from None
    info: dict[str, Any] = {"model": choice.name, "model_kwargs": kwargs, "weights": cfg.weights,
                            "init": cfg.init, "freeze": cfg.freeze, "linear_probe": cfg.linear_probe}
    apply_input_mode(model, cfg, choice.name)
    if cfg.weights:
        info.update(load(model, cfg.weights, part="encoder"))
        model.replace_head(num_classes)  # a fresh head for the target's classes, never loaded
        for child in new_modules(model):
            apply_init(child, cfg.init)
    else:
        apply_init(model, cfg.init)
    if cfg.freeze == "encoder" or cfg.linear_probe:
        # the baselines' head is already a single linear layer: a linear probe = frozen encoder
        prefixes = encoder_prefixes(model)
        for pname, p in model.named_parameters():
            if _in_prefixes(pname, prefixes):
                p.requires_grad_(False)
    return model, choice.name, kwargs, info
