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

from genesis.config import check_seed
from genesis.errors import ConfigError

INIT_CHOICES = ("scratch", "uniform", "xavier", "msra")
CHANNEL_CHOICES = ("repeat", "neighbors", "windows")
AGGREGATE_CHOICES = ("max", "mean")
VIEW_CHOICES = ("window", "axial", "orthogonal")
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
    #: random in-plane rotation within +-this many degrees; None: the target's default (pe: 20,
    #: Ke et al.; the cube and segmentation targets: 0)
    rotate_degrees: float | None = None


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
        target: registered target name (``ncs``, ``ncc``, ``ecc``, ``lcs``, ``bms``, ``pe``, or the generic
            ``segmentation`` / ``classification`` on your own ``--data``, see :mod:`finetune.targets.generic`).
        data: dataset root in the target's real on-disk layout; ``None`` uses synthetic data.
        weights: pretrained weights (a checkpoint path or a released-weights name); ``None`` trains
            from a random initialisation.
        model: the network. ``unet3d``: the Models Genesis 3D U-Net (its encoder + head for
            classification). Classification targets (ncc, ecc, pe) also take the baselines of Ke
            et al. 2023: ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``, ``mvit_v2_s``, ``swin3d_t``,
            ``slow_r50``, ``slowfast_r50``, ``r2plus1d_r50``, ``csn_r101`` (Kinetics-400), ``penet``, ``resnet18/34/50``,
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
        crop: training crop (D, H, W), or (H, W) for 2D; ``None`` uses the target's default (e.g.
            NCS 32x64x64; the generic targets fit it to the images).
        window: HU window mapped to [0, 1]; ``None`` uses the target's default.
        dims: 2 or 3: the generic targets (``segmentation``, ``classification``) check that the
            data and network have this many spatial dims; ``None`` takes the data's.
        test_data: generic targets: a separate labelled test set in any dataset layout.
        assume_spacing: mm used where a scan's voxel spacing is missing, zero, negative or NaN (an
            explicit opt-in, with a warning); ``None`` (default) makes such a scan an error.
        group_size: generic targets on an arrays file without ``groups``: each run of this many
            consecutive samples is one patient (splits and label fractions draw whole patients).
        label_fractions: fractions of the training labels to use (a label-efficiency curve).
        repeats: runs per fraction with seeds ``seed, seed+1, ...``; below 1.0 each repeat draws
            another labelled subset (patients) while distinct subsets exist.
        min_train_patients: a label fraction leaving fewer training patients than this is a
            warning in the log and in ``metrics.md`` (its numbers rest on very few patients).
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
        channels: how the RGB baselines see grey CT: ``repeat`` (the slice three times, Ke et al.),
            ``neighbors`` (slices n-1, n, n+1) or ``windows`` (lung, mediastinum and PE HU windows of
            the slice; the input window then defaults to their union, -1350..450 HU). U-Net: ``repeat``.
        aggregate: study-level targets (``pe``): a study's prediction is the ``max`` (Ke et al.) or
            ``mean`` of its window predictions; 2D baselines score a window by the same reduction
            over its slices' logits.
        view: 2D baselines on classification crops: ``window`` (every slice scored, then
            ``aggregate``), ``axial`` (the centre slice and its two neighbours as RGB, the 2D input of
            Models Genesis Table 4) or ``orthogonal`` (axial, coronal and sagittal planes through the
            crop centre as RGB, the 2.5D input). ``ncs`` with the U-Net: a ``unet2d`` on axial planes
            (``axial``, also ``dims=2``) or on axial, coronal and sagittal planes, averaged
            (``orthogonal``), scored in 3D; ``channels`` ``repeat`` = one slice, ``neighbors`` =
            three adjacent slices (:mod:`finetune.slicewise`).
        lr_search: before the experiment, train one run per ``lr_grid`` rate on
            ``lr_search_fraction`` of the training split and use the rate with the best validation
            metric (Ke et al.: 1e-1 ... 1e-5 on 10%); the choice is recorded in ``metrics.json``.
        lr_grid: the learning rates tried by ``lr_search``.
        lr_search_fraction: the share of training labels the search runs use.
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
    crop: tuple[int, ...] | None = None
    window: tuple[float, float] | None = None
    dims: int | None = None
    test_data: str | None = None
    group_size: int | None = None
    assume_spacing: float | None = None
    epochs: int = 100
    steps_per_epoch: int = 50
    batch_size: int = 8
    patience: int = 10
    label_fractions: tuple[float, ...] = (1.0,)
    seed: int = 0
    repeats: int = 1
    min_train_patients: int = 3
    device: str = "auto"
    amp: bool = True
    precision: str = "auto"
    balance: bool = True
    precise_bn_batches: int = 0
    max_negatives_per_scan: int | None = None
    channels: str = "repeat"
    aggregate: str = "max"
    view: str = "window"
    lr_search: bool = False
    lr_grid: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    lr_search_fraction: float = 0.1
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
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ConfigError(f"model must be a registered network name, got {self.model!r}")
        if not isinstance(self.model_args, dict):
            raise ConfigError(f"model_args must be a mapping of constructor arguments, got {self.model_args!r}")
        if self.init not in INIT_CHOICES:
            raise ConfigError(f"init must be one of {', '.join(INIT_CHOICES)}, got {self.init!r}")
        if self.channels not in CHANNEL_CHOICES:
            raise ConfigError(f"channels must be one of {', '.join(CHANNEL_CHOICES)}, got {self.channels!r}")
        if self.lr_search and (not self.lr_grid or any(not lr > 0 for lr in self.lr_grid)):
            raise ConfigError(f"lr_grid must list positive learning rates, got {self.lr_grid}")
        if not 0.0 < self.lr_search_fraction <= 1.0:
            raise ConfigError(f"lr_search_fraction must be in (0, 1], got {self.lr_search_fraction}")
        if self.view not in VIEW_CHOICES:
            raise ConfigError(f"view must be one of {', '.join(VIEW_CHOICES)}, got {self.view!r}")
        if self.aggregate not in AGGREGATE_CHOICES:
            raise ConfigError(f"aggregate must be one of {', '.join(AGGREGATE_CHOICES)}, got {self.aggregate!r}")
        if self.freeze not in FREEZE_CHOICES:
            raise ConfigError(f"freeze must be one of {', '.join(FREEZE_CHOICES)}, got {self.freeze!r}")
        if not self.label_fractions:
            raise ConfigError("label_fractions must list at least one fraction")
        for f in self.label_fractions:
            if not 0.0 < f <= 1.0:
                raise ConfigError(f"label fraction {f} must be in (0, 1]")
        if self.precise_bn_batches < 0:
            raise ConfigError(f"precise_bn_batches must be 0 (off) or more, got {self.precise_bn_batches}")
        for name in ("epochs", "steps_per_epoch", "batch_size", "repeats", "width", "patience", "min_train_patients"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        # depth 1 is a 2D image (radiographs: --crop 1 224 224)
        if self.crop is not None and any((c < 8 or c % 8) and not (i == 0 and c == 1) for i, c in enumerate(self.crop)):
            raise ConfigError(f"crop sides must be multiples of 8 (three poolings), got {self.crop}")
        if self.crop is not None and len(self.crop) not in (2, 3):
            raise ConfigError(f"crop must be (D, H, W) or, for 2D, (H, W); got {self.crop}")
        if self.dims not in (None, 2, 3):
            raise ConfigError(f"dims must be 2 or 3, got {self.dims}")
        if self.dims is not None and self.crop is not None and len(self.crop) != self.dims:
            raise ConfigError(f"--dims {self.dims} needs a crop of {self.dims} sides, got {tuple(self.crop)}")
        if self.assume_spacing is not None and not self.assume_spacing > 0:
            raise ConfigError(f"assume_spacing must be a positive number of mm, got {self.assume_spacing}")
        if self.group_size is not None and self.group_size < 1:
            raise ConfigError(f"group_size must be at least 1, got {self.group_size}")
        if self.window is not None and not self.window[1] > self.window[0]:
            raise ConfigError(f"window must be (low, high) with low < high, got {self.window}")
        if self.uncertain not in ("ignore", "ones", "zeros"):
            raise ConfigError(f"uncertain must be ignore, ones or zeros, got {self.uncertain!r}")
        if self.optim.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay must be >= 0, got {self.optim.weight_decay}")
        if self.optim.lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {self.optim.lr}")
        if not 0.0 < self.evaluation.confidence < 1.0:
            raise ConfigError(f"evaluation.confidence must be in (0, 1), got {self.evaluation.confidence}")
        check_seed(self.seed, runs=self.repeats)  # runs use seed, seed + 1, ...
        if self.optim.eps <= 0 or self.optim.weight_decay < 0 or not all(0.0 <= b < 1.0 for b in self.optim.betas):
            raise ConfigError(f"optim: eps must be positive, weight_decay >= 0 and betas in [0, 1); got {self.optim}")
        a = self.augment
        if not all(0.0 <= q <= 1.0 for q in (a.flip_prob, a.rotate90_prob, a.noise_prob)) or a.noise_std < 0:
            raise ConfigError(f"augment: probabilities must be in [0, 1] and noise_std >= 0; got {a}")
        if self.window is not None and not self.window[0] < self.window[1]:
            raise ConfigError(f"window must be (low, high) with low < high, got {self.window}")
        from genesis.training.config import check_out_dir

        check_out_dir(self.out)
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
