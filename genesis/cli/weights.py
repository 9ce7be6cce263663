"""``genesis-weights``: list, inspect, download, verify and export released weights.

Environment: ``GENESIS_CACHE`` (cache directory, default ``~/.cache/genesis``),
``GENESIS_WEIGHTS_REGISTRY`` (extra manifest files, ``os.pathsep``-separated),
``GENESIS_OFFLINE=1`` (never use the network).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import yaml

from genesis.cli._common import user_errors_exit
from genesis.errors import ConfigError, GenesisError
from genesis.weights.download import cached_path, download, read_record, verify_cached
from genesis.weights.manifest import WeightsSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genesis-weights",
        description="List, inspect, download (verified, resumable), verify and export released weights.",
        epilog="Environment: GENESIS_CACHE, GENESIS_WEIGHTS_REGISTRY (os.pathsep-separated), GENESIS_OFFLINE=1.",
    )
    parser.add_argument("--offline", action="store_true", default=None,
                        help="use the cache only, never the network (also GENESIS_OFFLINE=1)")
    parser.add_argument("--cache", type=Path, default=None, help="cache directory (default: $GENESIS_CACHE)")
    parser.add_argument("--registry", type=Path, action="append", default=[],
                        help="extra manifest YAML file (repeatable; also $GENESIS_WEIGHTS_REGISTRY)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up on a file whose download takes longer than this, retries included (default: $GENESIS_DOWNLOAD_TIMEOUT, else 1800; the variable also bounds "
                        "genesis-finetune --weights NAME)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered weights and their cache state")
    for command, text in (("info", "show a manifest entry"), ("download", "download and verify"),
                          ("path", "print the cached file's path (downloading it unless offline)")):
        p = sub.add_parser(command, help=text)
        p.add_argument("name")
        if command == "download":
            p.add_argument("--force", action="store_true", help="download again even if cached")
    p = sub.add_parser("verify", help="check cached files against their sha256")
    p.add_argument("name", nargs="?", help="one entry (default: every cached entry)")
    p = sub.add_parser("export", help="export a checkpoint as safetensors + model card + manifest entry, "
                       "or (--format nnunet) as nnU-Net pretrained weights")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--format", choices=("genesis", "nnunet"), default="genesis",
                   help="genesis: safetensors + card + manifest (default); nnunet: one file for "
                   "nnUNetv2_train -pretrained_weights FILE")
    p.add_argument("--name", help="arch.tag name, e.g. unet3d.genesis_synthetic_demo (genesis format)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (genesis format, default: .) or file (nnunet format, required)")
    p.add_argument("--license", default=None,
                   help="license of the weights, an SPDX id such as CC-BY-4.0 or Apache-2.0 (required for the "
                   "genesis format: it goes into the model card; the data's terms may restrict it)")
    p.add_argument("--description", default=None)
    p.add_argument("--plans", type=Path, default=None,
                   help="nnunet format: plans nnU-Net will train with (default: the pretraining plans)")
    p.add_argument("--configuration", default=None,
                   help="nnunet format: configuration of --plans (default: the pretraining one)")
    p.add_argument("--part", choices=("all", "encoder"), default="all",
                   help="nnunet format: all = encoder and decoder, for nnUNetv2_train -pretrained_weights (default); "
                   "encoder = the encoder only, first convolution adapted to --plans' input channels, for plans "
                   "whose decoder or channels differ (loaded by the trainer of install-nnunet-trainer)")
    p = sub.add_parser("install-nnunet-trainer",
                       help="make nnUNetv2_train -tr nnUNetTrainerGenesisFinetune find the genesis fine-tuning trainer")
    p.add_argument("--dir", type=Path, default=None,
                   help="write the trainer module here instead of into nnU-Net's trainer folder (then set "
                   "nnUNet_extTrainer=DIR)")
    p.add_argument("--uninstall", action="store_true", help="remove the module written before")
    return parser


def _settings(args: argparse.Namespace) -> WeightsSettings:
    if args.timeout is not None and not args.timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    settings = WeightsSettings.from_env(os.environ, cache_dir=args.cache, deadline=args.timeout)
    settings.registry_files = settings.registry_files + list(args.registry)
    if args.offline:
        settings.offline = True
    settings.progress = not args.no_progress and sys.stderr.isatty()
    return settings


def _state(entry, settings: WeightsSettings) -> str:
    if entry.example:
        return "template"
    return "cached" if cached_path(entry, settings).is_file() else "-"


@user_errors_exit
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``genesis-weights``; returns the exit code (2 on a user error)."""
    args = build_parser().parse_args(argv)
    if args.command == "install-nnunet-trainer":
        return _install_trainer(args)
    if args.command == "export" and args.format == "nnunet":
        return _export_nnunet(args)
    if args.command == "export":
        if args.part != "all":
            raise ConfigError("--part encoder applies to --format nnunet (genesis weights load partially with "
                              "genesis.weights.load_weights)")
        if not args.name:
            raise ConfigError("export needs --name arch.tag (e.g. unet3d.genesis_chest_ct)")
        if not args.license:
            raise ConfigError("export needs --license (an SPDX id such as CC-BY-4.0, Apache-2.0 or MIT; check "
                              "what the training data's terms allow): weights are never given a license silently")
        from genesis.weights.export import export_checkpoint  # needs torch: imported only here

        result = export_checkpoint(args.checkpoint, args.name, args.out or Path("."), license=args.license,
                                   description=args.description)
        print(f"weights  {result.weights}\ncard     {result.card}\nmanifest {result.manifest}")
        print(f"sha256   {result.sha256}\nsize     {result.size}")
        if result.synthetic:
            print("note: this checkpoint was trained on synthetic data (the card says so)")
        return 0
    settings = _settings(args)
    registry = settings.registry()
    if args.command == "list":
        rows = [(e.name, e.architecture.get("name", "?"), e.checksum_status, _state(e, settings)) for e in registry.entries()]
        widths = [max(len(r[i]) for r in rows + [("name", "arch", "sha256", "cache")]) for i in range(4)]
        for row in [("name", "arch", "sha256", "cache")] + rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return 0
    if args.command == "info":
        entry = registry.get(args.name)
        data = entry.to_dict()
        data["origin"] = entry.origin
        data["cache"] = {"path": str(cached_path(entry, settings)), "present": cached_path(entry, settings).is_file()}
        if not entry.example:
            record = read_record(entry, settings)
            if record:
                data["cache"]["recorded_sha256"] = record["sha256"]
                data["cache"]["recorded_how"] = record.get("how")
        print(yaml.safe_dump(data, sort_keys=False).rstrip())
        return 0
    if args.command in ("download", "path"):
        entry = registry.get(args.name)
        path = download(entry, settings, force=getattr(args, "force", False))
        print(path if args.command == "path" else f"{entry.name}: {path}")
        return 0
    if args.command == "verify":
        entries = [registry.get(args.name)] if args.name else [
            e for e in registry.entries() if not e.example and cached_path(e, settings).is_file()
        ]
        failures = 0
        for entry in entries:
            try:
                result = verify_cached(entry, settings)
            except GenesisError as exc:
                if args.name:
                    raise
                failures += 1
                print(f"FAILED {entry.name}: {exc}")
                continue
            print(f"ok     {entry.name}: sha256 {result.sha256} ({result.checked_against})")
        if not entries:
            print("no cached weights to verify")
        return 1 if failures else 0
    raise AssertionError(args.command)


