"""nnU-Net plans: the network, patch size and intensity normalisation of one configuration.

A plans file (``nnUNetPlans.json``, written by ``nnUNetv2_plan_and_preprocess``) is data: we read
it with nnU-Net's own :class:`~nnunetv2.utilities.plans_handling.plans_handler.PlansManager`, so
configuration inheritance and every field mean exactly what they mean to nnU-Net.

genesis' restoration tasks work on intensities in [0, 1]; nnU-Net trains on normalised ones. The
two are related by one affine map per plan (:class:`IntensityMap`): ``nnunet = low + y * (high -
low)``. For CT, nnU-Net clips HU to the dataset's foreground percentiles 0.5 / 99.5 and then
subtracts the foreground mean and divides by its s.d.; ``low`` and ``high`` are the clip bounds
after that scaling, so ``y`` is exactly the HU window ``[p0.5, p99.5]`` mapped to [0, 1] and the
network behind the map sees exactly nnU-Net's input.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn

import numpy as np

from genesis.errors import ConfigError, InputFileError

#: Install hint shown whenever nnunetv2 is needed but missing.
INSTALL_HINT = 'pip install "genesis-ssl[nnunet]" (or pip install nnunetv2)'

#: Range of z-scores mapped to [0, 1] for nnU-Net's per-image z-score normalisation (MRI etc.):
#: the per-image scale has no dataset-wide bounds, so a fixed +-3 s.d. (99.7 % of a Gaussian).
ZSCORE_RANGE = (-3.0, 3.0)


def require_nnunetv2() -> None:
    """Import nnunetv2 or raise a :class:`ConfigError` that says how to install it."""
    try:
        import nnunetv2  # noqa: F401
        import dynamic_network_architectures  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"nnU-Net support needs the optional extra: {INSTALL_HINT} ({exc})") from None


def load_plans(plans: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The plans as a dict, from a file path or a dict (deep-copied).

    Raises:
        InputFileError: the file is missing or is not an nnU-Net plans JSON.
    """
    if isinstance(plans, Mapping):
        data = copy.deepcopy(dict(plans))
        path: Path | None = None
    else:
        path = Path(plans).expanduser()
        if not path.is_file():
            raise InputFileError("nnU-Net plans file not found (nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json)", path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(f"not a readable nnU-Net plans JSON: {exc}", path) from None
    if not isinstance(data, dict) or "configurations" not in data:
        raise InputFileError("not an nnU-Net plans file (no 'configurations')", path or "plans")
    return data


def configuration_manager(plans: Mapping[str, Any], configuration: str) -> tuple[Any, Any]:
    """nnU-Net's ``(PlansManager, ConfigurationManager)`` for ``configuration``.

    Raises:
        ConfigError: nnunetv2 missing, or no such configuration (the message lists the available ones).
    """
    require_nnunetv2()
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(copy.deepcopy(dict(plans)))
    if configuration not in manager.available_configurations:
        raise ConfigError(f"nnU-Net configuration {configuration!r} is not in plans {manager.plans_name!r}; "
                          f"available: {', '.join(manager.available_configurations)}")
    try:  # inheritance loops and plans without an "architecture" section fail inside nnU-Net
        return manager, manager.get_configuration(configuration)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"nnU-Net plans {plans.get('plans_name', '?')!r}: configuration {configuration!r} "
                          f"cannot be read ({type(exc).__name__}: {exc})") from None


def input_channels(plans: Mapping[str, Any]) -> int:
    """Number of image channels of the dataset the plans were made for."""
    return max(1, len(plans.get("foreground_intensity_properties_per_channel") or {"0": None}))


def build_network(plans: Mapping[str, Any], configuration: str, in_channels: int, out_channels: int,
                  deep_supervision: bool) -> Any:
    """The network nnU-Net builds for this plan, with nnU-Net's own builder and initialisation.

    Raises:
        ConfigError: the plan's architecture cannot be built (:func:`check_architecture`).
    """
    _, cm = configuration_manager(plans, configuration)
    check_architecture(plans, configuration)
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, in_channels, out_channels,
                                  allow_init=True, deep_supervision=deep_supervision)


