"""A ``--model nnunet`` checkpoint as the file ``nnUNetv2_train ... -pretrained_weights FILE`` loads.

nnU-Net's ``load_pretrained_weights`` loads FILE with torch and reads its ``"network_weights"``, a state dict
with the bare network's keys (no ``module.`` / ``_orig_mod.`` prefixes), skips every key that
contains ``.seg_layers.`` and asserts that every other key of its freshly built network is present
with the same shape. We therefore write the encoder and decoder weights under nnU-Net's own names,
leave the seg layers out (nnU-Net initialises them for its classes), and run the same check
against the network nnU-Net will build before writing anything.

``part="encoder"`` writes the encoder alone, for target plans whose decoder or number of input
channels differ (the encoder itself must be the pretrained one). nnU-Net's loader refuses such a
file (it asserts every decoder key too); :func:`genesis.nnunet.finetune.load_pretrained`, used by
the fine-tuning trainer (``genesis-weights install-nnunet-trainer``), loads it. The first
convolution is adapted to the target's input channels by :func:`adapt_input_conv`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from genesis.errors import CheckpointError, ConfigError
from genesis.fileio import atomic_write
from genesis.nnunet.plans import build_network, configuration_manager, input_channels, load_plans
from genesis.checkpoint import load_checkpoint, pretrained_backbone

#: Keys nnU-Net never transfers (its ``skip_strings_in_pretrained``).
SKIPPED = (".seg_layers.",)
#: Prefix of the nnU-Net network inside :class:`genesis.models.nnunet.NNUNetRestoration`.
PREFIX = "network."


@dataclass
class NNUNetExport:
    """What :func:`export_nnunet` wrote.

    Attributes:
        path: the file.
        transferred: keys written.
        skipped: pretrained tensors not written (seg layers; with ``part="encoder"`` the decoder too).
        configuration: target configuration.
        part: ``"all"`` or ``"encoder"``.
        adapted: tensors changed to fit the target, as ``{"key", "pretrained_shape", "target_shape", "rule"}``.
    """

    path: Path
    transferred: list[str]
    skipped: list[str]
    configuration: str
    part: str = "all"
    adapted: list[dict[str, Any]] = field(default_factory=list)


#: How :func:`adapt_input_conv` adapts the first convolution (recorded in the file and printed).
INPUT_CONV_RULE = ("pretrained filter summed over its input channels, repeated for each of the {n} target "
                   "channels and divided by {n}")


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """The first convolution's ``weight`` (out, in, *k) for ``channels`` input channels.

    Averaged, not plainly repeated: every target channel gets ``weight.sum(1) / channels``, so an
    image given identically in every channel produces exactly the pretrained first-layer response
    (a plain repeat would multiply it by ``channels`` and shift every later activation of a network
    without a normalisation right after the convolution). Different channels (e.g. several MRI
    contrasts) thus all start from the pretrained filter and diverge by fine-tuning, the adaptation
    the nnssl fine-tuning of OpenMind weights uses too.
    """
    summed = weight.sum(dim=1, keepdim=True)
    return (summed / channels).repeat(1, channels, *([1] * (weight.dim() - 2))).contiguous()


def _architecture(plans: Mapping[str, Any], configuration: str) -> dict[str, Any]:
    _, cm = configuration_manager(plans, configuration)
    return {"network_class_name": cm.network_arch_class_name, **dict(cm.network_arch_init_kwargs)}


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    def norm(v: Any) -> Any:
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    return [f"{k}: pretrained {norm(a.get(k))!r}, target {norm(b.get(k))!r}"
            for k in sorted(set(a) | set(b)) if norm(a.get(k)) != norm(b.get(k))]


def export_nnunet(
    checkpoint: str | Path,
    out: str | Path,
    plans: str | Path | Mapping[str, Any] | None = None,
    configuration: str | None = None,
    license: str | None = None,
    part: str = "all",
) -> NNUNetExport:
    """Write ``out`` = ``{"network_weights": ..., "genesis": {...}}`` for nnU-Net.

    Args:
        checkpoint: a ``genesis-pretrain --model nnunet`` checkpoint (``best.pt`` / ``last.pt``).
        out: the file to write.
        plans, configuration: the plan nnU-Net will train with (default: the pretraining plan);
            the export is refused when its network (``part="encoder"``: its encoder) differs from
            the pretrained one.
        license: recorded in the file when given (a file for local nnU-Net training; publish
            weights with the genesis format, whose model card requires it).
        part: ``"all"`` (encoder and decoder, for ``nnUNetv2_train -pretrained_weights``) or
            ``"encoder"`` (the encoder only, its first convolution adapted to the target's input
            channels; loaded by the genesis fine-tuning trainer).
    Raises:
        CheckpointError: not an nnU-Net pretraining checkpoint.
        ConfigError: the target plan's network does not match the pretrained weights (message
            lists the differing architecture settings and tensors), or an unknown ``part``.
    """
    if part not in ("all", "encoder"):
        raise ConfigError(f"--part must be 'all' or 'encoder', got {part!r}")
    checkpoint = Path(checkpoint)
    out = Path(out)
    if out.is_dir():
        raise ConfigError("--out must be a file name for --format nnunet (e.g. genesis_pretrained.pth)", out)
    ckpt = load_checkpoint(checkpoint)
    try:  # any method's backbone: restoration trains the whole network, contrastive methods its encoder
        backbone_name, kwargs, state, _ = pretrained_backbone(ckpt)
    except CheckpointError as exc:
        raise CheckpointError(str(exc.args[0]) if exc.args else str(exc), checkpoint) from None
    if backbone_name != "nnunet":
        raise CheckpointError(f"this checkpoint's backbone is {backbone_name!r}; only genesis-pretrain --model nnunet "
                              "checkpoints can be exported for nnU-Net", checkpoint)
    source_plans, source_conf = kwargs.get("plans"), kwargs.get("configuration")
    if not isinstance(source_plans, Mapping) or not isinstance(source_conf, str):
        raise CheckpointError("nnunet checkpoint without its plans/configuration (model_kwargs)", checkpoint)
    weights = {k[len(PREFIX):]: v.detach().cpu() for k, v in state.items() if k.startswith(PREFIX)}
    if part == "all" and weights and not any(k.startswith("decoder.") for k in weights):
        raise ConfigError("this checkpoint's method trained nnU-Net's encoder only (no decoder tensors): "
                          "export it with --part encoder", checkpoint)
    target_plans = load_plans(plans) if plans is not None else load_plans(source_plans)
    target_conf = configuration or source_conf
    target_channels = input_channels(target_plans)

    # the network nnU-Net builds for training: deep supervision on, any number of classes (seg layers skipped)
    with torch.random.fork_rng(devices=[]):
        network = build_network(target_plans, target_conf, target_channels, 2, deep_supervision=True)
    reference = network.state_dict()
    adapted: list[dict[str, Any]] = []
    if part == "encoder":
        if not isinstance(getattr(network, "encoder", None), torch.nn.Module):
            raise ConfigError(f"{type(network).__name__} has no encoder submodule: --part encoder needs one of "
                              "nnU-Net's U-Nets (PlainConvUNet, ResidualEncoderUNet)")
        needed = {k: v for k, v in reference.items() if k.startswith("encoder.")}
        in_proj = {k + ".weight" for k in getattr(network, "keys_to_in_proj", ())}
    else:
        needed = {k: v for k, v in reference.items() if not any(s in k for s in SKIPPED)}
        in_proj = set()
    missing = [k for k in needed if k not in weights]
    transferred: dict[str, torch.Tensor] = {}
    shapes = []
    for k, v in needed.items():
        if k not in weights:
            continue
        source = weights[k]
        if source.shape == v.shape:
            transferred[k] = source
        elif k in in_proj and source.shape[:1] + source.shape[2:] == v.shape[:1] + v.shape[2:]:
            transferred[k] = adapt_input_conv(source, int(v.shape[1]))
            adapted.append({"key": k, "pretrained_shape": list(source.shape), "target_shape": list(v.shape),
                            "rule": INPUT_CONV_RULE.format(n=int(v.shape[1]))})
        else:
            shapes.append(f"{k}: pretrained {tuple(source.shape)}, target {tuple(v.shape)}")
    if missing or shapes:
        diff = _differences(_architecture(source_plans, source_conf), _architecture(target_plans, target_conf))
        if part == "encoder":  # settings of the decoder alone may differ
            diff = [d for d in diff if not d.startswith("n_conv_per_stage_decoder:")]
        source_channels = int(kwargs.get("in_channels", 1))
        if part == "all" and source_channels != target_channels:
            diff.append(f"input channels: pretrained {source_channels}, target {target_channels}")
        details = diff or shapes[:5] or [f"missing {k}" for k in missing[:5]]
        what = "the encoder of the network" if part == "encoder" else "the network"
        hint = "" if part == "encoder" else (" (--part encoder exports the encoder alone when only the decoder or "
                                             "the input channels differ)")
        raise ConfigError(
            f"plans/configuration {target_conf!r} do not match {what} pretrained with configuration "
            f"{source_conf!r} ({len(missing)} tensors missing, {len(shapes)} of another shape): "
            + "; ".join(details[:8]) + hint,
            checkpoint,
        )
    _share_twins(transferred)
    if part == "encoder":  # the decoder's view of the encoder (decoder.encoder.*) is the encoder itself
        skipped = sorted(k for k in weights if k not in transferred and not k.startswith("decoder.encoder."))
    else:
        skipped = sorted(k for k in weights if any(s in k for s in SKIPPED))
    manager, _ = configuration_manager(target_plans, target_conf)
    payload = {
        "network_weights": transferred,
        "genesis": {
            "source": checkpoint.name,
            "epoch": ckpt.get("epoch"),
            "task": ckpt.get("task"),
            "configuration": target_conf,
            "plans_name": manager.plans_name,
            "dataset_name": manager.dataset_name,
            "part": part,
            "in_channels": {"pretrained": int(kwargs.get("in_channels", 1)), "target": target_channels},
            "skipped": skipped,
            "adapted": adapted,
            "license": license,
        },
    }
    atomic_write(out, lambda tmp: torch.save(payload, tmp))
    return NNUNetExport(out, sorted(transferred), skipped, target_conf, part, adapted)


def _share_twins(tensors: dict[str, torch.Tensor]) -> None:
    """Store each tensor once where nnU-Net names it twice: the decoder holds the encoder again
    (``decoder.encoder.*``), and a convolution is both ``.conv`` and ``.all_modules.0``."""
    for k, v in tensors.items():
        twin = k[len("decoder."):] if k.startswith("decoder.encoder.") else k.replace(".all_modules.0.", ".conv.")
        if twin != k and twin in tensors and torch.equal(tensors[twin], v):
            tensors[k] = tensors[twin]