def _export_nnunet(args: argparse.Namespace) -> int:
    if args.out is None:
        raise ConfigError("--format nnunet needs --out FILE (the file for nnUNetv2_train -pretrained_weights)")
    from genesis.nnunet.export import export_nnunet  # needs torch and nnunetv2: imported only here
    from genesis.nnunet.install import TRAINERS
    from genesis.nnunet.finetune import WEIGHTS_ENV

    result = export_nnunet(args.checkpoint, args.out, plans=args.plans, configuration=args.configuration,
                           license=args.license, part=args.part)
    if result.part == "all":
        print(f"nnU-Net weights {result.path} ({len(result.transferred)} tensors; seg layers left to nnU-Net)")
        print(f"use: nnUNetv2_train DATASET {result.configuration} FOLD -pretrained_weights {result.path}")
        return 0
    print(f"nnU-Net encoder weights {result.path} ({len(result.transferred)} encoder tensors; decoder and seg "
          f"layers left to nnU-Net)")
    for item in result.adapted:
        print(f"adapted  {item['key']}: {tuple(item['pretrained_shape'])} -> {tuple(item['target_shape'])}, "
              f"{item['rule']}")
    for key in result.skipped:
        print(f"skipped  {key}")
    print(f"use: genesis-weights install-nnunet-trainer, then {WEIGHTS_ENV}={result.path} nnUNetv2_train DATASET "
          f"{result.configuration} FOLD -tr {TRAINERS[0]} (nnU-Net's -pretrained_weights needs the decoder too)")
    return 0


def _install_trainer(args: argparse.Namespace) -> int:
    from genesis.nnunet.install import TRAINERS, install_trainer, uninstall_trainer
    from genesis.nnunet.finetune import WEIGHTS_ENV

    if args.uninstall:
        removed = uninstall_trainer(args.dir)
        print(f"removed {removed}" if removed else "no genesis trainer module there; nothing removed")
        return 0
    path = install_trainer(args.dir)
    print(f"trainer module {path}")
    if args.dir is not None:
        print(f"set nnUNet_extTrainer={args.dir.expanduser()} (nnU-Net searches it after its own trainers, whose "
              "primus trainers need a torchvision that loads)")
    print(f"use: [{WEIGHTS_ENV}=genesis_pretrained.pth] nnUNetv2_train DATASET CONFIGURATION FOLD -tr {TRAINERS[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
