"""``FinetuneConfig``: every setting of a fine-tuning experiment, with the papers' defaults.

Defaults follow Zhou et al. 2021 (Models Genesis, sec. 3.2 and methods digest section 6): Adam with
learning rate 1e-3 (betas 0.9/0.999, eps 1e-8), all layers fine-tuned, early stopping on the
validation metric, 3D augmentation (flips, transposes / 90-degree rotations, Gaussian noise), ten
repeats for the published tables. Bootstrap CIs follow Ke et al. 2023 (1,000 resamples of the test
set, 2.5/97.5 percentiles).

Configs load from YAML with :func:`genesis.config.load_config` (unknown keys are errors) and the
CLI overrides single keys (``--lr`` -> ``optim.lr``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genesis.errors import ConfigError

INIT_CHOICES = ("scratch", "uniform", "xavier", "msra")
FREEZE_CHOICES = ("none", "encoder")


@dataclass
class OptimConfig:
    """Adam settings (Zhou et al. 2021: lr 1e-3, beta 0.9/0.999, eps 1e-8)."""

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0


@dataclass
class AugmentConfig:
    """Random 3D augmentation applied to image and mask together (MONAI dictionary transforms).

    Transposes come from 90-degree rotations combined with flips (a transpose is a rotation
    followed by a flip); rotations only turn planes whose two sides are equal, so crop shapes stay.
    """

    enabled: bool = True
    flip_prob: float = 0.5  # per axis
    rotate90_prob: float = 0.5  # per plane with equal sides
    noise_prob: float = 0.5
    noise_std: float = 0.02  # on the [0, 1] intensity scale


@dataclass
class EvalConfig:
    """How test metrics and their uncertainty are computed."""

    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    #: sliding-window inference over whole test volumes / regions (segmentation targets)
    sw_overlap: float = 0.25
    sw_batch_size: int = 4
    sw_mode: str = "gaussian"
    #: NCS test regions are this many times the crop size around each nodule (whole volumes for
    #: LCS/BMS), so the model is evaluated beyond the training crop.
    region_scale: float = 2.0


@dataclass
class SyntheticDataConfig:
    """The embedded synthetic default used when no ``--data`` is given (outputs say so).

    ``shape`` is (z, y, x) of each synthetic volume; ``None`` keeps the generator's default.
    """

    n_train: int = 12
    n_val: int = 4
    n_test: int = 6
    shape: tuple[int, int, int] | None = None
    seed: int = 1000


@dataclass
class FinetuneConfig:
    """One fine-tuning experiment: a target, an initialisation, label fractions and repeats.

    Attributes:
        target: registered target name (``ncs``, ``ncc``, ``ecc``, ``lcs``, ``bms``, ``pe``).
        data: dataset root in the target's real on-disk layout; ``None`` uses synthetic data.
        weights: pretrained weights (a checkpoint path or a released-weights name); ``None`` trains
            from a random initialisation.
        model: the network. ``unet3d``: the Models Genesis 3D U-Net (its encoder + head for
            classification). Classification targets (ncc, ecc, pe) also take the baselines of Ke
            et al. 2023: ``r3d_18``, ``mc3_18``, ``r2plus1d_18`` (Kinetics-400), ``resnet18/34/50``,
            ``resnext101_32x8d`` (ImageNet, 2D over the window's slices), ``lrcn``, ``resnet18_3d``,
            ``resnet50_3d`` (MedicalNet); see :mod:`finetune.baselines`. ``None`` (default): the
            architecture of ``weights`` (manifest or checkpoint), else ``unet3d``.
        model_args: extra constructor arguments of a baseline, e.g. ``{"normalize": false}`` or
            ``{"backbone": "resnet18"}`` for ``lrcn``.
        init: random initialisation of layers not loaded from weights: ``scratch`` (PyTorch
            defaults), ``uniform`` (U(-0.05, 0.05)), ``xavier`` (Glorot uniform), ``msra`` (He uniform).
        freeze: ``encoder`` keeps the loaded encoder fixed; ``none`` fine-tunes all layers.
        linear_probe: classification only: frozen encoder + a single linear layer on pooled features.
        head_hidden: hidden units of the classification head (GAP -> Linear(C, hidden) -> ReLU ->
            Linear(hidden, n)); the Models Genesis head has 1024. Baselines keep their single
            linear head (Ke et al. replace the final layer), so this and ``width`` are U-Net only.
        width: base width of the U-Net (32 in the paper); taken from the checkpoint when it says.
        crop: training crop (D, H, W); ``None`` uses the target's default (e.g. NCS 32x64x64).
        window: HU window mapped to [0, 1]; ``None`` uses the target's default.
        label_fractions: fractions of the training labels to use (a label-efficiency curve).
        repeats: runs per fraction with seeds ``seed, seed+1, ...``.
        patience: early stopping patience in epochs on the validation metric.
        balance: draw positives and negatives equally often when training classifiers.
        precise_bn_batches: before every validation, recompute the batch-norm running statistics
            of the trainable layers from this many training batches (the weights held fixed), so
            eval-mode predictions use statistics of the current weights rather than a lagging
            moving average (Wu & Johnson 2021, "Rethinking 'batch' in BatchNorm"). Matters for
            short runs with small batches; ``0`` (default) keeps PyTorch's moving averages.
        max_negatives_per_scan: real candidate data (ncc, ecc): keep at most this many randomly
            chosen negative candidates per scan in every split (all positives are kept), so the
            cubes fit in memory; ``None`` uses the target's default (ncc 30, ecc unlimited),
            ``0`` keeps all. Random negative subsampling leaves the expected AUC unchanged.
        uncertain: multi-label targets (chexpert): uncertain labels are ``ignore``-d (masked out of
            the loss and the AUCs, U-Ignore), mapped to ``ones`` (U-Ones) or to ``zeros`` (U-Zeros).
        study_max: multi-label targets: score a study by the maximum over its views.
        compare: another output folder whose runs are compared with ours (two-sample t-tests).
        resume: continue interrupted runs from their ``last.pt``; finished runs are reused.
    """

    target: str = "ncs"
    data: str | None = None
    weights: str | None = None
    model: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    init: str = "scratch"
    freeze: str = "none"
    linear_probe: bool = False
    head_hidden: int = 1024
    out: str = "runs/finetune"
    width: int = 32
    crop: tuple[int, int, int] | None = None
    window: tuple[float, float] | None = None
    epochs: int = 100
    steps_per_epoch: int = 50
    batch_size: int = 8
    patience: int = 10
    label_fractions: tuple[float, ...] = (1.0,)
    seed: int = 0
    repeats: int = 1
    device: str = "auto"
    amp: bool = True
    balance: bool = True
    precise_bn_batches: int = 0
    max_negatives_per_scan: int | None = None
    compare: str | None = None
    resume: bool = False
    uncertain: str = "ignore"
    study_max: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    synthetic: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)

    def validate(self) -> "FinetuneConfig":
        """Check value ranges; raises :class:`ConfigError` naming the setting."""
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ConfigError(f"model must be a registered network name, got {self.model!r}")
        if not isinstance(self.model_args, dict):
            raise ConfigError(f"model_args must be a mapping of constructor arguments, got {self.model_args!r}")
        if self.init not in INIT_CHOICES:
            raise ConfigError(f"init must be one of {', '.join(INIT_CHOICES)}, got {self.init!r}")
        if self.freeze not in FREEZE_CHOICES:
            raise ConfigError(f"freeze must be one of {', '.join(FREEZE_CHOICES)}, got {self.freeze!r}")
        if not self.label_fractions:
            raise ConfigError("label_fractions must list at least one fraction")
        for f in self.label_fractions:
            if not 0.0 < f <= 1.0:
                raise ConfigError(f"label fraction {f} must be in (0, 1]")
        if self.precise_bn_batches < 0:
            raise ConfigError(f"precise_bn_batches must be 0 (off) or more, got {self.precise_bn_batches}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "repeats", "width", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        # depth 1 is a 2D image (radiographs: --crop 1 224 224)
        if self.crop is not None and any((c < 8 or c % 8) and not (i == 0 and c == 1) for i, c in enumerate(self.crop)):
            raise ConfigError(f"crop sides must be multiples of 8 (three poolings), got {self.crop}")
        if self.uncertain not in ("ignore", "ones", "zeros"):
            raise ConfigError(f"uncertain must be ignore, ones or zeros, got {self.uncertain!r}")
        if self.optim.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.optim.weight_decay}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}")
        if not 0.0 < self.evaluation.confidence < 1.0:
            raise ConfigError(f"evaluation.confidence must be in (0, 1), got {self.evaluation.confidence}")
        return self


#: ``--preset quick``: a tiny run that finishes in about a minute on a 2-core CPU (README demo).
PRESETS: dict[str, dict[str, object]] = {
    "quick": {
        "width": 4,
        "epochs": 4,
        "steps_per_epoch": 8,
        "batch_size": 2,
        "patience": 4,
        "head_hidden": 32,
        "evaluation.bootstrap_resamples": 200,
        "evaluation.region_scale": 1.5,
        "evaluation.sw_batch_size": 8,
        "precise_bn_batches": 8,
        "synthetic.n_train": 3,
        # two volumes: one validation nodule made early stopping a coin flip
        "synthetic.n_val": 2,
        "synthetic.n_test": 2,
        # 128 mm in-plane at 1 mm: at 96 mm the lungs (and most nodules) were cut by the volume edge
        "synthetic.shape": (64, 128, 128),
    },
}
