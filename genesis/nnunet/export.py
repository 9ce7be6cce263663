"""A ``--model nnunet`` checkpoint as the file ``nnUNetv2_train ... -pretrained_weights FILE`` loads.

nnU-Net's ``load_pretrained_weights`` loads FILE with torch and reads its ``"network_weights"``, a state dict
with the bare network's keys (no ``module.`` / ``_orig_mod.`` prefixes), skips every key that
contains ``.seg_layers.`` and asserts that every other key of its freshly built network is present
with the same shape. We therefore write the encoder and decoder weights under nnU-Net's own names,
leave the seg layers out (nnU-Net initialises them for its classes), and run the same check
against the network nnU-Net will build before writing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from genesis.errors import CheckpointError, ConfigError
from genesis.fileio import atomic_write
from genesis.nnunet.plans import build_network, configuration_manager, input_channels, load_plans
from genesis.training.checkpoint import load_checkpoint

#: Keys nnU-Net never transfers (its ``skip_strings_in_pretrained``).
SKIPPED = (".seg_layers.",)
#: Prefix of the nnU-Net network inside :class:`genesis.models.nnunet.NNUNetRestoration`.
PREFIX = "network."


@dataclass
class NNUNetExport:
    """What :func:`export_nnunet` wrote: the file, the transferred keys and the skipped seg keys."""

    path: Path
    transferred: list[str]
    skipped: list[str]
    configuration: str


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
) -> NNUNetExport:
    """Write ``out`` = ``{"network_weights": ..., "genesis": {...}}`` for nnU-Net.

    Args:
        checkpoint: a ``genesis-pretrain --model nnunet`` checkpoint (``best.pt`` / ``last.pt``).
        out: the file to write.
        plans, configuration: the plan nnU-Net will train with (default: the pretraining plan);
            the export is refused when its network differs from the pretrained one.
        license: recorded in the file when given (a file for local nnU-Net training; publish
            weights with the genesis format, whose model card requires it).
    Raises:
        CheckpointError: not an nnU-Net pretraining checkpoint.
        ConfigError: the target plan's network does not match the pretrained weights (message
            lists the differing architecture settings and tensors).
    """
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("model_name") != "nnunet":
        raise CheckpointError(f"this checkpoint trained model {ckpt.get('model_name')!r}; only "
                              "genesis-pretrain --model nnunet checkpoints can be exported for nnU-Net", checkpoint)
    kwargs = ckpt.get("model_kwargs") or {}
    source_plans, source_conf = kwargs.get("plans"), kwargs.get("configuration")
    if not isinstance(source_plans, Mapping) or not isinstance(source_conf, str):
        raise CheckpointError("nnunet checkpoint without its plans/configuration (model_kwargs)", checkpoint)
    state = ckpt.get("model")
    if not isinstance(state, Mapping):
        raise CheckpointError("no 'model' state dict in this checkpoint", checkpoint)
    weights = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    target_plans = load_plans(plans) if plans is not None else load_plans(source_plans)
    target_conf = configuration or source_conf

    # the network nnU-Net builds for training: deep supervision on, any number of classes (seg layers skipped)
    with torch.random.fork_rng(devices=[]):
        reference = build_network(target_plans, target_conf, input_channels(target_plans), 2,
                                  deep_supervision=True).state_dict()
    needed = {k: v for k, v in reference.items() if not any(s in k for s in SKIPPED)}
    missing = [k for k in needed if k not in weights]
    shapes = [f"{k}: pretrained {tuple(weights[k].shape)}, target {tuple(v.shape)}"
              for k, v in needed.items() if k in weights and weights[k].shape != v.shape]
    if missing or shapes:
        diff = _differences(_architecture(source_plans, source_conf), _architecture(target_plans, target_conf))
        details = diff or shapes[:5] or [f"missing {k}" for k in missing[:5]]
        raise ConfigError(
            f"plans/configuration {target_conf!r} do not match the network pretrained with configuration "
            f"{source_conf!r} ({len(missing)} tensors missing, {len(shapes)} of another shape): " + "; ".join(details[:8]),
            checkpoint,
        )
    transferred = {k: weights[k].detach().cpu() for k in needed}
    for k in transferred:  # nnU-Net's decoder holds the encoder again: store those tensors once
        twin = k[len("decoder."):] if k.startswith("decoder.encoder.") else None
        if twin in transferred and torch.equal(transferred[twin], transferred[k]):
            transferred[k] = transferred[twin]
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
            "skipped": skipped,
            "license": license,
        },
    }
    out = Path(out)
    if out.is_dir():
        raise ConfigError("--out must be a file name for --format nnunet (e.g. genesis_pretrained.pth)", out)
    atomic_write(out, lambda tmp: torch.save(payload, tmp))
    return NNUNetExport(out, sorted(transferred), skipped, target_conf)
