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
    from finetune import TARGETS
    from finetune.config import INIT_CHOICES, PRESETS

    p = argparse.ArgumentParser(
        prog="genesis-finetune",
        description="Fine-tune a (pretrained) 3D U-Net, or a video/ImageNet/MedicalNet baseline on classification "
                    "targets, on a target task: metrics.json, metrics.md, metrics.png.",
    )
    p.add_argument("--target", choices=TARGETS.names(), help="target task (default from config: ncs)")
    p.add_argument("--data", help="dataset root in the target's real layout; omitted: embedded synthetic chest CT")
    p.add_argument("--weights", help="pretrained weights: checkpoint path (e.g. genesis-pretrain best.pt) or released name "
                   "(genesis-weights list: unet3d.genesis_chest_ct, r3d_18.kinetics400, resnet18.imagenet1k_v1 ...)")
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
    p.add_argument("--batch-size", type=int)
    p.add_argument("--width", type=int, help="U-Net base width (32 in the paper; read from our checkpoints; U-Net only)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"), help="training crop / sliding window size")
    p.add_argument("--label-fraction", type=float, nargs="+", help="one or several fractions of the training labels")
    p.add_argument("--seed", type=int)
    p.add_argument("--repeats", type=int, help="runs per fraction (seeds seed, seed+1, ...)")
    p.add_argument("--device", help="auto, cpu or cuda[:n]")
    p.add_argument("--config", help="YAML file with FinetuneConfig settings")
    p.add_argument("--compare", metavar="OTHER_OUT", help="t-test our runs against another output folder")
    p.add_argument("--preset", choices=sorted(PRESETS), help="quick: tiny CPU demo (about a minute)")
    p.add_argument("--resume", action="store_true", default=None, help="continue interrupted runs from last.pt")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0; CheXpert study: 1e-4 against overfitting)")
    p.add_argument("--uncertain", choices=("ignore", "ones", "zeros"),
                   help="chexpert: uncertain labels masked (ignore, default), as positive (ones) or negative (zeros)")
    p.add_argument("--study-max", action="store_true", default=None, help="chexpert: score a study by the max over its views")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting by dotted key, e.g. --set evaluation.bootstrap_resamples=2000 (YAML value)")
    return p


_FLAG_KEYS = {
    "target": "target", "data": "data", "weights": "weights", "model": "model", "init": "init", "freeze": "freeze",
    "linear_probe": "linear_probe", "out": "out", "epochs": "epochs", "steps_per_epoch": "steps_per_epoch",
    "batch_size": "batch_size", "width": "width", "lr": "optim.lr", "patience": "patience", "crop": "crop",
    "label_fraction": "label_fractions", "seed": "seed", "repeats": "repeats", "device": "device",
    "compare": "compare", "resume": "resume", "weight_decay": "optim.weight_decay", "uncertain": "uncertain",
    "study_max": "study_max",
}


def config_from_args(args: argparse.Namespace) -> Any:
    """Defaults < --config YAML < --preset < flags (and --set KEY=VALUE)."""
    import yaml

    from finetune import get_target
    from finetune.config import PRESETS, FinetuneConfig

    overrides: dict[str, Any] = {}
    if args.preset:
        overrides.update(PRESETS[args.preset])
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr)
        if value is not None:
            overrides[key] = tuple(value) if isinstance(value, list) else value
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(raw)
    if args.preset == "quick" and "crop" not in overrides:
        target_name = overrides.get("target") or load_config(FinetuneConfig, args.config).target
        overrides["crop"] = get_target(str(target_name)).quick_crop
    return load_config(FinetuneConfig, args.config, overrides).validate()


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``genesis-finetune``; returns the exit code."""
    from finetune import run_finetune

    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
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


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