#: Per-stage settings of nnU-Net's U-Nets (dynamic_network_architectures): one entry per resolution
#: stage, or one int for all of them. The decoder has one stage fewer.
_PER_STAGE = {
    "PlainConvUNet": ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"),
    "ResidualEncoderUNet": ("features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage"),
    "ResidualUNet": ("features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage"),
}
#: Settings whose entries are one size per spatial axis (or one int for every axis).
_PER_AXIS = ("kernel_sizes", "strides")


def check_architecture(plans: Mapping[str, Any], configuration: str) -> None:
    """Check the plan's network settings before nnU-Net's builder sees them.

    The builder (``dynamic_network_architectures``) checks its arguments with ``assert`` or not at
    all: too few ``features_per_stage`` give an ``AssertionError`` traceback, a zero width a torch
    error deep inside a convolution. Here every setting is checked against the network class's
    signature (missing or unknown names), and, for ``PlainConvUNet``, ``ResidualEncoderUNet`` and
    ``ResidualUNet``, each per-stage list against ``n_stages`` and the spatial dimensions of
    ``conv_op``. Other classes get the signature check only.

    Raises:
        ConfigError: naming the plans, the configuration and the field.
    """
    import inspect
    import pydoc

    _, cm = configuration_manager(plans, configuration)
    where = f"nnU-Net plans {plans.get('plans_name', '?')!r}, configuration {configuration!r}: architecture"

    def fail(message: str) -> NoReturn:
        raise ConfigError(f"{where}.{message}")

    arch = cm.configuration.get("architecture")
    if not isinstance(arch, Mapping) or not isinstance(arch.get("network_class_name"), str):
        fail("network_class_name is missing (expected e.g. "
             "'dynamic_network_architectures.architectures.unet.PlainConvUNet')")
    kwargs = arch.get("arch_kwargs")
    if not isinstance(kwargs, Mapping):
        fail("arch_kwargs is missing or not a mapping")
    imports = arch.get("_kw_requires_import") or []
    if not isinstance(imports, (list, tuple)) or not all(isinstance(k, str) for k in imports):
        fail("_kw_requires_import must be a list of arch_kwargs names")
    for name in imports:
        if name not in kwargs:
            fail(f"_kw_requires_import names {name!r}, which is not in arch_kwargs")
        value = kwargs[name]
        if value is not None and (not isinstance(value, str) or pydoc.locate(value) is None):
            fail(f"arch_kwargs.{name} = {value!r} is not an importable class")
    cls = pydoc.locate(arch["network_class_name"])
    if not inspect.isclass(cls):
        fail(f"network_class_name {arch['network_class_name']!r} is not an importable class")
    params = inspect.signature(cls.__init__).parameters
    given = {"input_channels", "num_classes", "deep_supervision", *kwargs}  # the builder passes the first three
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            fail(f"arch_kwargs has settings {cls.__name__} does not take: {', '.join(unknown)}")
    missing = [n for n, p in params.items() if n != "self" and p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in given]
    if missing:
        fail(f"arch_kwargs lacks {', '.join(missing)} (required by {cls.__name__})")
    if cls.__name__ in _PER_STAGE:
        _check_unet_stages(dict(kwargs), cls.__name__, fail)


