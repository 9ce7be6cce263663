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
    p.add_argument("--cache-dir", help="cache of preprocessed volumes, read as memory maps "
                   "(default: $GENESIS_CACHE/volumes, else ~/.cache/genesis/volumes)")
    p.add_argument("--no-cache", action="store_true", help="do not cache preprocessed volumes (slow with many scans)")
    p.add_argument("--prepare-only", action="store_true",
                   help="preprocess every volume of --data into the cache (in parallel with --workers, "
                   "default: all CPUs), skip entries already valid, and exit")
    p.add_argument("--assume-spacing", type=float, metavar="MM",
                   help="use MM where a scan's voxel spacing is missing or invalid (default: such a scan is an error)")
    p.add_argument("--out", help="output folder (default: runs/pretrain)")
    p.add_argument("--epochs", type=int, help="maximum epochs (per stage for staged schemes)")
    p.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch")
    p.add_argument("--batch-size", type=int, help="cubes per step and process (paper: 6)")
    p.add_argument("--width", type=int, help="base width of the network (paper: 32)")
    p.add_argument("--crop", type=int, nargs=3, metavar=("D", "H", "W"), help="sub-volume size (paper: 32 64 64)")
    p.add_argument("--modality", choices=("auto", "ct", "xray"), help="auto (default): radiographs for a folder/CSV of PNG, JPEG or DICOM X-rays; xray also gives synthetic radiographs without --data")
    p.add_argument("--image-size", type=int, help="radiographs: square side they are resized to (default 224)")
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
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision (default auto: bf16 autocast on CUDA where supported, else fp16 "
                   "with loss scaling; fp32 on CPUs, where bf16 is slow or unstable: the log warns)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt until --epochs")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its checkpoints, "
                   "logs and stage folders are deleted first)")
    p.add_argument("--group-size", type=int, metavar="N",
                   help="arrays files without 'groups': each N consecutive samples are one patient (the "
                   "train/validation split never cuts a patient; other layouts name their patients)")
    p.add_argument("--keep-labels", action="store_true",
                   help="use label maps found in a --data folder (skipped by default, see OUT/data.csv)")
    p.add_argument("--keep-non-hu", action="store_true",
                   help="use images without Hounsfield units (e.g. 8-bit, [0, 1]) found in a --data folder")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads of torch (default: $OMP_NUM_THREADS if set, else the cores available to this "
                   "process, split among torchrun processes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one line per epoch)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting by dotted key, value in YAML syntax (repeatable)")
    p.add_argument("--evaluate", type=Path, metavar="CKPT", help="evaluate a pretrained checkpoint and exit")
    p.add_argument("--eval-cubes", type=int, default=None, help="held-out cubes for --evaluate (default 32)")
    from genesis.cli._help import document_defaults
    from genesis.training.config import PretrainConfig

    return document_defaults(p, PretrainConfig(), _DEFAULT_KEYS,
                             "Defaults shown are PretrainConfig's; --preset quick changes several.")


