"""Device choice and mixed precision: CUDA when there is one, CPU otherwise."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from genesis.errors import ConfigError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` picks ``cuda`` when available (``cuda:LOCAL_RANK`` under torchrun), else CPU."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"invalid device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return device


def autocast(device: torch.device, enabled: bool = True) -> ContextManager:
    """Mixed precision on CUDA (bf16 where supported, else fp16); a no-op on CPU.

    CPU autocast is left off on purpose: on the small CPUs we target it is slower than fp32.
    """
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool = True) -> bool:
    """fp16 autocast needs loss scaling; bf16 and fp32 do not."""
    return enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()
