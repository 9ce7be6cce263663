"""Pretraining entry point: ``run_pretraining(cfg)`` resolves the recipe once, then trains.

Everything ``genesis-pretrain`` does goes through here; the CLI only turns flags into a
:class:`~genesis.training.config.PretrainConfig`. The recipe (:mod:`genesis.training.recipe`) is
resolved from the configuration and the data before anything trains; this module prepares the
data it names (volume cache, split by patient, validation cubes), builds the method's module and
hands both to the training loop (:mod:`genesis.training.engine`). Outputs in ``cfg.out``:

* ``last.pt`` / ``best.pt``: ``{"model", "optimizer", "scheduler", "epoch", "rng", "config",
  "recipe", "parts", "task", "model_name", "model_kwargs", "synthetic", "metrics", ...}``,
  loadable with ``torch.load(..., weights_only=True)``; ``parts`` names the backbone that
  fine-tuning and the exports take (:func:`genesis.checkpoint.pretrained_backbone`);
* ``config.yaml`` (effective config), ``recipe.yaml``, ``data.csv``, ``log.csv``,
  ``tensorboard/`` (if installed), ``grids/epoch_NNNN.png``.

Staged schemes (``masked_curriculum``, Tariq et al. 2023) train their stages in turn in
``stageN/`` folders, each stage starting from the previous stage's best weights; the final stage's
checkpoints are copied to the top level.
"""

from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genesis.checkpoint import load_checkpoint, save_checkpoint
from genesis.config import config_to_dict, save_config
from genesis.device import resolve_device
from genesis.errors import ConfigError, GenesisError
from genesis.training import rundir
from genesis.training.config import PretrainConfig
from genesis.training.ddp import DistInfo, cleanup_distributed, env_dist_info, setup_distributed
from genesis.training.engine import StageResult, StageSpec, Trainer
from genesis.training.logging import write_csv_log
from genesis.training.recipe import ResolvedRun, effective_steps, recipe_differences, resolve_recipe
from genesis.training.rundata import (  # noqa: F401  (re-exported: the public names of this module before 0.2)
    SubsetSource,
    build_model,
    build_source,
    load_val_cubes,
    prepare_volumes,
    report_acceptance,
    sampler_config,
    split_volumes,
    validation_cubes,
)


