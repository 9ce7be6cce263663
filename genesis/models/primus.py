"""``--model primus``: Primus (Wald et al. 2025), nnU-Net's 3D transformer, where it can be imported.

The network is ``dynamic_network_architectures``' own ``Primus`` (an EVA ViT between a patch
embedding and a patch decoder; sizes S/B/M/L from its ``_PRIMUS_CONFIGS``); nothing here
re-implements it. That module imports ``timm``, which imports ``torchvision``: with a torchvision
built for another torch the import fails (``operator torchvision::nms does not exist``), and
building the network raises a :class:`~genesis.errors.ConfigError` that says so and what works.
Primus maps an image to an image, so masked image modelling trains it in image space (MAE's
nnssl form: masked patches zeroed, loss on them).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

from torch import nn

from genesis.errors import ConfigError
from genesis.models.base import register_model


def _installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def import_primus() -> Any:
    """``dynamic_network_architectures.architectures.primus`` or a ConfigError naming why not."""
    import torch

    try:
        from dynamic_network_architectures.architectures import primus as module
    except Exception as exc:  # noqa: BLE001 - timm/torchvision fail with RuntimeError as well as ImportError
        raise ConfigError(
            "--model primus needs Primus from dynamic_network_architectures, which imports timm, which imports "
            f"torchvision; that import fails here ({type(exc).__name__}: {exc}). Installed: torch {torch.__version__}, "
            f"torchvision {_installed('torchvision')}, timm {_installed('timm')}, dynamic_network_architectures "
            f"{_installed('dynamic_network_architectures')}. A torchvision built for another torch fails this way: "
            f"install the torchvision release built for torch {torch.__version__} (and timm), or pretrain a network "
            "that needs neither: --model vit (MONAI's ViT) for mae/simmim, or unet3d / nnunet for mae, simmim and spark"
        ) from None
    return module


@register_model("primus")
def primus(in_channels: int = 1, out_channels: int = 1, input_shape: Sequence[int] = (160, 160, 160),
           patch_embed_size: Sequence[int] = (8, 8, 8), size: str = "M", **kwargs: Any) -> nn.Module:
    """Primus-``size`` (S, B, M, L) for crops of ``input_shape``; further keyword arguments go to ``Primus``.

    Raises:
        ConfigError: Primus cannot be imported (see the module docstring) or the size is unknown.
    """
    module = import_primus()
    configs = module._PRIMUS_CONFIGS
    if size not in configs:
        raise ConfigError(f"Primus size {size!r} unknown; available: {', '.join(configs)}")
    return module.Primus(input_channels=int(in_channels), num_classes=int(out_channels),
                         input_shape=tuple(int(s) for s in input_shape),
                         patch_embed_size=tuple(int(p) for p in patch_embed_size), **configs[size], **kwargs)
