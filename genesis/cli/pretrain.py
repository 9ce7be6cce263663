"""``genesis-pretrain``: self-supervised pretraining on a proxy task, and evaluation of the result.

Examples::

    genesis-pretrain --preset quick --out runs/demo               # a minute on a laptop CPU
    genesis-pretrain --task combined --data /scans --out runs/mg  # Models Genesis on your scans
    genesis-pretrain --task masked_curriculum --dims 2 --model vqvae --out runs/tariq
    torchrun --nproc_per_node 4 -m genesis.cli.pretrain --task combined --data /scans --out runs/mg
    genesis-pretrain --evaluate runs/mg/best.pt --out runs/mg/eval

The flags only fill a :class:`~genesis.training.config.PretrainConfig`; ``--config FILE`` loads
every setting from YAML first, flags given explicitly win, and ``--set key=value`` reaches any
setting (e.g. ``--set schedule.patience=10``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from genesis.cli._common import user_errors_exit
from genesis.config import load_config
from genesis.errors import ConfigError

PRESETS = ("quick",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genesis-pretrain",
        description="Self-supervised pretraining (Models Genesis and Tariq et al. proxy tasks). With no "
        "--data it trains on embedded synthetic chest CT (results are marked synthetic).",
    )
    p.add_argument("--task", help="proxy task or scheme (default: combined); see --list-tasks")
    p.add_argument("--list-tasks", action="store_true", help="print the registered proxy tasks and exit")
    p.add_argument("--config", type=Path, help="YAML file with any PretrainConfig settings")
    p.add_argument("--preset", choices=PRESETS, help="quick: tiny CPU demo that finishes in about a minute")
    p.add_argument("--data", help="folder of scans, CSV/YAML manifest or one scan (default: synthetic)")
    p.add_argument("--cache-dir", help="cache of preprocessed volumes")
    p.add_argument("--out", help="output folder (default: runs/pretrain)")
    p.add_argument("--epochs", type=int, help="maximum epochs (per stage for staged schemes)")
    p.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch")
    p.add_argument("--batch-size", type=int, help="cubes per step and process (paper: 6)")
    p.add_argument("--width", type=int, help="base width of the network (paper: 32)")
    p.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"), help="sub-volume size (paper: 32 64 64)")
    p.add_argument("--dims", type=int, choices=(2, 3), help="3: sub-volumes; 2: axial slices of them")
    p.add_argument("--model", help="network: auto (default), unet3d, unet2d, vqvae, encoder_classifier, nnunet")
    p.add_argument("--plans", help="nnU-Net plans file (nnUNetPlans.json) for --model nnunet and nnU-Net data")
    p.add_argument("--configuration", help="nnU-Net configuration of --plans (default: 3d_fullres)")
    p.add_argument("--loss", choices=("auto", "mse", "composite", "ce"), help="loss (default auto)")
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw", "radam"), help="optimizer (default auto: sgd for Models Genesis tasks, radam for Tariq et al. and label tasks)")
    p.add_argument("--lr", type=float, help="learning rate (default: 1.0 with SGD, 1e-3 otherwise, as in the papers)")
    p.add_argument("--seed", type=int, help="seed of data, proxy randomness and weights")
    p.add_argument("--device", help="auto (CUDA if available), cpu, cuda or cuda:N")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt until --epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting by dotted key, value in YAML syntax (repeatable)")
    p.add_argument("--evaluate", type=Path, metavar="CKPT", help="evaluate a pretrained checkpoint and exit")
    p.add_argument("--eval-cubes", type=int, default=None, help="held-out cubes for --evaluate (default 32)")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted-key overrides for the flags that were given (None values are ignored)."""
    o: dict[str, Any] = {}
    if args.preset == "quick":
        from genesis.training.config import quick_overrides

        o.update(quick_overrides())
    flags = {
        "task": args.task,
        "data.data": args.data,
        "data.cache_dir": args.cache_dir,
        "out": args.out,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "width": args.width,
        "data.crop": tuple(args.crop) if args.crop else None,
        "dims": args.dims,
        "model": args.model,
        "plans": args.plans,
        "configuration": args.configuration,
        "loss": args.loss,
        "optim.name": args.optimizer,
        "optim.lr": args.lr,
        "seed": args.seed,
        "device": args.device,
        "data.workers": args.workers,
        "resume": True if args.resume else None,
        "amp": False if args.no_amp else None,
        "log.progress": False if args.no_progress else None,
    }
    o.update({k: v for k, v in flags.items() if v is not None})  # flags given explicitly beat the preset
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            o[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML ({exc})") from None
    return {k: v for k, v in o.items() if v is not None}


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``genesis-pretrain``; returns the exit code (2 for user errors)."""
    args = build_parser().parse_args(argv)
    if args.list_tasks:
        import proxy_tasks

        print("\n".join(proxy_tasks.list_tasks()))
        return 0
    if args.evaluate is not None:
        from genesis.training.evaluate import evaluate_checkpoint

        out = Path(args.out) if args.out else args.evaluate.parent / "eval"
        report = evaluate_checkpoint(args.evaluate, data=args.data, out_dir=out, device=args.device or "auto",
                                     n_cubes=args.eval_cubes, seed=args.seed)
        print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}")
        for name, metrics in report["results"].items():
            print(f"  {name:>16}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return 0

    from genesis.training.config import PretrainConfig
    from genesis.training.pretrain import run_pretraining

    cfg = load_config(PretrainConfig, args.config, overrides_from_args(args))
    result = run_pretraining(cfg)
    from genesis.training.ddp import env_dist_info

    if env_dist_info().is_main:
        last = result.history[-1] if result.history else {}
        summary = ", ".join(f"{k}={last[k]:.4g}" for k in ("train_loss", "val_loss", "val_mse") if k in last)
        note = " (trained on synthetic data)" if result.synthetic else ""
        print(f"done{note}: best {result.best_path}, last {result.last_path}; {summary}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
