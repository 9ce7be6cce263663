"""``genesis-finetune``: fine-tune on a target task and report honest statistics.

Examples::

    genesis-finetune --target ncs --preset quick --out runs/demo/ncs-scratch
    genesis-finetune --target ncs --preset quick --weights runs/demo/pretrain/best.pt --out runs/demo/ncs-genesis \\
        --compare runs/demo/ncs-scratch
    genesis-finetune --target ncc --data /data/LUNA16 --weights genesis_chest_ct --repeats 10 \\
        --label-fraction 0.05 0.1 0.3 0.5 1.0 --out runs/ncc
    genesis-finetune --target pe --weights r3d_18.kinetics400 --out runs/pe-r3d        # Kinetics-400 R3D-18
    genesis-finetune --target pe --model resnet18 --weights resnet18.imagenet1k_v1 --out runs/pe-resnet18
    genesis-finetune --target ncc --model r3d_18 --init msra --out runs/ncc-r3d-random  # baseline, random init

Settings come from the defaults of :class:`finetune.config.FinetuneConfig`, then ``--config YAML``,
then ``--preset``, then the flags. The command only parses flags; :func:`finetune.run_finetune`
does the work.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from genesis.cli._common import user_errors_exit
from genesis.config import load_config
from genesis.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from finetune.config import INIT_CHOICES, PRESETS, FinetuneConfig

    from genesis.cli._help import document_defaults
    from genesis.cli._preflight import static_names

    targets = static_names("finetune.targets", "register_target")  # without importing torch

    p = argparse.ArgumentParser(
        prog="genesis-finetune",
        description="Fine-tune a (pretrained) 3D U-Net, or a video/ImageNet/MedicalNet baseline on classification "
                    "targets, on a target task: metrics.json, metrics.md, metrics.png.",
    )
    p.add_argument("--target", metavar="NAME", help=f"target task: {', '.join(targets)}")
    p.add_argument("--data", help="dataset root in the target's real layout; omitted: embedded synthetic chest CT. "
                   "segmentation/classification: an MSD/nnU-Net raw folder, a MONAI datalist .json, a .csv "
                   "(image,label[,group][,split]) or an .h5/.npz arrays file")
    p.add_argument("--weights", help="pretrained weights: checkpoint path (e.g. genesis-pretrain best.pt) or released name "
                   "(genesis-weights list: unet3d.genesis_chest_ct, r3d_18.kinetics400, resnet18.imagenet1k_v1 ...); a "
                   "download gives up after $GENESIS_DOWNLOAD_TIMEOUT seconds (default 1800)")
    p.add_argument("--model", metavar="NAME",
                   help="network: unet3d (Models Genesis), or for ncc/ecc/pe a baseline such as r3d_18, mc3_18, "
                        "r2plus1d_18, resnet18, resnet50, resnext101_32x8d, lrcn, resnet18_3d (default: the "
                        "architecture of --weights, else unet3d)")
    p.add_argument("--init", choices=INIT_CHOICES, help="random initialisation of layers not loaded (default scratch)")
    p.add_argument("--freeze", choices=("none", "encoder"), help="freeze the encoder while fine-tuning")
    p.add_argument("--linear-probe", action="store_true", default=None, help="frozen encoder + a single linear layer (classification)")
    p.add_argument("--out", help="output folder (default runs/finetune)")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--steps-per-epoch", type=int, help="training batches per epoch")
    p.add_argument("--batch-size", type=int, help="crops per training step")
    p.add_argument("--width", type=int, help="U-Net base width (32 in the paper; read from our checkpoints; U-Net only)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--crop", type=int, nargs="+", metavar="N",
                   help="training crop / sliding window size: D H W (3D) or H W (2D)")
    p.add_argument("--dims", type=int, choices=(2, 3),
                   help="segmentation/classification targets: 2D images (unet2d) or 3D volumes (unet3d); "
                        "checked against the data (default: the data's)")
    p.add_argument("--test-data", metavar="DATASET", help="segmentation/classification targets: a separate "
                   "labelled test set (any layout --data takes)")
    p.add_argument("--group-size", type=int, metavar="N", help="arrays file without 'groups': each run of N "
                   "consecutive samples is one patient (splits and label fractions never cut a patient)")
    p.add_argument("--assume-spacing", type=float, metavar="MM",
                   help="use MM where a scan's voxel spacing is missing or invalid (default: such a scan is an error)")
    p.add_argument("--window", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="HU window mapped to [0, 1] for CT (default: the target's, CT [-1000, 1000])")
    p.add_argument("--label-fraction", type=float, nargs="+", help="one or several fractions of the training labels")
    p.add_argument("--seed", type=int, help="seed of the first run (runs use seed, seed+1, ...)")
    p.add_argument("--repeats", type=int, help="runs per fraction (seeds seed, seed+1, ...)")
    p.add_argument("--device", help="auto, cpu or cuda[:n]")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision (default auto: bf16 autocast on CUDA where supported, else fp16 "
                   "with loss scaling; fp32 on CPUs, where bf16 is slow or unstable: the log warns)")
    p.add_argument("--config", help="YAML file with FinetuneConfig settings")
    p.add_argument("--channels", choices=("repeat", "neighbors", "windows"),
                   help="grey CT -> RGB for the pretrained baselines: the slice 3x (default), slices n-1/n/n+1, "
                        "or lung/mediastinum/PE HU windows")
    p.add_argument("--aggregate", choices=("max", "mean"),
                   help="study prediction from window predictions, and 2D window from slice logits (default max)")
    p.add_argument("--view", choices=("window", "axial", "orthogonal"),
                   help="2D baselines: every slice (default), 3 adjacent axial slices (2D) or axial/coronal/"
                        "sagittal planes through the centre (2.5D) as RGB; ncs: unet2d on axial planes (2D) or "
                        "on axial, coronal and sagittal planes, averaged (2.5D)")
    p.add_argument("--lr-search", action="store_true", default=None,
                   help="choose the learning rate first: one run per lr_grid rate (1e-1 ... 1e-5) on 10%% of the "
                        "training labels, best validation metric wins (Ke et al.)")
    p.add_argument("--compare", metavar="OTHER_OUT", help="compare our runs with another output folder: paired tests over seeds and test patients "
                   "(refused, naming the fields, when the test set, label draws or evaluation differ)")
    p.add_argument("--preset", choices=sorted(PRESETS), help="quick: tiny CPU demo (about a minute)")
    p.add_argument("--resume", action="store_true", default=None, help="continue interrupted runs from last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of torch (default: $OMP_NUM_THREADS if set, else the cores available to this "
                   "process)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0; CheXpert study: 1e-4 against overfitting)")
    p.add_argument("--uncertain", choices=("ignore", "ones", "zeros"),
                   help="chexpert: uncertain labels masked (ignore, default), as positive (ones) or negative (zeros)")
    p.add_argument("--study-max", action="store_true", default=None, help="chexpert: score a study by the max over its views")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting by dotted key, e.g. --set evaluation.bootstrap_resamples=2000 (YAML value)")
    keys = {k: v for k, v in _FLAG_KEYS.items() if k not in ("resume", "linear_probe")}
    return document_defaults(p, FinetuneConfig(), keys, "Defaults shown are FinetuneConfig's (the papers'); "
                             "--preset quick changes several.")


_FLAG_KEYS = {
    "target": "target", "data": "data", "weights": "weights", "model": "model", "init": "init", "freeze": "freeze",
    "linear_probe": "linear_probe", "out": "out", "epochs": "epochs", "steps_per_epoch": "steps_per_epoch",
    "batch_size": "batch_size", "width": "width", "lr": "optim.lr", "patience": "patience", "crop": "crop",
    "label_fraction": "label_fractions", "seed": "seed", "repeats": "repeats", "device": "device",
    "precision": "precision", "compare": "compare", "resume": "resume", "channels": "channels", "aggregate": "aggregate",
    "lr_search": "lr_search", "view": "view", "dims": "dims", "test_data": "test_data",
    "group_size": "group_size", "window": "window", "assume_spacing": "assume_spacing",
    "weight_decay": "optim.weight_decay", "uncertain": "uncertain", "study_max": "study_max",
}


def config_from_args(args: argparse.Namespace) -> Any:
    """Defaults < --config YAML < --preset < flags (and --set KEY=VALUE)."""
    import yaml

    from finetune import get_target
    from finetune.config import PRESETS, FinetuneConfig

    overrides: dict[str, Any] = {}
    if args.preset:
        overrides.update(PRESETS[args.preset])
    flags: dict[str, str] = {}  # setting -> the flag that gave it
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr)
        if value is not None:
            overrides[key] = tuple(value) if isinstance(value, list) else value
            flags[key] = "--" + attr.replace("_", "-")
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = (part.strip() for part in item.split("=", 1))
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({' '.join(str(exc).split())})") from None
        if key in flags:  # e.g. --data X --set data=null: one would silently win
            raise ConfigError(f"--set {item} and {flags[key]} both set {key!r}; give one of them")
        if value is None and not _is_section(key):  # null means "not given": it would be ignored silently
            raise ConfigError(f"--set {item}: a setting cannot be set to null from the command line (null keeps "
                              "the default or the --config file's value); leave it out, or edit the --config file")
        overrides[key] = value
    if args.preset == "quick" and "crop" not in overrides:
        target_name = overrides.get("target") or load_config(FinetuneConfig, args.config).target
        quick_crop = get_target(str(target_name)).quick_crop
        if quick_crop is not None:  # None: the target fits its crop to the images
            if overrides.get("dims") == 2 and len(quick_crop) == 3:  # 2D planes of a cube target (ncs --dims 2)
                quick_crop = tuple(quick_crop)[1:]
            overrides["crop"] = quick_crop
    return load_config(FinetuneConfig, args.config, overrides).validate()


def _is_section(key: str) -> bool:
    """Whether ``key`` names a section of :class:`FinetuneConfig` (``optim``, ``evaluation``...):
    :func:`genesis.config.load_config` refuses a null or a value for it, naming its fields."""
    import dataclasses

    from finetune.config import FinetuneConfig

    return dataclasses.is_dataclass(getattr(FinetuneConfig(), key, None))


WEIGHTS_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin", ".safetensors", ".h5", ".hdf5")


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``genesis-finetune``; returns the exit code."""
    from pathlib import Path

    from genesis.cli import _preflight

    args = build_parser().parse_args(argv)
    # cheap checks first: a typo fails before torch is imported
    _preflight.check_name("fine-tuning target", args.target, "finetune.targets", "register_target")
    _preflight.check_file(args.config, "--config file")
    _preflight.check_exists(args.data, "--data")
    _preflight.check_exists(args.compare, "--compare folder")
    # registered names have a dot too (arch.tag): only a path or a weights-file ending means a file
    weights_file = args.weights and ("/" in args.weights or Path(args.weights).suffix.lower() in WEIGHTS_SUFFIXES)
    if weights_file and not Path(args.weights).exists():
        raise ConfigError(f"--weights {args.weights}: no such file (registered names look like unet3d.genesis_chest_ct)")
    _check_finetune_out(args)
    cfg = config_from_args(args)  # settings first: a bad value fails before torch is imported
    _preflight.apply_threads(args.threads)
    from finetune import run_finetune

    # every setting is checked (run_finetune checks the target, model and weights before any
    # network is built or data read); a CPU time estimate follows the first measured steps
    metrics = run_finetune(cfg)
    primary = metrics["primary_metric"]
    banner = "  [SYNTHETIC DATA]" if metrics["synthetic"] else ""
    for f in metrics["label_fractions"]:
        a = f["aggregate"][primary]
        lo, hi = a.get("ci_low"), a.get("ci_high")
        ci = f" [95% CI {lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
        mean = "n/a" if a["mean"] is None else f"{a['mean']:.4f}"
        print(f"{metrics['target']} {primary} at label fraction {f['fraction']:g}: {mean}{ci}{banner}")
    print(f"wrote {cfg.out}/metrics.json, metrics.md, metrics.png")
    return 0


def _check_finetune_out(args: argparse.Namespace) -> None:
    """An --out holding results needs --resume (continue, reuse finished runs) or --overwrite."""
    import shutil
    from pathlib import Path

    from finetune.config import FinetuneConfig

    out = Path(args.out or FinetuneConfig().out)
    runs = [p for p in out.glob("fraction-*") if p.is_dir()]
    if not (runs or (out / "metrics.json").exists()):
        return
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    if args.resume:
        return
    if not args.overwrite:
        raise ConfigError(f"{out} already holds fine-tuning results; add --resume to continue (finished runs are "
                          "reused) or --overwrite to replace them, or choose another --out")
    for p in runs:
        shutil.rmtree(p)
    for name in ("metrics.json", "metrics.md", "metrics.png", "load_report.json"):
        (out / name).unlink(missing_ok=True)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
