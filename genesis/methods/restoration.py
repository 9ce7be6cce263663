"""Restoration: corrupt a sub-volume with a proxy transform, train the network to restore it.

The Models Genesis family (Zhou et al. 2021: non-linear map, local shuffle, in/out-painting and
their combination) and the Tariq et al. (2023) family (masked region and its curriculum, next
slice, denoising) share this method; the transforms live in :mod:`proxy_tasks`. Loss: MSE between
``sigmoid(logits)`` and the target on the whole image or on ``pair.mask`` (``task.loss_region``),
or Tariq et al.'s composite loss (default for their tasks on the VQ-VAE). The network: the 3D
U-Net (``unet3d``) for 3D pairs, ``unet2d`` for 2D, or any image-to-image network (``vqvae``,
``nnunet`` with its plans' architecture...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from genesis.errors import ConfigError
from genesis.methods.base import NetworkRequest, NetworkSpec, Parts
from genesis.methods.baselines import baseline_sums, per_sample_errors
from genesis.methods.proxy import ProxyTaskMethod, middle_slice, network_kwargs, provider_kwargs
from genesis.models import ModelOutput

#: Restoration tasks of Tariq et al. that get the composite loss on a VQ-VAE with ``loss=auto``.
TARIQ_RESTORATION_TASKS = frozenset({"masked_region", "masked_curriculum", "next_slice", "denoise_sp"})


class RestorationMethod(ProxyTaskMethod):
    """Restore the target of a restoration proxy task (see the module docstring)."""

    family = "restoration"
    monitor_key = "val_mse"

    @property
    def hides_content(self) -> bool:
        """The task's mask marks voxels whose content was replaced (fill baseline applies)."""
        return bool(getattr(self.task, "mask_hides_content", False))

    def network(self, request: NetworkRequest) -> NetworkSpec:
        shape = self.probe(request)
        name = request.model
        if name == "auto":
            name = "unet3d" if shape.spatial_dims == 3 else "unet2d"
        if name == "encoder_classifier":
            raise ConfigError(f"task {self.name!r} restores images; encoder_classifier only fits label tasks")
        kwargs = provider_kwargs(name, request, shape.in_channels, shape.out_channels)
        if kwargs is None:
            kwargs = network_kwargs(name, shape.spatial_dims, shape.in_channels, request.width)
            kwargs["out_channels"] = shape.out_channels
        kwargs.update({k: v for k, v in request.model_kwargs.items() if k not in ("encoder", "encoder_kwargs")})
        return NetworkSpec(name, kwargs)

    def bind(self, spec: NetworkSpec) -> None:
        name = self.requested_loss
        if name == "auto":
            name = "composite" if spec.name == "vqvae" and self.name in TARIQ_RESTORATION_TASKS else "mse"
        if name == "ce":
            raise ConfigError(f"loss 'ce' needs a label task; {self.name!r} is a restoration task")
        self.loss_name = name
        self._composite = None
        if name == "composite":
            from genesis.methods.losses import CompositeLoss

            self._composite = CompositeLoss()

    def parts(self, spec: NetworkSpec) -> Parts:
        return Parts(backbone="", network=spec)

    def loss(self, outputs: ModelOutput, views: Any) -> tuple[torch.Tensor, dict[str, float]]:
        from genesis.methods import losses

        logits = outputs.output.float()
        composite = getattr(self, "_composite", None)
        if composite is not None:
            parts = composite(logits, views.target, views.mask, vq_loss=outputs.aux_loss)  # VQ term included
            return parts["total"], {k: float(v.detach()) for k, v in parts.items()}
        # Models Genesis transforms compute their changed-voxel mask lazily: only read it when the
        # loss uses it (a full pass over the batch saved on every step)
        region = self.region
        mask = views.mask if region == "mask" else None
        loss = losses.restoration_loss(logits, views.target, mask, region)
        if outputs.aux_loss is not None:
            loss = loss + outputs.aux_loss.float()
        return loss, {}

    def validation(self, outputs: ModelOutput, views: Any) -> dict[str, float]:
        restored = torch.sigmoid(outputs.output.float())
        err = (restored - views.target.float()) ** 2
        result = {"val_mse": float(err.flatten(1).mean(1).sum())}
        if restored.shape == views.target.shape:  # trivial predictors to beat (collapse detection)
            result.update(baseline_sums(restored, views, self.region, self.hides_content))
        if views.mask is not None:
            mask = views.mask.expand_as(err).float()
            masked = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
            result["val_masked_mse"] = float(masked.sum())
            if self.region == "mask":
                result["val_mse"] = result["val_masked_mse"]
        return result

    def per_sample(self, outputs: ModelOutput, views: Any) -> dict[str, torch.Tensor]:
        """Per-sample errors of the model and of the baselines (the collapse check's input)."""
        restored = torch.sigmoid(outputs.output.float())
        if restored.shape != views.target.shape:
            return {}
        return per_sample_errors(restored, views, self.region, self.hides_content)

    def grid(self, views: Any, outputs: ModelOutput, path: Path, title: str, n: int) -> None:
        from genesis.viz import restoration_columns, save_grid

        restored = torch.sigmoid(outputs.output.float())
        k = min(n, views.input.shape[0])
        rows = [[middle_slice(views.input[i]), middle_slice(restored[i]), middle_slice(views.target[i])] for i in range(k)]
        save_grid(rows, path, row_titles=[f"sample {i}" for i in range(k)],
                  col_titles=list(restoration_columns(self.task, self.name)), title=title)