#: Flags whose default comes from :class:`PretrainConfig` (for ``--help``).
_DEFAULT_KEYS = {
    "task": "task", "data": "data.data", "cache_dir": "data.cache_dir", "out": "out", "epochs": "epochs",
    "steps_per_epoch": "steps_per_epoch", "batch_size": "batch_size", "width": "width", "crop": "data.crop",
    "dims": "dims", "model": "model", "loss": "loss", "optimizer": "optim.name", "lr": "optim.lr", "seed": "seed",
    "device": "device", "workers": "data.workers",
}


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
        "data.assume_spacing": args.assume_spacing,
        "data.cache": False if args.no_cache else None,
        "out": args.out,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "width": args.width,
        "data.crop": tuple(args.crop) if args.crop else None,
        "dims": args.dims,
        "data.modality": args.modality,
        "data.image_size": args.image_size,
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
        "overwrite": True if args.overwrite else None,
        "data.group_size": args.group_size,
        "data.keep_labels": True if args.keep_labels else None,
        "data.keep_non_hu": True if args.keep_non_hu else None,
        "amp": False if args.no_amp else None,
        "precision": args.precision,
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
    return o  # --set KEY=null reaches load_config (which refuses one that removes a section)


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Run ``genesis-pretrain``; returns the exit code (2 for user errors)."""
    from genesis.cli import _preflight

    args = build_parser().parse_args(argv)
    if args.list_tasks:
        print(list_tasks_text())
        return 0
    if args.evaluate is not None:
        _preflight.check_file(args.evaluate, "--evaluate checkpoint")
        _preflight.check_exists(args.data, "--data")
        _preflight.apply_threads(args.threads)
        from genesis.training.evaluate import evaluate_checkpoint

        out = Path(args.out) if args.out else args.evaluate.parent / "eval"
        report = evaluate_checkpoint(args.evaluate, data=args.data, out_dir=out, device=args.device or "auto",
                                     n_cubes=args.eval_cubes, seed=args.seed)
        written = [p for p in (out / "eval.json", out / "eval.png") if p.is_file()]  # only what exists
        print("wrote " + " and ".join(str(p) for p in written))
        for name, metrics in report["results"].items():
            print(f"  {name:>16}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return 0

    from genesis.training.config import PretrainConfig
    from genesis.training.rundir import check_out_dir

    # everything that can be checked without torch is checked here, before the heavy imports
    _preflight.check_file(args.config, "--config file")
    overrides = overrides_from_args(args)
    config_file = args.config
    run_config = Path(overrides.get("out", PretrainConfig().out)) / "config.yaml"
    if args.resume and config_file is None and run_config.is_file():
        config_file = run_config  # a resumed run keeps its settings; flags given now change them
        if not args.overwrite:  # how the run was started (--overwrite) is no setting of the run
            overrides["overwrite"] = False
    cfg = load_config(PretrainConfig, config_file, overrides)
    if args.preset == "quick" and _architecture_from_plans(cfg.model):
        # --preset quick works with every model: the plans' widths and patch size are left alone
        overrides = {k: v for k, v in overrides.items() if k not in _PLANS_FIXED or _given(args, k)}
        cfg = load_config(PretrainConfig, config_file, overrides)
    _check_task_name(cfg.task)
    cfg.validate()
    _preflight.check_exists(cfg.data.data, "--data")
    if not args.prepare_only:  # --prepare-only writes only to the cache, never to --out
        check_out_dir(cfg.out, cfg.resume, cfg.overwrite, remove=False)
    if cfg.resume and not _resumable(Path(cfg.out)):
        if (Path(cfg.out) / "best.pt").is_file():  # issue 12: say what is there and what to do
            raise ConfigError(f"--resume: only best.pt is in {cfg.out}, no last.pt (the training state is saved in "
                              "last.pt); start over without --resume (or use another --out), or fine-tune from "
                              "best.pt (genesis-finetune --weights)")
        raise ConfigError(f"--resume: nothing to resume in {cfg.out} (no last.pt)")
    if cfg.resume and run_config.is_file():
        from genesis.config import config_to_dict
        from genesis.training.rundir import check_resume_settings

        saved = yaml.safe_load(run_config.read_text()) or {}
        check_resume_settings(saved, config_to_dict(cfg), run_config)
    _preflight.apply_threads(args.threads)
    _preflight.raise_open_file_limit()

    from genesis.training.collapse import final_warning
    from genesis.training.ddp import env_dist_info
    from genesis.training.pretrain import run_pretraining

    if args.prepare_only:
        return prepare_only(cfg, args.workers)
    result = run_pretraining(cfg)
    if env_dist_info().is_main:
        last = result.history[-1] if result.history else {}
        summary = ", ".join(f"{k}={last[k]:.4g}" for k in ("train_loss", "val_loss", "val_mse") if k in last)
        note = " (trained on synthetic data)" if result.synthetic else ""
        print(f"done{note}: best {result.best_path}, last {result.last_path}; {summary}", file=sys.stderr)
        warning = final_warning(result.history)
        if warning:
            print(warning, file=sys.stderr)
    return 0


def list_tasks_text() -> str:
    """Every ``--task`` name grouped by method family, with where it comes from."""
    from genesis.methods import catalogue

    lines = []
    for family, entries in catalogue().items():
        lines.append(f"{family}:")
        width = max(len(name) for name, _ in entries)
        lines += [f"  {name:<{width}}  {paper}".rstrip() for name, paper in entries]
    return "\n".join(lines)


def prepare_only(cfg: Any, workers: int | None) -> int:
    """``--prepare-only``: fill the volume cache for ``cfg.data`` (as the recipe resolves it) and exit."""
    import os
    from dataclasses import replace

    from genesis.data.kinds import resolve_data
    from genesis.training.ddp import DistInfo
    from genesis.training.pretrain import prepare_volumes
    from genesis.training.recipe import data_request, resolve_method_and_network

    if not cfg.data.cache:
        raise ConfigError("--prepare-only fills the volume cache; it cannot be combined with --no-cache")
    resolved = resolve_data(data_request(cfg))
    plan = resolved.plan
    method, _, _ = resolve_method_and_network(cfg, plan)
    cfg = replace(cfg, dims=plan.dims, data=replace(cfg.data, crop=plan.crop,
                                                    models_genesis_sampler=plan.models_genesis_sampler))
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    prepare_volumes(resolved.source, cfg, DistInfo(), workers=usable if workers is None else workers,
                    crop=tuple(method.sample_crop(plan.crop)))
    return 0


def _check_task_name(name: str) -> None:
    """``--task`` names a proxy task or a method (read from their sources: no torch import yet)."""
    from genesis.cli import _preflight
    from genesis.errors import UnknownNameError

    names = sorted(set(_preflight.static_names("proxy_tasks", "register_task"))
                   | set(_preflight.static_names("genesis.methods", "register_method")))
    if names and name not in names:
        hint = _preflight.did_you_mean(name, names) or f"; available: {', '.join(names)}"
        raise UnknownNameError(f"unknown proxy task {name!r}{hint} (see --list-tasks for tasks and methods)")


#: Settings of ``--preset quick`` that a network built from nnU-Net plans takes from the plans.
_PLANS_FIXED = ("width", "data.crop")


def _architecture_from_plans(model: str) -> bool:
    """Whether ``--model`` is built from plans that fix widths and patch size (nnU-Net), read from
    the registration (no torch import: the models package is only imported for such names)."""
    if model in ("auto", "unet3d", "unet2d", "vqvae", "encoder_classifier"):
        return False
    import genesis.models  # fills the registry

    MODELS = genesis.models.MODELS
    return model in MODELS and bool(getattr(MODELS.get(model), "architecture_from_plans", False))


def _given(args: argparse.Namespace, key: str) -> bool:
    """A setting given explicitly by its flag (it then wins over the preset)."""
    flag = {"width": args.width, "data.crop": args.crop}.get(key)
    return flag is not None or any(item.partition("=")[0].strip() == key for item in args.set)


def _resumable(out: Path) -> bool:
    return (out / "last.pt").is_file() or (out / "stage1" / "last.pt").is_file()


if __name__ == "__main__":
    sys.exit(main())
