"""Pretraining entry point: ``run_pretraining(cfg)`` builds data, task, network and loss, then trains.

Everything ``genesis-pretrain`` does goes through here; the CLI only turns flags into a
:class:`~genesis.training.config.PretrainConfig`. Outputs in ``cfg.out``:

* ``last.pt`` / ``best.pt``: ``{"model", "optimizer", "scheduler", "epoch", "rng", "config",
  "task", "model_name", "model_kwargs", "synthetic", "metrics", ...}``, loadable with
  ``torch.load(..., weights_only=True)`` and by ``genesis-finetune`` (``create_model(model_name,
  **model_kwargs)`` then ``load_state_dict(ckpt["model"])``);
* ``config.yaml`` (effective config), ``log.csv``, ``tensorboard/`` (if installed),
  ``grids/epoch_NNNN.png`` (input, restored, original on fixed validation samples).

Staged schemes (``masked_curriculum``, Tariq et al. 2023) train ``task.stages`` in turn in
``stageN/`` folders, each stage starting from the previous stage's best weights; the final stage's
checkpoints are copied to the top level.
"""

from __future__ import annotations

import inspect
import math
import re
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from genesis.config import config_to_dict, save_config
from genesis.device import resolve_device
from genesis.errors import ConfigError, GenesisError
from genesis.models import ModelOutput, create_model
from genesis.checkpoint import load_checkpoint, save_checkpoint
from genesis.training.collapse import baseline_sums
from genesis.training.config import TARIQ_TASKS, PretrainConfig, resolve_optim
from genesis.training.ddp import DistInfo, cleanup_distributed, env_dist_info, setup_distributed
from genesis.training import rundir
from genesis.training.engine import StageResult, StageSpec, Trainer, make_generator, prepare_pair
from genesis.training.logging import write_csv_log


