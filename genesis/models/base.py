"""What every network returns and how networks are registered."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from genesis.registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register


@dataclass
class ModelOutput:
    """Output of networks that produce more than one tensor (e.g. a VQ-VAE).

    Attributes:
        output: the prediction (logits for restoration/classification).
        aux_loss: an extra scalar loss to add (e.g. codebook + commitment loss), or None.
        metrics: scalars worth logging (e.g. codebook perplexity / usage).
    """

    output: torch.Tensor
    aux_loss: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def unpack_output(out: torch.Tensor | ModelOutput) -> ModelOutput:
    """Let training code treat plain tensors and :class:`ModelOutput` alike."""
    return out if isinstance(out, ModelOutput) else ModelOutput(output=out)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
