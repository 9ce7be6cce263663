"""Device choice and mixed precision: CUDA when there is one, CPU otherwise; fp32, bf16 or fp16."""

from __future__ import annotations

import contextlib
import functools
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


#: Values of ``--precision``.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """True when this CPU runs bf16 convolutions natively (AVX512-BF16 or AMX, through oneDNN).

    Conservative on purpose: without these instructions bf16 is emulated and slower than fp32,
    so ``auto`` keeps fp32 there.
    """
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # private helpers: absent in some torch builds
        return False


def resolve_precision(precision: str = "auto", device: torch.device | str = "cpu", amp: bool = True) -> str:
    """The compute precision actually used: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``auto``: on CUDA, bf16 autocast where the GPU supports it, else fp16 with loss scaling; fp32
    on the CPU (and when ``amp`` is False, the older ``--no-amp`` switch). The CPU never gets bf16
    by default: with torch 2.13 bf16 autocast on a CPU *with* native bf16 (AVX512-BF16) turned the
    running variance of a 3D U-Net's bottom batch norm into NaN after 6 steps while the loss stayed
    finite, and without native bf16 it is emulated, at least 15x slower than fp32 (measured).
    Explicit values are honoured when the device can run them; :func:`describe_precision` warns
    about bf16 on a CPU.

    Raises:
        ConfigError: unknown value, fp16 on a CPU, bf16 on a GPU without it.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        if not amp:
            return "fp32"
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device (it relies on loss scaling); use bf16 or fp32 on CPU")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU does not support bf16; use --precision fp16 or auto")
    return precision


def describe_precision(precision: str, device: torch.device | str) -> str:
    """One log line: what runs in which precision, and why for ``auto``."""
    device = torch.device(device)
    if precision == "fp32":
        return f"precision: fp32 on {device.type}"
    scaler = " with gradient scaling" if precision == "fp16" else ""
    line = f"precision: {precision} autocast on {device.type}{scaler}"
    warning = cpu_bf16_warning(precision, device)
    return f"{line}\n{warning}" if warning else line


def cpu_bf16_warning(precision: str, device: torch.device | str) -> str:
    """A warning line for bf16 on a CPU (empty otherwise): why it is not ``auto``'s choice there."""
    if precision != "bf16" or torch.device(device).type != "cpu":
        return ""
    if not cpu_supports_bf16():
        return ("warning: this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 is emulated and was measured "
                "at least 15x slower than fp32 (one step: 170+ s of CPU against 11 s); use --precision fp32 or auto")
    return ("warning: bf16 autocast on the CPU: with torch 2.13 it was measured to turn batch-norm running "
            "variances into NaN within a few steps (training then stops with a divergence error); "
            "--precision fp32 or auto is the safe choice on a CPU")


def autocast(device: torch.device, enabled: bool = True, precision: str = "auto") -> ContextManager:
    """Mixed precision as :func:`resolve_precision` decides; a no-op for fp32.

    Losses are computed in float32 by the callers (``logits.float()``).
    """
    resolved = resolve_precision(precision, device, enabled)
    if resolved == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if resolved == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device, enabled: bool = True, precision: str = "auto") -> bool:
    """fp16 autocast needs loss scaling; bf16 and fp32 do not."""
    return resolve_precision(precision, device, enabled) == "fp16"


def gather_global(z: torch.Tensor) -> torch.Tensor:
    """``z`` of every rank concatenated along dim 0 (rank order), with gradients; ``z`` itself
    without distributed training.

    ``torch.distributed.nn.functional.all_gather`` passes gradients back: its backward sums the
    W ranks' gradients of each rank's slice, and DDP's gradient averaging divides by W, so a loss
    computed on the gathered batch (the same on every rank) trains with the gradient of the loss of
    the global batch, exactly as on one device. Used by the losses that compare samples across the
    batch (Barlow Twins, SimCLR's NT-Xent).

    Without gradients (``torch.no_grad``: validation, which the training loop runs on rank 0 alone)
    it returns ``z``: a collective there would wait forever for ranks that do not take part.
    """
    import torch.distributed as dist

    if not torch.is_grad_enabled() or not (dist.is_available() and dist.is_initialized()) \
            or dist.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z.contiguous()), dim=0)