def evaluate_checkpoint(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`genesis.training.evaluate.evaluate_checkpoint` (re-exported here)."""
    from genesis.training.evaluate import evaluate_checkpoint as evaluate

    return evaluate(*args, **kwargs)

__all__ = ["PretrainConfig", "PretrainResult", "run_pretraining", "evaluate_checkpoint"]

#: Checkpoint format tag (bump when the layout changes).
CHECKPOINT_FORMAT = "genesis-pretrain/1"

#: Cap of the default number of validation cubes (they are kept in memory for the whole run).
MAX_DEFAULT_VAL_CUBES = 512

#: Restoration tasks of Tariq et al. that get the composite loss on a VQ-VAE with ``loss=auto``.
TARIQ_RESTORATION_TASKS = TARIQ_TASKS


@dataclass
class PretrainResult:
    """What :func:`run_pretraining` returns.

    Attributes:
        out_dir: the output folder.
        best_path: checkpoint with the best validation loss (of the final stage).
        last_path: checkpoint after the last epoch (of the final stage).
        history: one record per epoch (``stage`` set for staged schemes).
        synthetic: True when trained on the synthetic default data.
    """

    out_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    synthetic: bool = False


# ------------------------------------------------------------------------------------------- data
class SubsetSource:
    """Some volumes of a volume source (train/validation split by volume, never by cube)."""

    def __init__(self, source: Any, indices: list[int]) -> None:
        self.source = source
        self.indices = list(indices)
        self.is_synthetic = bool(getattr(source, "is_synthetic", False))
        self.memory_mapped = bool(getattr(source, "memory_mapped", False))

    def __len__(self) -> int:
        return len(self.indices)

    def load(self, i: int) -> np.ndarray:
        return self.source.load(self.indices[i])

    def name(self, i: int) -> str:
        return self.source.name(self.indices[i])

    def load_acceptance(self, i: int, sampler: Any) -> Any:
        """The stored acceptance map of volume ``i`` (None when the source stores none)."""
        load = getattr(self.source, "load_acceptance", None)
        return load(self.indices[i], sampler) if load is not None else None


def split_volumes(n: int, val_fraction: float) -> tuple[list[int], list[int]]:
    """Last ``round(n * val_fraction)`` volumes (at least one when n >= 2) are held out.

    With a single volume both splits use it (validation cubes then come from other keys).
    """
    if n < 2 or val_fraction <= 0:
        return list(range(n)), list(range(n))
    n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    return list(range(n - n_val)), list(range(n - n_val, n))


def build_source(cfg: PretrainConfig) -> Any:
    """The volume source ``cfg.data`` describes (synthetic default when ``data.data`` is None)."""
    from genesis.data.preprocess import PreprocessConfig
    from genesis.data.sources import volume_source_from_arg

    from genesis.data.radiographs import radiograph_source, uses_radiographs

    if uses_radiographs(cfg):  # chest X-rays: a folder/CSV of radiographs, or synthetic ones
        return radiograph_source(cfg)
    d = cfg.data
    pre = PreprocessConfig(window=tuple(d.window), spacing=tuple(d.spacing) if d.spacing else None,
                           crop_body=d.crop_body, assume_spacing=d.assume_spacing)
    synthetic_cfg = None
    if d.data is None and d.synthetic_shape is not None:
        from genesis.data.synthetic.config import SyntheticConfig

        base = SyntheticConfig()
        # keep the whole chest in view: a smaller grid gets proportionally coarser voxels
        spacing = tuple(s * b / n for s, b, n in zip(base.spacing, base.shape, d.synthetic_shape))
        synthetic_cfg = replace(base, shape=tuple(d.synthetic_shape), spacing=spacing)
    if cfg.plans:  # nnU-Net data: its preprocessed folder, or the plans' normalisation (genesis.nnunet.data)
        from genesis.nnunet import data as nnunet_data

        if nnunet_data.is_preprocessed_folder(d.data):
            return nnunet_data.preprocessed_source(d.data, cfg.plans, cfg.configuration)
        pre = nnunet_data.plans_preprocess_config(pre, cfg.plans, cfg.configuration, keep_spacing=d.spacing is not None)
        source = volume_source_from_arg(d.data, pre, volume_cache_dir(cfg), synthetic_n=d.synthetic_volumes,
                                        seed=cfg.seed, synthetic_cfg=synthetic_cfg, keep_labels=d.keep_labels,
                                        keep_non_hu=d.keep_non_hu, crop=tuple(d.crop))
        return nnunet_data.transposed(source, cfg.plans)
    return volume_source_from_arg(d.data, pre, volume_cache_dir(cfg), synthetic_n=d.synthetic_volumes, seed=cfg.seed,
                                  synthetic_cfg=synthetic_cfg, keep_labels=d.keep_labels,
                                  keep_non_hu=d.keep_non_hu, crop=tuple(d.crop))


def volume_cache_dir(cfg: PretrainConfig) -> Path | None:
    """The cache of preprocessed volumes: ``data.cache_dir``, else the per-user default (None: off)."""
    from genesis.data.cache import default_cache_dir

    if not cfg.data.cache:
        return None
    return Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir()


def prepare_volumes(source: Any, cfg: PretrainConfig, dist: DistInfo, workers: int | None = None) -> None:
    """Build or verify every cache entry before training; loader workers then only memory-map
    verified entries, and no whole volume is held in memory.

    Under DDP the ranks of a node split the entries (each verifies or builds its share, the
    file locks keep an entry from being built twice), wait for each other, and take over the
    rest unverified-by-them: a node reads its cache once, not once per rank.
    """
    import os

    from genesis.data.prepare import prepare_source
    from genesis.data.radiographs import uses_radiographs
    from genesis.data.sampler import SubVolumeSampler
    from genesis.training.ddp import barrier

    if getattr(source, "cache", None) is None:
        return
    n = len(source)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size)) if dist.distributed else 1
    local_rank = dist.local_rank if dist.distributed else 0
    mine = [i for i in range(n) if i % local_world == local_rank]
    log = (lambda line: print(line, file=sys.stderr)) if dist.is_main else None
    if log is not None:
        log(f"volume cache: {source.cache.root}")
    sampler = SubVolumeSampler(sampler_config(cfg)) if not uses_radiographs(cfg) else None
    prepare_source(source, workers=cfg.data.workers if workers is None else workers,
                   progress=cfg.log.progress and dist.is_main, order=mine, log=log, sampler=sampler)
    if local_world > 1:
        barrier(dist)
        for i in range(n):
            if i % local_world != local_rank:
                source.adopt(i, source.entry_path(i))


def sampler_config(cfg: PretrainConfig) -> Any:
    from genesis.data.sampler import SamplerConfig

    crop = tuple(int(c) for c in cfg.data.crop)
    return SamplerConfig.models_genesis(crop=crop) if cfg.data.models_genesis_sampler else SamplerConfig(crop=crop)


def load_val_cubes(source: Any, cfg: PretrainConfig, n: int) -> torch.Tensor:
    """``n`` fixed validation cubes (N, 1, D, H, W) from the held-out volumes."""
    from genesis.data.datasets import CubeDataset

    ds = CubeDataset(source, sampler_config(cfg), n, cfg.seed + 1_000_003)
    return torch.stack([torch.as_tensor(ds[k]) for k in range(n)]).float()


# ------------------------------------------------------------------------------------ task, model
def build_task(cfg: PretrainConfig) -> Any:
    """The proxy task (or scheme) named by ``cfg.task`` with ``cfg.task_params``.

    Tasks that produce 2D or 3D pairs from sub-volumes (``spatial_dims_out``) follow ``cfg.dims``
    unless the parameter is given.
    """
    import proxy_tasks

    cls = proxy_tasks.TASKS.get(cfg.task)
    params = dict(cfg.task_params)
    try:
        accepted = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepted = {}
    if "spatial_dims_out" in accepted and "spatial_dims_out" not in params:
        params["spatial_dims_out"] = cfg.dims
        if cfg.dims == 3 and "slab" in accepted and "slab" not in params:
            # a 3D network needs slabs whose depth survives its 2x poolings
            params["slab"] = 8
    try:
        task = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"task {cfg.task!r}: invalid parameters {params}: {exc}") from None
    dims = getattr(task, "spatial_dims", None)
    if dims == 2 and cfg.dims == 3:
        raise ConfigError(f"task {cfg.task!r} works on 2D slices; add --dims 2")
    return task


def task_kind(task: Any) -> str:
    stages = getattr(task, "stages", None)
    return getattr(stages[0] if stages else task, "kind", "restoration")


@dataclass
class PairShape:
    """What a task's pairs look like (probed on a random batch)."""

    spatial_dims: int
    in_channels: int
    out_channels: int


def probe_pairs(task: Any, cfg: PretrainConfig) -> PairShape:
    """Run the task once on random cubes to learn the network's dims and channels."""
    first = task.stages[0] if getattr(task, "stages", None) else task
    cubes = torch.rand((2, 1, *cfg.data.crop), generator=make_generator(cfg.seed, torch.device("cpu")))
    try:
        pair = prepare_pair(first, cubes, make_generator(cfg.seed, torch.device("cpu")), cfg.dims)
    except Exception as exc:  # noqa: BLE001
        if callable(getattr(first, "on_epoch_start", None)):  # DeepCluster: no labels before its first epoch hook
            return PairShape(cfg.dims, 1, 1)
        raise ConfigError(f"task {cfg.task!r} cannot make training pairs from --dims {cfg.dims} inputs of crop "
                          f"{tuple(cfg.data.crop)}: {exc}") from None
    out_channels = int(pair.target.shape[1]) if pair.target is not None else 1
    dims = pair.input.dim() - 2
    if dims != cfg.dims:  # --dims is never ignored
        raise ConfigError(f"task {cfg.task!r} makes {dims}D training pairs, not the --dims {cfg.dims} asked for: "
                          f"use --dims {dims}, or a task that works on {cfg.dims}D inputs")
    return PairShape(dims, int(pair.input.shape[1]), out_channels)


def fit_dims_to_source(cfg: PretrainConfig, source: Any) -> PretrainConfig:
    """Check ``--dims`` against 2D image data and fit the crop to it.

    2D images (an arrays file of (N, C, H, W), read as depth-1 volumes) need ``--dims 2``; their
    crop becomes (1, H', W') with H', W' the configured sides shrunk to the images (multiples of
    8), so ``--preset quick`` and the defaults work on any image size. The change is printed.

    Raises:
        ConfigError: 2D images with ``--dims 3``.
    """
    if getattr(source, "spatial_dims", 3) != 2:
        return cfg
    if cfg.dims != 2:
        raise ConfigError(f"--data {cfg.data.data} holds 2D images; 3D pretraining needs volumes: use --dims 2")
    h, w = tuple(source.image_shape)[-2:]
    fit = (1, *(max(8, min(c, (n // 8) * 8)) for c, n in zip(cfg.data.crop[1:], (h, w))))
    if fit != tuple(cfg.data.crop):
        print(f"2D images of {h} x {w}: crop {tuple(cfg.data.crop)} -> {fit}", file=sys.stderr)
        cfg = replace(cfg, data=replace(cfg.data, crop=fit))
    return cfg


def check_model_dims(name: str, kwargs: dict[str, Any], shape: PairShape, cfg: PretrainConfig) -> None:
    """A network built for other spatial dims than the task's pairs is a :class:`ConfigError`."""
    try:
        with torch.device("meta"):
            net = create_model(name, **kwargs)
    except Exception:  # noqa: BLE001 - build_model reports construction errors with context
        return
    dims = getattr(getattr(net, "backbone", net), "spatial_dims", None)
    if dims is not None and dims != shape.spatial_dims:
        raise ConfigError(f"--model {name} is a {dims}D network, but --dims {cfg.dims} with task {cfg.task!r} "
                          f"makes {shape.spatial_dims}D pairs: use --model auto or a {shape.spatial_dims}D network")


def resolve_model(cfg: PretrainConfig, task: Any, shape: PairShape) -> tuple[str, dict[str, Any]]:
    """Network name and constructor arguments: ``auto`` picks by task kind and dims.

    unet3d for 3D restoration (Models Genesis), unet2d for 2D restoration, encoder_classifier
    around the matching U-Net for label tasks (Tariq et al.'s encoder-only classifier); the
    VQ-VAE when asked for (``--model vqvae``).
    """
    kind = task_kind(task)
    name = cfg.model
    if name == "auto":
        if kind == "classification":
            name = "encoder_classifier"
        else:
            name = "unet3d" if shape.spatial_dims == 3 else "unet2d"
    w = cfg.width
    if kind == "classification" and name not in ("encoder_classifier", "auto") and _is_pretrained_backbone(name):
        # --model densenet121 / resnet50 on a label or embedding task: that network as the encoder
        cfg = replace(cfg, model_kwargs={"encoder": name, **cfg.model_kwargs})
        name = "encoder_classifier"
    if kind == "classification" and name != "encoder_classifier":
        raise ConfigError(f"task {cfg.task!r} predicts labels; use --model encoder_classifier or auto")
    if kind != "classification" and name == "encoder_classifier":
        raise ConfigError(f"task {cfg.task!r} restores images; encoder_classifier only fits label tasks")
    if name == "encoder_classifier":
        num_classes = label_outputs(task, shape.spatial_dims)
        if num_classes is None:
            raise ConfigError(f"task {cfg.task!r} is a label task without num_classes")
        encoder = cfg.model_kwargs.get("encoder", "unet3d" if shape.spatial_dims == 3 else "unet2d")
        enc_kwargs = _encoder_kwargs(encoder, shape, w)
        enc_kwargs.update(cfg.model_kwargs.get("encoder_kwargs", {}) or {})
        kwargs: dict[str, Any] = {"encoder": encoder, "encoder_kwargs": enc_kwargs, "num_classes": int(num_classes)}
    elif name == "nnunet":  # the plans fix the architecture (genesis.nnunet)
        from genesis.nnunet.plans import pretrain_model_kwargs

        kwargs = pretrain_model_kwargs(cfg, shape.in_channels, shape.out_channels)
    else:
        kwargs = _encoder_kwargs(name, shape, w)
        kwargs["out_channels"] = shape.out_channels
    kwargs.update({k: v for k, v in cfg.model_kwargs.items() if k not in ("encoder", "encoder_kwargs")})
    return name, kwargs


def label_outputs(task: Any, ndim: int) -> int | None:
    """Logits a label task needs: ``task.output_size(ndim)`` (multi-head tasks such as the Rubik's
    cube) or ``task.num_classes``."""
    if hasattr(task, "output_size"):
        return int(task.output_size(ndim))
    return getattr(task, "num_classes", None)


def primary_label(task: Any, logits: torch.Tensor, label: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of the main classification of a task (the permutation for multi-head tasks)."""
    if label.dim() > 1:
        n = task.n_permutation_classes(ndim) if hasattr(task, "n_permutation_classes") else logits.shape[1]
        return logits[:, :n], label[:, 0]
    return logits, label


def _encoder_kwargs(name: str, shape: PairShape, width: int) -> dict[str, Any]:
    """Constructor arguments of a network of base width ``width`` for these pairs."""
    if _is_pretrained_backbone(name):  # torchvision-layout 2D/3D nets: no base width
        return {"in_channels": shape.in_channels}
    if name == "vqvae":
        # the reference VQ-VAE's (64, 128) strided widths at the paper's base width 32
        return {"spatial_dims": shape.spatial_dims, "in_channels": shape.in_channels,
                "channels": [2 * width, 4 * width]}
    return {"in_channels": shape.in_channels, "base_width": width}


def _is_pretrained_backbone(name: str) -> bool:
    """A registered network rebuilt in torchvision's layout (densenet121, resnet50...)."""
    from genesis.models._pretrained import PretrainedBackbone

    try:
        with torch.device("meta"):
            return isinstance(create_model(name), PretrainedBackbone)
    except Exception:  # noqa: BLE001 - unknown names and networks needing arguments are not
        return False


def build_model(name: str, kwargs: dict[str, Any], seed: int) -> nn.Module:
    """Create the network with weights initialised from ``seed`` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return create_model(name, **kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"model {name!r} with {kwargs}: {exc}") from None


# ------------------------------------------------------------------------------------------ losses
def build_loss(cfg: PretrainConfig, task: Any, model_name: str):
    """``(ModelOutput, ProxyPair) -> (loss, parts)``; the model's ``aux_loss`` is always added.

    Restoration: MSE between ``sigmoid(logits)`` and the target, on the whole image or on
    ``pair.mask`` (``task.loss_region``) — Models Genesis. Label tasks: cross-entropy. ``composite``
    (default for Tariq tasks on the VQ-VAE): Tariq et al.'s MSE + masked MSE + SSIM (+ VQ) loss.
    """
    from genesis.training import losses

    kind = task_kind(task)
    name = cfg.loss
    if name == "auto":
        if kind == "classification":
            name = "ce"
        elif model_name == "vqvae" and cfg.task in TARIQ_RESTORATION_TASKS:
            name = "composite"
        else:
            name = "mse"
    if name == "ce" and kind != "classification":
        raise ConfigError(f"loss 'ce' needs a label task; {cfg.task!r} is a restoration task")
    if name != "ce" and kind == "classification":
        raise ConfigError(f"task {cfg.task!r} predicts labels; use loss 'ce' or 'auto'")
    region = getattr(task.stages[0] if getattr(task, "stages", None) else task, "loss_region", "all")
    composite = losses.CompositeLoss() if name == "composite" else None
    task_loss = getattr(task, "loss", None) if callable(getattr(task, "loss", None)) else None

    def loss_fn(out: ModelOutput, pair: Any) -> tuple[torch.Tensor, dict[str, float]]:
        logits = out.output.float()
        if name == "ce":
            # tasks with several label heads (Rubik's cube) define their own cross-entropy
            if task_loss is not None:
                loss = task_loss(logits, pair.label)
            else:
                loss = losses.classification_loss(logits, pair.label)
        elif composite is not None:
            parts = composite(logits, pair.target, pair.mask, vq_loss=out.aux_loss)  # VQ term included
            return parts["total"], {k: float(v.detach()) for k, v in parts.items()}
        else:
            # Models Genesis transforms compute their changed-voxel mask lazily: only read it
            # when the loss uses it (a full pass over the batch saved on every step).
            mask = pair.mask if region == "mask" else None
            loss = losses.restoration_loss(logits, pair.target, mask, region)
        if out.aux_loss is not None:
            loss = loss + out.aux_loss.float()
        return loss, {}

    return loss_fn, name


def monitor_metrics(kind: str, region: str, task: Any = None):
    """Validation metrics summed over samples: restoration MSE (early stopping) or CE/accuracy."""

    def fn(out: ModelOutput, pair: Any) -> dict[str, float]:
        logits = out.output.float()
        if kind == "classification" and hasattr(task, "val_metrics"):  # metadata, barlow_twins
            return task.val_metrics(logits, pair.label)
        if kind == "classification":
            logits, label = primary_label(task, logits, pair.label, pair.input.dim() - 2)
            ce = F.cross_entropy(logits, label, reduction="sum")
            acc = (logits.argmax(1) == label).sum()
            return {"val_ce": float(ce), "val_acc": float(acc)}
        restored = torch.sigmoid(logits)
        err = (restored - pair.target.float()) ** 2
        per_sample = err.flatten(1).mean(1)
        result = {"val_mse": float(per_sample.sum())}
        if restored.shape == pair.target.shape:  # trivial predictors to beat (collapse detection)
            result.update(baseline_sums(restored, pair, region))
        if pair.mask is not None:
            mask = pair.mask.expand_as(err).float()
            masked = (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
            result["val_masked_mse"] = float(masked.sum())
            if region == "mask":
                result["val_mse"] = result["val_masked_mse"]
        return result

    return fn


# -------------------------------------------------------------------------------------- grids
def grid_writer(kind: str, n: int, task: Any = None, task_name: str | None = None):
    """Writes (input, restored, original) middle axial slices of ``n`` validation samples."""

    def middle(x: torch.Tensor) -> np.ndarray:
        x = x.detach().float().cpu()
        img = x[-1]  # last channel: the newest slice of a slab input
        if img.dim() == 3:
            img = img[img.shape[0] // 2]
        return img.numpy()

    def write(pair: Any, out: ModelOutput, path: Path, title: str) -> None:
        from genesis.viz import restoration_columns, save_grid

        rows, names = [], []
        k = min(n, pair.input.shape[0])
        if kind == "classification" and hasattr(task, "describe"):
            described = task.describe(out.output.float(), pair.label)
            for i in range(k):
                rows.append([middle(pair.input[i])])
                names.append(described[i])
            save_grid(rows, path, row_titles=names, col_titles=["input"], title=title)
            return
        if kind == "classification":
            logits, label = primary_label(task, out.output.float(), pair.label, pair.input.dim() - 2)
            pred = logits.argmax(1)
            for i in range(k):
                rows.append([middle(pair.input[i])])
                names.append(f"label {int(label[i])} / pred {int(pred[i])}")
            save_grid(rows, path, row_titles=names, col_titles=["input"], title=title)
            return
        restored = torch.sigmoid(out.output.float())
        for i in range(k):
            rows.append([middle(pair.input[i]), middle(restored[i]), middle(pair.target[i])])
            names.append(f"sample {i}")
        save_grid(rows, path, row_titles=names, col_titles=list(restoration_columns(task, task_name)), title=title)

    return write


# ------------------------------------------------------------------------------------ the driver
def effective_steps(cfg: PretrainConfig, n_train_volumes: int, world_size: int) -> int:
    if cfg.steps_per_epoch is not None:
        return int(cfg.steps_per_epoch)
    return max(1, math.ceil(n_train_volumes * cfg.data.cubes_per_volume / (cfg.batch_size * world_size)))


def run_pretraining(cfg: PretrainConfig) -> PretrainResult:
    """Pretrain a network on a proxy task as configured; resumable, DDP-aware.

    Args:
        cfg: the configuration (``cfg.resume`` continues from ``cfg.out/last.pt``).
    Returns:
        :class:`PretrainResult` with the output folder, checkpoint paths and history.
    Raises:
        ConfigError: invalid settings; InputFileError/DatasetLayoutError: bad ``--data``;
        CheckpointError: unreadable checkpoint on resume; TrainingDivergedError: NaN loss.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is None:  # one GPU per torchrun process
        device = torch.device("cuda", env_dist_info().local_rank)
    _check_memory(cfg, device)
    dist = setup_distributed(device)
    success = False
    try:
        with warnings.catch_warnings():  # data warnings summarised before training are not repeated in it
            result = _run(cfg, device, dist)
        success = True
        return result
    finally:
        cleanup_distributed(dist, success)


def _check_memory(cfg: PretrainConfig, device: torch.device) -> None:
    from genesis.io.integrity import available_memory
    from genesis.training.config import check_memory

    if device.type == "cuda":
        free = int(torch.cuda.mem_get_info(device)[0])
    else:
        free = available_memory()
    check_memory(cfg, free, str(device))


def _run(cfg: PretrainConfig, device: torch.device, dist: DistInfo) -> PretrainResult:
    from genesis.data.datasets import CubeDataset, default_lru_volumes, make_loader

    if cfg.model == "nnunet":  # crop = the configuration's patch size (genesis.nnunet.plans)
        from genesis.nnunet.plans import resolve_pretrain_config

        cfg = resolve_pretrain_config(cfg)

    from genesis.device import describe_precision, resolve_precision

    out = Path(cfg.out)
    precision = resolve_precision(cfg.precision, device, cfg.amp)  # an impossible choice fails here
    if dist.is_main:
        print(describe_precision(precision, device), file=sys.stderr)
    rundir.check_out_dir(out, cfg.resume, cfg.overwrite, remove=dist.is_main)
    if cfg.resume:
        _check_resume(out / "last.pt", cfg)  # before the (possibly slow) data loading
    from genesis.data.radiographs import radiograph_config

    cfg = radiograph_config(cfg)  # radiographs: 2D, depth-1 cubes of the whole image
    source = build_source(cfg)
    cfg = fit_dims_to_source(cfg, source)
    task = build_task(cfg)
    if cfg.data.crop[0] <= 2 and cfg.dims == 2 and getattr(task, "spatial_dims", None) == 3 \
            and not getattr(task, "consumes_metadata", False) and cfg.data.modality != "ct":
        from genesis.data.radiographs import uses_radiographs

        if uses_radiographs(cfg):
            raise ConfigError(f"task {cfg.task!r} works on 3D sub-volumes; radiographs are 2D images "
                              "(use a 2D task: barlow_twins, metadata, rotation, masked_region...)")
    kind = task_kind(task)
    if cfg.resume:
        done = _already_done(out, cfg, task)
        if done is not None:
            return done
    shape = probe_pairs(task, cfg)
    model_name, model_kwargs = resolve_model(cfg, task, shape)
    check_model_dims(model_name, model_kwargs, shape, cfg)
    loss_fn, loss_name = build_loss(cfg, task, model_name)
    region = getattr(task.stages[0] if getattr(task, "stages", None) else task, "loss_region", "all")

    prepare_volumes(source, cfg, dist)
    train_idx, val_idx = split_volumes(len(source), cfg.data.val_fraction)
    _report_data(source, cfg, out, train_idx, val_idx, dist.is_main)
    train_src, val_src = SubsetSource(source, train_idx), SubsetSource(source, val_idx)
    steps = effective_steps(cfg, len(train_src), dist.world_size)
    cfg = replace(cfg, steps_per_epoch=steps,
                  optim=resolve_optim(cfg.optim, cfg.task, kind, model_name, shape.spatial_dims))
    default_val = min(MAX_DEFAULT_VAL_CUBES, len(val_src) * cfg.data.cubes_per_volume)
    n_val = cfg.data.val_cubes or max(cfg.batch_size, default_val)
    # With the cache (default) the dataset's LRU holds memory maps of verified entries, not
    # volumes: workers get keys, read cubes as slices, and share pages through the page cache.
    # Memory maps are cheap handles (file descriptors): keep many; in-memory volumes few.
    lru = default_lru_volumes(getattr(source, "cache", None) is not None)
    train_ds = CubeDataset(train_src, sampler_config(cfg), steps * cfg.batch_size * dist.world_size, cfg.seed,
                           lru_volumes=lru)
    sampler_report = report_acceptance(train_ds, train_src, dist.is_main)
    val_cubes = load_val_cubes(val_src, cfg, n_val) if dist.is_main else torch.empty(0)
    synthetic = bool(getattr(source, "is_synthetic", False))

    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        if synthetic:
            (out / "SYNTHETIC.txt").write_text(
                "This run was trained on synthetic chest CT from genesis.data.synthetic, not on real scans.\n"
            )

    meta = {
        "format": CHECKPOINT_FORMAT,
        "task": cfg.task,
        "task_params": dict(cfg.task_params),
        "task_kind": kind,
        "dims": shape.spatial_dims,
        "loss": loss_name,
        "model_name": model_name,
        "model_kwargs": config_to_dict(model_kwargs),
        "synthetic": synthetic,
        "config": config_to_dict(cfg),
        "sampler_acceptance": sampler_report,
        # file names only (model cards must not leak local paths); see genesis.weights.export
        "scans": {"train": [_scan_name(source, i) for i in train_idx], "val": [_scan_name(source, i) for i in val_idx]},
    }
    model = build_model(model_name, model_kwargs, cfg.seed)
    monitor_key = "val_loss" if kind == "classification" else "val_mse"
    trainer = Trainer(cfg, model, loss_fn, monitor_metrics(kind, region, task), train_ds, make_loader, val_cubes,
                      device, dist, meta, monitor_key=monitor_key,
                      grid_fn=grid_writer(kind, cfg.log.grid_samples, task, cfg.task) if dist.is_main else None)

    stages = list(getattr(task, "stages", None) or [])
    if not stages:
        result = trainer.fit(StageSpec(0, task, out))
        return PretrainResult(out, result.best_path, result.last_path, result.history, synthetic)

    history: list[dict[str, Any]] = []
    init: dict[str, torch.Tensor] | None = None
    result: StageResult | None = None
    changed = False
    for i, stage_task in enumerate(stages):
        # once a stage trains further (e.g. resumed with more --epochs), later stages start over
        # from its new weights, exactly as an uninterrupted run would
        spec = StageSpec(i, stage_task, out / f"stage{i + 1}", init_weights=init, n_stages=len(stages), fresh=changed)
        result = trainer.fit(spec)
        changed = changed or result.epochs_run > 0
        history += [{**r, "stage": i + 1} for r in result.history]
        init = load_checkpoint(result.best_path, map_location=device)["model"]
    assert result is not None
    best, last = out / "best.pt", out / "last.pt"
    if dist.is_main:
        for src, dst in ((result.best_path, best), (result.last_path, last)):
            ckpt = load_checkpoint(src)
            ckpt["stage_dirs"] = [f"stage{i + 1}" for i in range(len(stages))]
            save_checkpoint(ckpt, dst)
        write_csv_log(history, out / "log.csv", columns=("stage",) + _log_columns())
    return PretrainResult(out, best, last, history, synthetic)


def report_acceptance(train_ds: Any, train_src: Any, verbose: bool) -> dict[str, Any]:
    """Acceptance rate of the Models Genesis cube rule on the training volumes.

    With the volume cache (default) it reads every training volume's stored acceptance map
    (built by :func:`prepare_volumes`: no pass over the volumes here). Without it, it computes
    the maps of the first ``lru_volumes`` volumes, which also fills the sampler's in-process
    LRU that forked DataLoader workers inherit. Printed to the run log (stderr) and stored in
    the checkpoints; empty when the sampler does not reject.
    """
    sampler = train_ds.sampler
    if not sampler.cfg.rejects:
        return {}
    stored = train_ds.acceptance(0) is not None
    n = len(train_src) if stored else min(len(train_src), train_ds.lru_volumes)
    rates = [(train_ds.acceptance(i) if stored else sampler.acceptance(train_ds.volume(i), train_src.name(i))).rate
             for i in range(n)]
    report = {"volumes": n, "mean": float(np.mean(rates)), "min": float(min(rates)), "max": float(max(rates)),
              "without_acceptable_cube": int(sum(r == 0 for r in rates))}
    if verbose:
        import sys

        none = report["without_acceptable_cube"]
        tail = f"; {none} volume(s) without an acceptable cube (best of random positions used)" if none else ""
        print(f"sampler: the Models Genesis rule accepts {report['mean']:.1%} of cube positions on average "
              f"(min {report['min']:.1%}, max {report['max']:.1%}, {n} training volumes){tail}", file=sys.stderr)
    return report


def _scan_name(source: Any, i: int) -> str:
    """The file name (no folders) of volume ``i`` of ``source``."""
    name = str(source.name(i))
    return name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]


def _log_columns() -> tuple[str, ...]:
    from genesis.training.logging import LOG_COLUMNS

    return LOG_COLUMNS


def _report_data(source: Any, cfg: PretrainConfig, out: Path, train_idx: list[int], val_idx: list[int],
                 is_main: bool) -> None:
    """Print what data the run uses (found/used/skipped, split) and write ``out/data.csv``.

    Reader warnings of those scans were collected by the discovery and are summarised in the
    table; they are not repeated while training (the caller holds a ``catch_warnings`` context).
    """
    from genesis.data.discovery import inspect_records, report_without_reading
    from genesis.data.public.folder import VolumeRecord
    from genesis.errors import GenesisWarning

    report = getattr(source, "data_report", None)
    if report is None and hasattr(source, "records"):  # a manifest or one file: listed scans, all kept
        from genesis.io.readers import assumed_spacing

        with assumed_spacing(cfg.data.assume_spacing):
            report = inspect_records(source.records, str(cfg.data.data))
    if report is None:
        kind = "synthetic chest CT (generated)" if getattr(source, "is_synthetic", False) else type(source).__name__
        report = report_without_reading([VolumeRecord(Path(source.name(i))) for i in range(len(source))], kind)
    report.set_split(train_idx, val_idx)
    for message in {m for scan in report.scans for m in scan.seen_warnings}:
        warnings.filterwarnings("ignore", message=re.escape(message) + "$", category=GenesisWarning)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        path = report.write_csv(out / "data.csv")
        print(report.table(path), file=sys.stderr, flush=True)


def _already_done(out: Path, cfg: PretrainConfig, task: Any) -> PretrainResult | None:
    """The finished run in ``out`` when ``--resume`` has nothing left to do ("already at epoch N of N")."""
    stages = list(getattr(task, "stages", None) or [])
    lasts = [out / f"stage{i + 1}" / "last.pt" for i in range(len(stages))] if stages else [out / "last.pt"]
    if not (out / "last.pt").is_file() or not all(p.is_file() for p in lasts):
        return None
    ckpts = [load_checkpoint(p) for p in lasts]
    if not all(rundir.finished_epochs(c, cfg.epochs) for c in ckpts):
        return None
    last = load_checkpoint(out / "last.pt")
    epoch = int(last.get("epoch", 0))
    how = " (stopped early)" if last.get("stopped_early") else ""
    staged = f" in each of {len(stages)} stages" if stages else ""
    if env_dist_info().is_main:
        print(f"already at epoch {epoch} of {cfg.epochs}{staged}{how}: nothing left to train "
              "(raise --epochs to continue)", file=sys.stderr)
    history: list[dict[str, Any]] = []
    for i, c in enumerate(ckpts):
        history += [{**h, "stage": i + 1} if stages else dict(h) for h in c.get("history", [])]
    return PretrainResult(out, out / "best.pt", out / "last.pt", history, bool(last.get("synthetic")))


def _check_resume(last: Path, cfg: PretrainConfig) -> None:
    """Refuse to resume a run of another task or other settings (a likely wrong --out or flag)."""
    if not last.is_file():
        stage1 = last.parent / "stage1" / "last.pt"
        if not stage1.is_file():
            if (last.parent / "best.pt").is_file():
                raise GenesisError(
                    "--resume: only best.pt is here, no last.pt (the training state is saved in last.pt); "
                    "start over without --resume (or use another --out), or fine-tune from best.pt (genesis-finetune --weights)",
                    last.parent,
                )
            raise GenesisError("--resume: nothing to resume (no last.pt)", last.parent)
        last = stage1
    ckpt = load_checkpoint(last)
    if ckpt.get("task") not in (None, cfg.task):
        raise ConfigError(f"--resume: this run trained task {ckpt.get('task')!r}, not {cfg.task!r}", last)
    if isinstance(ckpt.get("config"), dict):
        rundir.check_resume_settings(ckpt["config"], config_to_dict(cfg), last)
