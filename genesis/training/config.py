"""Pretraining settings as nested dataclasses whose defaults reproduce the papers.

Defaults follow Models Genesis (Zhou et al. 2021; methods.md section 5): SGD with momentum 0.9,
learning rate 1.0, halve the rate when the validation loss plateaus, batch 6, early stopping on
the validation restoration MSE with patience 50, 64x64x32 sub-volumes (``crop=(32, 64, 64)``),
about 32 cubes per scan. ``--preset quick`` swaps in a tiny CPU configuration
(:func:`quick_overrides`) for demos; it is not a paper setting.

Load one with ``genesis.config.load_config(PretrainConfig, yaml_path, {"optim.lr": 0.1})``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from genesis.data.config import DataConfig
from genesis.config import check_seed
from genesis.errors import ConfigError

__all__ = ["DataConfig", "EarlyStopConfig", "LogConfig", "OptimConfig", "PretrainConfig", "ScheduleConfig",
           "check_memory", "quick_overrides", "resolve_optim"]


@dataclass
class OptimConfig:
    """Optimizer (Models Genesis: SGD, momentum 0.9, lr 1.0; Tariq et al.: RAdam lr 1e-3).

    ``name="auto"`` picks per task (:func:`resolve_optim`): SGD for the Models Genesis restoration
    tasks on the 3D U-Net, as in that paper, and RAdam for 2D training, other networks, the Tariq
    et al. family and label tasks, where SGD at lr 1.0 diverges. ``lr=None`` means the paper's rate for the chosen optimizer.
    """

    name: str = "auto"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: ``plateau`` halves the rate after ``patience`` epochs without a
    better validation loss (the Keras reference), ``step`` halves it every ``step_size`` epochs
    (the PyTorch reference), ``none`` keeps it constant."""

    name: str = "plateau"
    factor: float = 0.5
    patience: int = 20
    step_size: int = 40
    min_lr: float = 1e-6


@dataclass
class EarlyStopConfig:
    """Stop after ``patience`` epochs without a validation loss better by ``min_delta``."""

    patience: int = 50
    min_delta: float = 0.0


@dataclass
class LogConfig:
    """Outputs besides checkpoints: progress bar, TensorBoard (if installed), PNG grids."""

    progress: bool = True
    tensorboard: bool = True
    grid_samples: int = 4
    grids: bool = True