def _check_unet_stages(kwargs: dict[str, Any], class_name: str, fail: Callable[[str], NoReturn]) -> None:
    """Per-stage lengths and values of nnU-Net's U-Nets (see :func:`check_architecture`)."""
    import pydoc

    def positive_int(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0

    n_stages = kwargs.get("n_stages")
    if not positive_int(n_stages) or n_stages < 2:  # with one stage the decoder has nothing: no output at all
        fail(f"arch_kwargs.n_stages must be an integer >= 2 (the decoder needs a stage to upsample from), "
             f"got {n_stages!r}")
    conv_op = pydoc.locate(str(kwargs.get("conv_op")))
    dims = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3}.get(getattr(conv_op, "__name__", ""))
    if dims is None:
        fail(f"arch_kwargs.conv_op must be torch's Conv1d, Conv2d or Conv3d, got {kwargs.get('conv_op')!r}")
    decoder = "n_conv_per_stage_decoder"
    for name, count in [(n, n_stages) for n in _PER_STAGE[class_name]] + [(decoder, n_stages - 1)]:
        value = kwargs.get(name)
        entries = [value] * count if positive_int(value) else value
        stages = "one per resolution stage" if name != decoder else "n_stages - 1, one per decoder stage"
        if not isinstance(entries, (list, tuple)) or len(entries) != count:
            got = f"has {len(entries)} entries" if isinstance(entries, (list, tuple)) else f"is {value!r}"
            fail(f"arch_kwargs.{name} {got}; it needs {count} ({stages}; n_stages is {n_stages})")
        for stage, entry in enumerate(entries):
            sizes = entry if name in _PER_AXIS and isinstance(entry, (list, tuple)) else [entry]
            if name in _PER_AXIS and isinstance(entry, (list, tuple)) and len(entry) != dims:
                fail(f"arch_kwargs.{name}[{stage}] = {entry!r} has {len(entry)} sizes; {conv_op.__name__} needs {dims}")
            if not all(positive_int(s) for s in sizes):
                fail(f"arch_kwargs.{name}[{stage}] = {entry!r}: must be a positive integer"
                     + (" (or one per spatial axis)" if name in _PER_AXIS else ""))
    for name in ("bottleneck_channels", "stem_channels"):
        value = kwargs.get(name)
        if value is None or positive_int(value):
            continue
        if name == "bottleneck_channels" and isinstance(value, (list, tuple)) and len(value) == n_stages \
                and all(positive_int(v) for v in value):
            continue
        fail(f"arch_kwargs.{name} = {value!r}: must be null or a positive integer"
             + (f" (or {n_stages} of them)" if name == "bottleneck_channels" else ""))


@dataclass(frozen=True)
class IntensityMap:
    """``nnunet_value = low + y * (high - low)`` between genesis' [0, 1] and nnU-Net's intensities.

    Attributes:
        scheme: nnU-Net's normalisation class name for channel 0.
        low, high: normalised intensities that map to 0 and 1.
        hu_window: for CT, the (p0.5, p99.5) HU window that gives ``y`` straight from raw HU.
    """

    scheme: str
    low: float
    high: float
    hu_window: tuple[float, float] | None = None

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        """nnU-Net-normalised intensities -> float32 [0, 1] (clipped)."""
        out = (np.asarray(values, dtype=np.float32) - np.float32(self.low)) * np.float32(1.0 / (self.high - self.low))
        return np.clip(out, 0.0, 1.0, out=out)


def intensity_map(plans: Mapping[str, Any], configuration: str) -> IntensityMap:
    """The :class:`IntensityMap` of channel 0 of ``configuration``.

    Raises:
        ConfigError: a normalisation scheme without a fixed range (e.g. ``NoNormalization``).
    """
    _, cm = configuration_manager(plans, configuration)
    scheme = str(cm.normalization_schemes[0])
    props = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0")
    if scheme == "CTNormalization":
        if not props:
            raise ConfigError("plans use CTNormalization but hold no foreground_intensity_properties_per_channel")
        mean, std = float(props["mean"]), max(float(props["std"]), 1e-8)
        lo_hu, hi_hu = float(props["percentile_00_5"]), float(props["percentile_99_5"])
        if not hi_hu > lo_hu:
            raise ConfigError(f"plans: foreground percentiles 0.5/99.5 are not increasing ({lo_hu}, {hi_hu})")
        return IntensityMap(scheme, (lo_hu - mean) / std, (hi_hu - mean) / std, (lo_hu, hi_hu))
    if scheme == "ZScoreNormalization":
        return IntensityMap(scheme, *ZSCORE_RANGE)
    if scheme in ("RescaleTo01Normalization", "RGBTo01Normalization"):
        return IntensityMap(scheme, 0.0, 1.0)
    raise ConfigError(f"nnU-Net normalisation {scheme!r} has no fixed intensity range; genesis supports "
                      "CTNormalization, ZScoreNormalization and RescaleTo01Normalization")


