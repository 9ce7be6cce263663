"""Fine-tuning nnU-Net from genesis weights: the schedule and the loader, without nnU-Net's trainer.

:class:`FinetuneSchedule` is the learning-rate and freezing plan of
:class:`genesis.nnunet.trainer.nnUNetTrainerGenesisFinetune`, a pure function of the epoch (so a
resumed run continues exactly where it stopped). It follows the idea of the OpenMind / nnssl
fine-tuning of pretrained networks (Wald et al. 2025, "An OpenMind for 3D medical vision
self-supervised learning"): a lower peak learning rate than training from scratch and a linear
warm-up, so the first updates, driven by a randomly initialised decoder and seg layers, do not
wash out the pretrained encoder. Three phases:

1. ``freeze_epochs``: encoder frozen, the decoder's learning rate rises linearly to ``initial_lr``;
2. ``warmup_epochs``: all layers, the learning rate rises linearly again from ``initial_lr / warmup_epochs``;
3. the rest: nnU-Net's polynomial decay ``initial_lr * (1 - t / T) ** 0.9``.

:func:`load_pretrained` loads a file of :func:`genesis.nnunet.export.export_nnunet` (the whole
network or, with ``part="encoder"``, the encoder only) into a network nnU-Net built. nnU-Net's own
``load_pretrained_weights`` asserts that every tensor but the seg layers is in the file, so it
refuses encoder-only files; this loader checks the encoder just as strictly (every key, every
shape) and leaves the decoder as nnU-Net initialised it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from genesis.errors import CheckpointError, ConfigError

#: Keys nnU-Net never transfers (its ``skip_strings_in_pretrained``).
SEG_LAYERS = ".seg_layers."
#: Environment variable naming the genesis weights the fine-tuning trainer loads (whole network or encoder).
WEIGHTS_ENV = "GENESIS_NNUNET_WEIGHTS"


@dataclass(frozen=True)
class FinetuneSchedule:
    """Learning rate and encoder freezing per epoch (see the module docstring).

    Attributes:
        num_epochs: total epochs (nnU-Net's ``num_epochs``).
        initial_lr: peak learning rate.
        freeze_epochs: first epochs with the encoder frozen (0: never frozen).
        warmup_epochs: epochs of linear warm-up of all layers after those (0: none).
        exponent: of the polynomial decay (nnU-Net's 0.9).
    """

    num_epochs: int
    initial_lr: float
    freeze_epochs: int = 10
    warmup_epochs: int = 50
    exponent: float = 0.9

    def __post_init__(self) -> None:
        if not self.initial_lr > 0:
            raise ConfigError(f"fine-tuning initial_lr must be > 0, got {self.initial_lr}")
        if self.freeze_epochs < 0 or self.warmup_epochs < 0:
            raise ConfigError(f"freeze_epochs ({self.freeze_epochs}) and warmup_epochs ({self.warmup_epochs}) "
                              "must be >= 0")
        if self.num_epochs <= self.freeze_epochs + self.warmup_epochs:
            raise ConfigError(f"num_epochs ({self.num_epochs}) must exceed freeze_epochs + warmup_epochs "
                              f"({self.freeze_epochs} + {self.warmup_epochs}): no epoch would train at the full rate")

    def encoder_frozen(self, epoch: int) -> bool:
        """Whether the encoder is frozen during ``epoch`` (0-based)."""
        return epoch < self.freeze_epochs

    def phase(self, epoch: int) -> str:
        """``"frozen encoder warm-up"``, ``"warm-up"`` or ``"decay"``."""
        if epoch < self.freeze_epochs:
            return "frozen encoder warm-up"
        return "warm-up" if epoch < self.freeze_epochs + self.warmup_epochs else "decay"

    def lr(self, epoch: int) -> float:
        """Learning rate of the trained layers during ``epoch`` (0-based)."""
        if epoch < self.freeze_epochs:
            return self.initial_lr * (epoch + 1) / self.freeze_epochs
        step = epoch - self.freeze_epochs
        if step < self.warmup_epochs:
            return self.initial_lr * (step + 1) / self.warmup_epochs
        step -= self.warmup_epochs
        decay = self.num_epochs - self.freeze_epochs - self.warmup_epochs
        return self.initial_lr * (1 - min(step, decay) / decay) ** self.exponent

    def group_lrs(self, epoch: int) -> tuple[float, float]:
        """(rest of the network, encoder): the encoder's rate is 0 while it is frozen."""
        lr = self.lr(epoch)
        return lr, 0.0 if self.encoder_frozen(epoch) else lr


def bare_network(network: nn.Module) -> nn.Module:
    """The network inside DDP / ``torch.compile`` wrappers (as nnU-Net unwraps it)."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, "_orig_mod", network)


def encoder_of(network: nn.Module) -> nn.Module:
    """The ``encoder`` submodule of an nnU-Net network (PlainConvUNet, ResidualEncoderUNet...).

    Raises:
        ConfigError: the network has none.
    """
    encoder = getattr(bare_network(network), "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ConfigError(f"{type(bare_network(network)).__name__} has no .encoder submodule; encoder freezing "
                          "and encoder-only weights need one of nnU-Net's U-Nets")
    return encoder


def split_parameters(network: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(parameters outside the encoder, encoder parameters), each once (the decoder holds the encoder too)."""
    encoder = list(encoder_of(network).parameters())
    ids = {id(p) for p in encoder}
    return [p for p in bare_network(network).parameters() if id(p) not in ids], encoder


@dataclass
class LoadedWeights:
    """What :func:`load_pretrained` loaded: the file, its part and the number of tensors."""

    path: Path
    part: str
    tensors: int
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        left = "decoder and seg layers" if self.part == "encoder" else "seg layers"
        return (f"genesis pretrained weights {self.path}: {self.tensors} {self.part} tensors loaded; "
                f"{left} as nnU-Net initialised them")


def load_pretrained(network: nn.Module, path: str | Path) -> LoadedWeights:
    """Load a genesis nnU-Net export into ``network`` (built by nnU-Net for the target plans).

    Whole-network files follow nnU-Net's rule (every tensor but the seg layers present with the
    same shape); encoder-only files must hold exactly the encoder's tensors, with its shapes.

    Raises:
        CheckpointError: unreadable file, no ``network_weights``, or tensors that do not fit
            (the message lists the first missing, unexpected or differently shaped keys).
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:  # missing, truncated or unsafe (pickled code)
        raise CheckpointError(f"cannot read pretrained weights: {exc}", path) from None
    weights = payload.get("network_weights") if isinstance(payload, Mapping) else None
    if not isinstance(weights, Mapping):
        raise CheckpointError("no 'network_weights' in this file (not an nnU-Net / genesis-weights export)", path)
    meta = dict(payload.get("genesis") or {})
    part = str(meta.get("part", "all"))
    if part == "encoder":
        module, prefix = encoder_of(network), "encoder."
        given = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        expected = module.state_dict()
        unexpected = sorted(k for k in weights if not k.startswith(prefix)) + sorted(set(given) - set(expected))
    else:
        module, prefix = bare_network(network), ""
        expected = {k: v for k, v in module.state_dict().items() if SEG_LAYERS not in k}
        given = {k: v for k, v in weights.items() if k in expected}
        unexpected = []
    missing = [prefix + k for k in expected if k not in given]
    shapes = [f"{prefix}{k}: file {tuple(given[k].shape)}, network {tuple(v.shape)}"
              for k, v in expected.items() if k in given and given[k].shape != v.shape]
    if missing or shapes or unexpected:
        problems = ([f"missing {k}" for k in missing[:3]] + shapes[:3] + [f"unexpected {k}" for k in unexpected[:3]])
        raise CheckpointError(
            f"{part} weights do not fit this network ({len(missing)} missing, {len(shapes)} of another shape, "
            f"{len(unexpected)} unexpected): " + "; ".join(problems)
            + ". Export for these plans with genesis-weights export --format nnunet --plans ... (--part encoder "
              "when the decoder or the input channels differ)", path)
    state = dict(module.state_dict())
    state.update(given)
    module.load_state_dict(state)
    return LoadedWeights(path, part, len(given), meta)