@dataclass
class PretrainConfig:
    """Every setting of ``genesis-pretrain``.

    Attributes:
        task: a registered proxy task or scheme (``proxy_tasks.list_tasks()``).
        task_params: keyword arguments for the task's constructor.
        dims: 3 trains on sub-volumes; 2 on axial slices taken from them (Tariq et al.).
        model: registered network, or ``auto`` (unet3d for 3D restoration, unet2d for 2D,
            encoder_classifier for label tasks).
        model_kwargs: extra constructor arguments for the network.
        width: base width of the network (Models Genesis: 32).
        loss: ``auto`` (MSE on the sigmoid output; the composite loss for Tariq tasks on a VQ-VAE;
            cross-entropy for label tasks), ``mse``, ``composite`` or ``ce``.
        epochs: maximum epochs (per stage for staged schemes); early stopping usually ends first.
        steps_per_epoch: optimizer steps per epoch (None: ``cubes_per_volume`` x train scans / batch).
        batch_size: cubes per step and process (Models Genesis: 6).
        seed: seeds data order, cube sampling, proxy randomness and weight initialisation.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:n]``.
        amp: mixed precision allowed (False: fp32 when ``precision`` is ``auto``; ``--no-amp``).
        precision: ``auto`` (bf16 autocast on CUDA where supported, else fp16 with loss scaling;
            fp32 on CPUs), ``fp32``, ``bf16``
            or ``fp16`` (CUDA only). See :func:`genesis.device.resolve_precision`.
        out: output folder.
        resume: continue from ``out/last.pt``.
        overwrite: replace a run already in ``out`` (without it, or ``resume``, that is an error).
        plans: nnU-Net plans file (``--model nnunet``; with any model, ``--data`` then gets the
            plans' intensity normalisation and spacing, see :mod:`genesis.nnunet`).
        configuration: nnU-Net configuration of ``plans`` (``3d_fullres``, ``3d_lowres``...).
    """

    task: str = "combined"
    task_params: dict[str, Any] = field(default_factory=dict)
    dims: int = 3
    model: str = "auto"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    width: int = 32
    loss: str = "auto"
    epochs: int = 10000
    steps_per_epoch: int | None = None
    batch_size: int = 6
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    precision: str = "auto"
    out: str = "runs/pretrain"
    resume: bool = False
    overwrite: bool = False
    plans: str | None = None
    configuration: str = "3d_fullres"
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for settings that cannot work, naming the setting."""
        check_seed(self.seed)
        if self.dims not in (2, 3):
            raise ConfigError(f"dims must be 2 or 3, got {self.dims}")
        if self.data.modality not in ("auto", "ct", "xray"):
            raise ConfigError(f"data.modality must be auto, ct or xray, got {self.data.modality!r}")
        if self.data.image_size < 32:
            raise ConfigError(f"data.image_size must be at least 32 (five 2x poolings), got {self.data.image_size}")
        # Fail before any data is read: the U-Nets pool three times (sides divisible by 8).
        sides = self.data.crop if self.dims == 3 else self.data.crop[1:]
        if self.model in ("auto", "unet3d", "unet2d", "encoder_classifier") and any(s % 8 for s in sides):
            raise ConfigError(
                f"crop {tuple(self.data.crop)}: the U-Net pools three times, so the crop sides must be "
                "multiples of 8 (e.g. --crop 32 64 64)"
            )
        if self.model == "nnunet" and not self.plans:
            raise ConfigError("--model nnunet needs --plans nnUNet_preprocessed/DatasetXXX/nnUNetPlans.json")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.width < 1:
            raise ConfigError(f"width must be >= 1, got {self.width}")
        if len(self.data.crop) != 3 or min(self.data.crop) < 1:
            raise ConfigError(f"data.crop must be three positive sizes (D, H, W), got {self.data.crop}")
        if not 0.0 <= self.data.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in [0, 1), got {self.data.val_fraction}")
        if self.optim.name not in ("auto", "sgd", "adam", "radam", "adamw"):
            raise ConfigError(f"optim.name must be auto, sgd, adam, radam or adamw, got {self.optim.name!r}")
        if self.optim.lr is not None and self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}")
        if self.schedule.name not in ("plateau", "step", "none"):
            raise ConfigError(f"schedule.name must be plateau, step or none, got {self.schedule.name!r}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.loss not in ("auto", "mse", "composite", "ce"):
            raise ConfigError(f"loss must be auto, mse, composite or ce, got {self.loss!r}")
        d, o, sch, es = self.data, self.optim, self.schedule, self.early_stop
        _at_least(0, seed=self.seed, **{"data.workers": d.workers, "schedule.patience": sch.patience,
                                        "log.grid_samples": self.log.grid_samples})
        _at_least(1, **{"early_stop.patience": es.patience, "schedule.step_size": sch.step_size,
                        "data.cubes_per_volume": d.cubes_per_volume, "data.synthetic_volumes": d.synthetic_volumes})
        if d.val_cubes is not None:
            _at_least(1, **{"data.val_cubes": d.val_cubes})
        if not 0.0 <= o.momentum < 1.0:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {o.momentum}")
        if o.weight_decay < 0 or es.min_delta < 0 or sch.min_lr < 0:
            raise ConfigError("optim.weight_decay, early_stop.min_delta and schedule.min_lr must not be negative, "
                              f"got {o.weight_decay}, {es.min_delta}, {sch.min_lr}")
        if not 0.0 < sch.factor < 1.0:
            raise ConfigError(f"schedule.factor must be in (0, 1), got {sch.factor}")
        if not d.window[0] < d.window[1]:
            raise ConfigError(f"data.window must be (low, high) with low < high, got {d.window}")
        if d.assume_spacing is not None and d.assume_spacing <= 0:
            raise ConfigError(f"data.assume_spacing must be a positive number of mm, got {d.assume_spacing}")
        if d.spacing is not None and min(d.spacing) <= 0:
            raise ConfigError(f"data.spacing must be positive (mm), got {d.spacing}")
        if d.max_image_pixels is not None and d.max_image_pixels < 1:
            raise ConfigError(f"data.max_image_pixels must be positive (or null: no limit), got {d.max_image_pixels}")
        if d.resident_mb is not None and d.resident_mb < 0:
            raise ConfigError(f"data.resident_mb must not be negative (or null: no bound), got {d.resident_mb}")
        if d.group_size is not None and d.group_size < 1:
            raise ConfigError(f"data.group_size must be at least 1, got {d.group_size}")
        if d.synthetic_shape is not None and min(d.synthetic_shape) < 1:
            raise ConfigError(f"data.synthetic_shape must be positive, got {d.synthetic_shape}")
        check_out_dir(self.out)


def check_memory(cfg: PretrainConfig, free_bytes: int | None, where: str) -> None:
    """Refuse a crop/batch/width whose activations cannot fit, before any data is read.

    The estimate is a deliberate lower bound (about 8 x width float32 values kept per input
    voxel for the backward pass at full resolution; a 3D U-Net keeps more), so only settings that
    certainly fail are refused.

    Raises:
        ConfigError: naming the estimate, the free memory and the settings to lower.
    """
    if free_bytes is None:
        return
    voxels = cfg.data.crop[0] * cfg.data.crop[1] * cfg.data.crop[2] if cfg.dims == 3 else cfg.data.crop[1] * cfg.data.crop[2]
    need = 8 * max(cfg.width, 1) * voxels * cfg.batch_size * 4
    if need > free_bytes:
        raise ConfigError(
            f"crop {tuple(cfg.data.crop)} x batch {cfg.batch_size} x width {cfg.width} needs at least "
            f"{need / (1 << 30):.1f} GiB for activations but {free_bytes / (1 << 30):.1f} GiB is free on {where}; "
            "use a smaller --crop, --batch-size or --width")


def _at_least(low: int, **values: int) -> None:
    for name, value in values.items():
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")


def check_out_dir(out: str) -> None:
    """An output folder must be a folder: refuse an existing file (it would fail much later)."""
    from pathlib import Path

    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError("--out names an existing file; give a folder", path)


#: Restoration tasks of Tariq et al. (2023), trained with RAdam at lr 1e-3 in that paper.
TARIQ_TASKS = frozenset({"masked_region", "masked_curriculum", "next_slice", "denoise_sp"})


def resolve_optim(
    optim: OptimConfig, task: str, task_kind: str, model: str = "unet3d", dims: int = 3
) -> OptimConfig:
    """Fill in ``optim.name="auto"`` and ``optim.lr=None`` for ``task`` (see :class:`OptimConfig`).

    SGD at lr 1.0 is the recipe Models Genesis published for its 3D U-Net only; any other network
    or 2D training gets RAdam at 1e-3 (SGD at 1.0 diverges or stalls outside that recipe).
    """
    name = optim.name
    if name == "auto":
        genesis_recipe = task_kind == "restoration" and task not in TARIQ_TASKS and model == "unet3d" and dims == 3
        name = "sgd" if genesis_recipe else "radam"
    lr = optim.lr if optim.lr is not None else (1.0 if name == "sgd" else 1e-3)
    return replace(optim, name=name, lr=lr)


def quick_overrides() -> dict[str, Any]:
    """Dotted overrides of ``--preset quick``: about a minute on a 2-core CPU, loss visibly falls.

    Tiny network and cubes, a few small synthetic scans, Adam (SGD at lr 1.0 needs many more
    steps to settle on a width-4 network). Flags given explicitly still win over these.
    """
    return {
        "width": 4,
        "data.crop": (16, 32, 32),
        "data.synthetic_volumes": 3,
        "data.synthetic_shape": (48, 96, 96),
        "data.val_cubes": 8,
        "data.models_genesis_sampler": False,
        "epochs": 6,
        "steps_per_epoch": 12,
        "batch_size": 4,
        "optim.name": "adam",
        "optim.lr": 3e-3,
        "schedule.name": "none",
        "device": "auto",
        "log.grid_samples": 3,
    }