def stride_products(cm: Any) -> tuple[int, ...]:
    """Total downsampling per axis: every crop side must be a multiple of it."""
    strides = cm.network_arch_init_kwargs.get("strides") or cm.pool_op_kernel_sizes
    dims = len(strides[0])
    return tuple(int(math.prod(int(s[a]) for s in strides)) for a in range(dims))


def pretrain_crop(plans: str | Path | Mapping[str, Any], configuration: str, crop: tuple[int, ...],
                  default_crop: tuple[int, ...], width: int, default_width: int) -> tuple[int, int, int]:
    """The crop of a pretraining run on the network of ``configuration``: its patch size unless
    ``crop`` was changed from its default; every side a multiple of the network's total stride.

    Raises:
        ConfigError: a width other than the default (the plans fix every width), a 2D
            configuration, several input channels, or a crop the network cannot take.
    """
    if width != default_width:
        raise ConfigError("--width does not apply to --model nnunet: the plans fix every width (features_per_stage)")
    plans = load_plans(plans)
    check_architecture(plans, configuration)  # a malformed network is named before any data is read
    _, cm = configuration_manager(plans, configuration)
    patch = tuple(int(p) for p in cm.patch_size)
    if len(patch) != 3:
        raise ConfigError(f"nnU-Net configuration {configuration!r} is 2D; genesis pretrains 3D "
                          "configurations (3d_fullres, 3d_lowres)")
    if input_channels(plans) != 1:
        raise ConfigError(f"plans describe {input_channels(plans)} input channels; pretraining for nnU-Net "
                          "supports single-channel datasets (e.g. CT)")
    crop = tuple(int(c) for c in crop)
    if crop == tuple(int(c) for c in default_crop):
        crop = patch
    multiples = stride_products(cm)
    if any(c % m for c, m in zip(crop, multiples)):
        raise ConfigError(f"crop {crop}: the nnU-Net network of {configuration!r} downsamples by {multiples}, "
                          f"so each side must be a multiple of that (patch size {patch})")
    return crop  # type: ignore[return-value]


def resolve_pretrain_config(cfg: Any) -> Any:
    """``cfg`` (a pretraining configuration) with the crop of :func:`pretrain_crop`.

    Raises:
        ConfigError: no plans, or what :func:`pretrain_crop` refuses.
    """
    if not cfg.plans:
        raise ConfigError("--model nnunet needs --plans nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json")
    crop = pretrain_crop(cfg.plans, cfg.configuration, cfg.data.crop, type(cfg.data)().crop, cfg.width, type(cfg)().width)
    return replace(cfg, data=replace(cfg.data, crop=crop))


def pretrain_model_kwargs(plans: str | Path | Mapping[str, Any], configuration: str, in_channels: int,
                          out_channels: int, task: str = "") -> dict[str, Any]:
    """Constructor arguments of ``--model nnunet``: the plans themselves (so the checkpoint alone
    rebuilds the network), the configuration and the channels.

    Raises:
        ConfigError: the task feeds more channels than the dataset has (nnU-Net could not load it).
    """
    plans = load_plans(plans)
    if in_channels != input_channels(plans):
        raise ConfigError(f"task {task!r} feeds {in_channels} input channels; nnU-Net's network for these "
                          f"plans takes {input_channels(plans)}")
    return {"plans": plans, "configuration": configuration, "in_channels": int(in_channels),
            "out_channels": int(out_channels)}