def evaluate_checkpoint(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """See :func:`genesis.training.evaluate.evaluate_checkpoint` (imported at use: evaluation sits
    beside pretraining, not below it)."""
    from genesis.training.evaluate import evaluate_checkpoint as evaluate  # noqa: layering-ok

    return evaluate(*args, **kwargs)


__all__ = ["PretrainConfig", "PretrainResult", "run_pretraining", "evaluate_checkpoint", "effective_steps"]

#: Checkpoint format tag (bump when the layout changes; older formats are migrated on load by
#: :func:`genesis.checkpoint.pretrained_backbone`).
CHECKPOINT_FORMAT = "genesis-pretrain/2"

#: Cap of the default number of validation cubes (they are kept in memory for the whole run).
MAX_DEFAULT_VAL_CUBES = 512


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


# ------------------------------------------------------------------------------------ the driver
def run_pretraining(cfg: PretrainConfig) -> PretrainResult:
    """Pretrain a network with a self-supervised method as configured; resumable, DDP-aware.

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


def build_method_model(run: ResolvedRun) -> nn.Module:
    """The method's module with weights initialised from the run's seed (global RNG untouched)."""
    from genesis.methods import NetworkSpec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config.seed)
        return run.method.build_model(NetworkSpec(run.recipe.model_name, dict(run.recipe.model_kwargs)))


def _run(cfg: PretrainConfig, device: torch.device, dist: DistInfo) -> PretrainResult:
    from genesis.data.datasets import CubeDataset, default_lru_volumes, make_loader
    from genesis.device import describe_precision

    out = Path(cfg.out)
    rundir.check_out_dir(out, cfg.resume, cfg.overwrite, remove=dist.is_main)
    if cfg.resume:
        _check_resume(out / "last.pt", cfg)  # before the (possibly slow) data loading
    run = resolve_recipe(cfg, dist.world_size)
    cfg, recipe, method = run.config, run.recipe, run.method
    if dist.is_main:
        print(describe_precision(recipe.precision, device), file=sys.stderr)
        for note in run.notes:
            print(note, file=sys.stderr)
    if cfg.resume:
        _check_resume_recipe(out, recipe.to_dict())
        done = _already_done(out, cfg, method)
        if done is not None:
            return done

    source = run.source
    prepare_volumes(source, cfg, dist, crop=recipe.sample_crop)
    _report_data(source, cfg, out, run.train_idx, run.val_idx, dist.is_main, run.groups)
    train_src, val_src = SubsetSource(source, run.train_idx), SubsetSource(source, run.val_idx)
    default_val = min(MAX_DEFAULT_VAL_CUBES, len(val_src) * cfg.data.cubes_per_volume)
    n_val = cfg.data.val_cubes or max(cfg.batch_size, default_val)
    steps = recipe.steps_per_epoch
    # With the cache (default) the dataset's LRU holds memory maps of verified entries, not
    # volumes: workers get keys, read cubes as slices, and share pages through the page cache.
    # Memory maps are cheap handles (file descriptors): keep many; in-memory volumes few.
    lru = default_lru_volumes(getattr(source, "cache", None) is not None)
    train_ds = CubeDataset(train_src, sampler_config(cfg, recipe.sample_crop), steps * cfg.batch_size * dist.world_size,
                           cfg.seed, lru_volumes=lru, resident_mb=cfg.data.resident_mb)
    sampler_report = report_acceptance(train_ds, train_src, dist.is_main)
    val_groups: list[str] = []
    if dist.is_main:
        val_cubes, val_volumes = validation_cubes(val_src, cfg, n_val, recipe.sample_crop)
        val_groups = [run.groups[run.val_idx[v]] for v in val_volumes]
        _report_validation(run, len(val_cubes), val_groups)
    else:
        val_cubes = torch.empty(0)
    synthetic = run.synthetic

    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        _write_recipe(recipe.to_dict(), out / "recipe.yaml")
        if synthetic:
            (out / "SYNTHETIC.txt").write_text(
                "This run was trained on synthetic chest CT from genesis.data.synthetic, not on real scans.\n"
            )

    groups = run.groups
    meta = {
        "format": CHECKPOINT_FORMAT,
        "task": cfg.task,
        "task_params": dict(cfg.task_params),
        "task_kind": recipe.family,
        "method": dict(recipe.method),
        "dims": recipe.dims,
        "loss": recipe.loss,
        "model_name": recipe.model_name,
        "model_kwargs": config_to_dict(dict(recipe.model_kwargs)),
        "parts": recipe.parts.to_dict(),
        "recipe": recipe.to_dict(),
        "synthetic": synthetic,
        "config": config_to_dict(cfg),
        "sampler_acceptance": sampler_report,
        # file names only (model cards must not leak local paths); see genesis.weights.export
        "scans": {"train": [_scan_name(source, i) for i in run.train_idx],
                  "val": [_scan_name(source, i) for i in run.val_idx]},
        "patients": {"train": len({groups[i] for i in run.train_idx}), "val": len({groups[i] for i in run.val_idx})},
    }
    model = build_method_model(run)
    trainer = Trainer(cfg, model, train_ds, make_loader, val_cubes, device, dist, meta, val_groups=val_groups,
                      grids=dist.is_main)

    stages = method.stages()
    if len(stages) == 1 and stages[0] is method:
        result = trainer.fit(StageSpec(0, method, out))
        return PretrainResult(out, result.best_path, result.last_path, result.history, synthetic)

    history: list[dict[str, Any]] = []
    init: dict[str, torch.Tensor] | None = None
    stage_result: StageResult | None = None
    changed = False
    for i, stage_method in enumerate(stages):
        # once a stage trains further (e.g. resumed with more --epochs), later stages start over
        # from its new weights, exactly as an uninterrupted run would
        spec = StageSpec(i, stage_method, out / f"stage{i + 1}", init_weights=init, n_stages=len(stages), fresh=changed)
        stage_result = trainer.fit(spec)
        changed = changed or stage_result.epochs_run > 0
        history += [{**r, "stage": i + 1} for r in stage_result.history]
        init = load_checkpoint(stage_result.best_path, map_location=device)["model"]
    assert stage_result is not None
    best, last = out / "best.pt", out / "last.pt"
    if dist.is_main:
        for src, dst in ((stage_result.best_path, best), (stage_result.last_path, last)):
            ckpt = load_checkpoint(src)
            ckpt["stage_dirs"] = [f"stage{i + 1}" for i in range(len(stages))]
            save_checkpoint(ckpt, dst)
        write_csv_log(history, out / "log.csv", columns=("stage",) + _log_columns())
    return PretrainResult(out, best, last, history, synthetic)


def _write_recipe(recipe: dict[str, Any], path: Path) -> None:
    import yaml

    from genesis.fileio import atomic_write_text

    slim = dict(recipe, model_kwargs={k: ("<plans>" if k == "plans" else v) for k, v in recipe["model_kwargs"].items()})
    atomic_write_text(path, yaml.safe_dump(slim, sort_keys=False))


def _report_validation(run: ResolvedRun, n_cubes: int, val_groups: list[str]) -> None:
    """One line on what validation (and the collapse check) is measured on."""
    split = run.recipe.split
    patients = len(set(val_groups))
    covered = "" if patients == split["val_groups"] else f" (the cubes come from {patients})"
    line = (f"validation: {n_cubes} cubes from {split['val_volumes']} held-out scan(s) of {split['val_groups']} "
            f"patient(s){covered}; training: {split['train_volumes']} scan(s) of {split['train_groups']} patient(s)")
    if split.get("overlap"):
        line += ("; warning: one patient only, so validation cubes come from the training scans (val_mse and "
                 "the collapse check measure fitting, not generalisation)")
    elif patients < 3:
        line += f"; warning: {patients} validation patient(s) give a weak collapse check (its margins say how weak)"
    print(line, file=sys.stderr)


def _scan_name(source: Any, i: int) -> str:
    """The file name (no folders) of volume ``i`` of ``source``."""
    name = str(source.name(i))
    return name.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]


def _log_columns() -> tuple[str, ...]:
    from genesis.training.logging import LOG_COLUMNS

    return LOG_COLUMNS


def _report_data(source: Any, cfg: PretrainConfig, out: Path, train_idx: list[int], val_idx: list[int],
                 is_main: bool, groups: list[str] | None = None) -> None:
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
            report = inspect_records(source.records, str(cfg.data.data), cache=getattr(source, "cache", None))
    if report is None:
        kind = "synthetic chest CT (generated)" if getattr(source, "is_synthetic", False) else type(source).__name__
        report = report_without_reading([VolumeRecord(Path(source.name(i))) for i in range(len(source))], kind)
    report.set_split(train_idx, val_idx, groups)
    for message in {m for scan in report.scans for m in scan.seen_warnings}:
        warnings.filterwarnings("ignore", message=re.escape(message) + "$", category=GenesisWarning)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        path = report.write_csv(out / "data.csv")
        print(report.table(path), file=sys.stderr, flush=True)


def _already_done(out: Path, cfg: PretrainConfig, method: Any) -> PretrainResult | None:
    """The finished run in ``out`` when ``--resume`` has nothing left to do ("already at epoch N of N")."""
    stages = method.stages()
    staged = len(stages) > 1 or stages[0] is not method
    lasts = [out / f"stage{i + 1}" / "last.pt" for i in range(len(stages))] if staged else [out / "last.pt"]
    if not (out / "last.pt").is_file() or not all(p.is_file() for p in lasts):
        return None
    ckpts = [load_checkpoint(p) for p in lasts]
    if not all(rundir.finished_epochs(c, cfg.epochs) for c in ckpts):
        return None
    last = load_checkpoint(out / "last.pt")
    epoch = int(last.get("epoch", 0))
    how = " (stopped early)" if last.get("stopped_early") else ""
    in_stages = f" in each of {len(stages)} stages" if staged else ""
    if env_dist_info().is_main:
        print(f"already at epoch {epoch} of {cfg.epochs}{in_stages}{how}: nothing left to train "
              "(raise --epochs to continue)", file=sys.stderr)
    history: list[dict[str, Any]] = []
    for i, c in enumerate(ckpts):
        history += [{**h, "stage": i + 1} if staged else dict(h) for h in c.get("history", [])]
    return PretrainResult(out, out / "best.pt", out / "last.pt", history, bool(last.get("synthetic")))


def _resume_checkpoint(last: Path) -> Path | None:
    if last.is_file():
        return last
    stage1 = last.parent / "stage1" / "last.pt"
    return stage1 if stage1.is_file() else None


def _check_resume(last: Path, cfg: PretrainConfig) -> None:
    """Refuse to resume a run of another task or other settings (a likely wrong --out or flag)."""
    found = _resume_checkpoint(last)
    if found is None:
        if (last.parent / "best.pt").is_file():
            raise GenesisError(
                "--resume: only best.pt is here, no last.pt (the training state is saved in last.pt); "
                "start over without --resume (or use another --out), or fine-tune from best.pt (genesis-finetune --weights)",
                last.parent,
            )
        raise GenesisError("--resume: nothing to resume (no last.pt)", last.parent)
    ckpt = load_checkpoint(found)
    if ckpt.get("task") not in (None, cfg.task):
        raise ConfigError(f"--resume: this run trained task {ckpt.get('task')!r}, not {cfg.task!r}", found)
    if isinstance(ckpt.get("config"), dict):
        rundir.check_resume_settings(ckpt["config"], config_to_dict(cfg), found)


def _check_resume_recipe(out: Path, recipe: dict[str, Any]) -> None:
    """Refuse to resume when the recipe resolved now differs from the run's (e.g. other data)."""
    found = _resume_checkpoint(out / "last.pt")
    if found is None:
        return
    saved = load_checkpoint(found).get("recipe")
    if not isinstance(saved, dict):  # a run from before recipes (format genesis-pretrain/1)
        return
    diffs = recipe_differences(saved, recipe)
    if diffs:
        raise ConfigError(f"--resume: the run's recipe differs from the one resolved now: {'; '.join(diffs[:6])}; "
                          "resume with the run's data and settings, or use another --out (or --overwrite)", found)
