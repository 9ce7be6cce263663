"""The training loop of one pretraining stage: epochs of steps, validation, checkpoints, logs.

Determinism and exact resume (CPU): nothing here draws from global random state except what is
restored from the checkpoint.

* Data order: epoch ``e`` reads cube keys ``e * len(ds) + i`` (``CubeDataset`` is a pure function
  of (seed, key)) through ``make_loader(..., epoch=e, rank, world_size)``; DataLoader workers only
  read and crop cubes.
* Proxy randomness: a fresh ``torch.Generator`` per step, seeded from (seed, stage, epoch, step,
  rank) on the training device, so resuming needs no generator state and any number of
  workers/ranks gives the same pairs. The transforms run in the training process (on the GPU
  when there is one), batched.
* Model, optimizer, schedule, grad scaler, early stopping, history and the global RNG state are
  saved in ``last.pt`` at the end of every epoch (atomically), after everything that draws random
  numbers in that epoch.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from genesis.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint, write_error
from genesis.device import autocast, needs_grad_scaler
from genesis.errors import ConfigError, TrainingDivergedError  # noqa: F401  (moved to genesis.errors; re-exported)
from genesis.methods.base import Method
from genesis.methods.proxy import prepare_pair, task_input_dims  # noqa: F401  (re-exported)
from genesis.models import ModelOutput, unpack_output
from genesis.rng import capture_rng_state, restore_rng_state
from genesis.training.config import PretrainConfig
from genesis.training.ddp import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_buffers,
    broadcast_float,
    weights_checksums,
    wrap_model,
)
from genesis.training.collapse import collapse_note, margins
from genesis.training.logging import (
    MAX_ETA_EPOCHS,
    TensorBoardLogger,
    epoch_line,
    format_seconds,
    progress,
    stage_name,
    write_csv_log,
)
from genesis.training.schedule import EarlyStopping, EpochScheduler, build_optimizer


def nonfinite_tensors(model: nn.Module) -> tuple[int, int, list[str]]:
    """Count non-finite entries in the parameters and buffers of ``model``.

    Returns:
        (non-finite values, total values, names of the tensors holding them).
    """
    bad, total, names = 0, 0, []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point():
            continue
        n = int((~torch.isfinite(tensor.detach())).sum())
        total += tensor.numel()
        if n:
            bad += n
            names.append(name)
    return bad, total, names


def _diverged_hint(lr: float) -> str:
    return (f"lower the learning rate (now {lr:g}; --lr), or try --optimizer adam; "
            "no checkpoint was written for this epoch (earlier ones are kept)")


# ------------------------------------------------------------------------------- seeds and pairs
def step_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (seed, stage, epoch, step, rank, ...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


# --------------------------------------------------------------------------------- epoch context
@dataclass
class EpochContext:
    """What ``ProxyTask.on_epoch_start`` receives (DeepCluster refreshes its pseudo-labels).

    Attributes:
        epoch: the epoch about to start (0-based).
        model: the bare network being trained.
        device: the training device.
        generator: a generator seeded for this (stage, epoch), on ``device``.
        batches: cube batches (B, 1, D, H, W) on ``device`` from this epoch's training data.
        dims: 2 or 3 (slices or sub-volumes).
    """

    epoch: int
    model: nn.Module
    device: torch.device
    generator: torch.Generator
    batches: Sequence[torch.Tensor]
    dims: int = 3

    @torch.no_grad()
    def features(self, batch: torch.Tensor) -> torch.Tensor:
        """Globally pooled encoder features (B, F) of a batch, computed in eval mode."""
        return pooled_features(self.model, batch.to(self.device))


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, F) features: ``forward_features`` of the backbone (or the model), averaged over space."""
    net = getattr(model, "backbone", model)
    was_training = model.training
    model.eval()
    try:
        if hasattr(net, "forward_features"):
            feats = net.forward_features(x)
        elif hasattr(net, "encode"):
            feats = net.encode(x)
            feats = feats[-1] if isinstance(feats, (list, tuple)) else feats
        else:
            feats = unpack_output(net(x)).output
    finally:
        model.train(was_training)
    if isinstance(feats, ModelOutput):
        feats = feats.output
    return feats.float().flatten(2).mean(-1) if feats.dim() > 2 else feats.float()


# ------------------------------------------------------------------------------------ the engine
@dataclass
class StageResult:
    """Outcome of one stage: where its checkpoints are and one record per finished epoch."""

    out_dir: Path
    best_path: Path
    last_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    epochs_run: int = 0  # epochs trained by this call (0 when the stage was already complete)


@dataclass
class StageSpec:
    """One stage to train (a plain method is a single stage)."""

    index: int
    method: Any
    out_dir: Path
    init_weights: dict[str, torch.Tensor] | None = None
    n_stages: int = 1
    fresh: bool = False  # ignore an existing last.pt (an earlier stage changed under it)

    @property
    def task(self) -> Any:
        """The proxy task of a proxy-task method (what the stage's name describes)."""
        return getattr(self.method, "task", self.method)


class Trainer:
    """Trains a method's module, one stage at a time (:func:`~genesis.training.pretrain.run_pretraining`).

    Args:
        cfg: the effective configuration (resolved: ``steps_per_epoch`` and ``optim`` are set).
        model: the method's module (moved to ``device``, wrapped in DDP when distributed).
        train_ds: a ``CubeDataset``; ``make_loader`` builds each epoch's loader.
        make_loader: ``genesis.data.make_loader``.
        val_cubes: fixed validation cubes (N, 1, D, H, W) on the CPU.
        device, dist: where it trains.
        checkpoint_meta: extra entries of every checkpoint (recipe, task, model name/kwargs, synthetic...).
        val_groups: the patient of each validation cube (the collapse check's unit).
        grids: write a PNG grid of the validation samples every epoch (main process).
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        model: nn.Module,
        train_ds: Any,
        make_loader: Callable[..., Iterable],
        val_cubes: torch.Tensor,
        device: torch.device,
        dist: DistInfo,
        checkpoint_meta: dict[str, Any],
        val_groups: Sequence[str] | None = None,
        grids: bool = True,
    ) -> None:
        self.cfg = cfg
        self.model = model.to(device)
        self.train_ds = train_ds
        self.make_loader = make_loader
        self.val_cubes = val_cubes
        self.device = device
        self.dist = dist
        self.meta = checkpoint_meta
        self.val_groups = list(val_groups) if val_groups is not None else None
        self.grids = grids
        self.steps_per_epoch = int(cfg.steps_per_epoch)

    # ----------------------------------------------------------------------------------- stages
    def fit(self, stage: StageSpec) -> StageResult:
        """Train one stage until ``cfg.epochs`` or early stopping; resume from its last.pt."""
        cfg, device, dist = self.cfg, self.device, self.dist
        out = stage.out_dir
        last_path, best_path = out / "last.pt", out / "best.pt"
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(out)
        barrier(dist)

        model = self.model
        if stage.init_weights is not None:
            model.load_state_dict(stage.init_weights)
        optimizer = build_optimizer(model.parameters(), cfg.optim)
        scheduler = EpochScheduler(optimizer, cfg.schedule)
        scaler = torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, cfg.amp, cfg.precision))
        early = EarlyStopping.from_config(cfg.early_stop)
        history: list[dict[str, Any]] = []
        start_epoch, global_step = 0, 0

        if cfg.resume and not stage.fresh and last_path.is_file():
            ckpt = load_checkpoint(last_path, map_location=device)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            early.load_state_dict(ckpt["early_stop"])
            history = list(ckpt.get("history", []))
            start_epoch, global_step = int(ckpt["epoch"]), int(ckpt.get("global_step", 0))
            restore_rng_state(ckpt["rng"])
            if ckpt.get("stopped_early") or start_epoch >= cfg.epochs:
                return StageResult(out, best_path, last_path, history, bool(ckpt.get("stopped_early")))

        first_epoch = start_epoch
        net = wrap_model(model, dist, device)
        tb = TensorBoardLogger(out / "tensorboard", enabled=cfg.log.tensorboard and dist.is_main)
        stopped_early = early.should_stop
        try:
            for epoch in range(start_epoch, cfg.epochs):
                if stopped_early:
                    break
                record = self._train_epoch(net, model, stage, epoch, optimizer, scaler, global_step)
                broadcast_buffers(model, dist)
                global_step = record["step"]
                record.update(self._validate(model, stage, epoch))
                self._check_finite(model, record, optimizer, stage)  # before any checkpoint is written
                judged = "val_mean_mse" in record or any(k.endswith("_margin") for k in record)
                record["collapse"] = collapse_note(record) if judged else ""
                monitored = broadcast_float(record.get(stage.method.monitor_key, record["val_loss"]), dist, device)
                improved = early.update(monitored)
                scheduler.step(monitored)
                record["lr"] = scheduler.lr
                history.append(record)
                stopped_early = early.should_stop
                finished = stopped_early or epoch + 1 >= cfg.epochs
                if dist.is_main:
                    state = self._checkpoint(model, optimizer, scheduler, scaler, early, history, epoch + 1,
                                             global_step, stage, finished, stopped_early)
                    writing = best_path
                    try:  # any OSError while persisting the epoch: one line naming the file, exit 2
                        if improved or not best_path.is_file():
                            save_checkpoint(state, best_path)
                        writing = last_path
                        save_checkpoint(state, last_path)
                        writing = out / "log.csv"
                        write_csv_log(history, writing)
                    except OSError as exc:
                        raise write_error(exc, writing, "checkpoint" if writing.suffix == ".pt" else "log") from exc
                    tb.scalars(record, epoch + 1)
                    print(epoch_line(record, cfg.epochs, stage, self._eta(history, first_epoch, epoch)),
                          file=sys.stderr, flush=True)
                barrier(dist)
        finally:
            tb.close()
        if dist.distributed:
            sums = weights_checksums(model, dist, device)
            if len(set(sums)) != 1:
                raise RuntimeError(f"DDP ranks diverged: weight checksums {sums}")
            if dist.is_main:
                print(f"DDP: {dist.world_size} processes finished with identical weights (checksum {sums[0]:.6f})",
                      file=sys.stderr)
        return StageResult(out, best_path, last_path, history, stopped_early, epochs_run=len(history) - first_epoch)

    def _eta(self, history: list[dict[str, Any]], first_epoch: int, epoch: int) -> float | None:
        """Seconds until ``cfg.epochs`` at the pace of this call's epochs (early stopping may end sooner)."""
        if self.cfg.epochs > MAX_ETA_EPOCHS:
            return None
        recent = [float(r.get("seconds", 0.0)) for r in history[first_epoch:]]
        return (sum(recent) / max(len(recent), 1)) * (self.cfg.epochs - epoch - 1)

    # ------------------------------------------------------------------------------------ epochs
    def _train_epoch(self, net: nn.Module, model: nn.Module, stage: StageSpec, epoch: int,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     global_step: int) -> dict[str, Any]:
        cfg, device, dist = self.cfg, self.device, self.dist
        method: Method = stage.method
        loader = self.make_loader(self.train_ds, cfg.batch_size, epoch, cfg.data.workers, dist.rank,
                                  dist.world_size, cfg.seed, pin_memory=device.type == "cuda")
        if method.adapts_each_epoch:
            try:
                method.on_epoch_start(self._epoch_context(model, stage, epoch))
            except ValueError as exc:  # e.g. fewer samples than DeepCluster clusters
                raise ConfigError(f"task {self.meta.get('task')!r} at epoch {epoch + 1}: {exc}") from None
        net.train()
        total, count, samples = 0.0, 0, 0
        start = time.perf_counter()
        where = f"{stage_name(stage)}, " if stage.n_stages > 1 else ""
        bar = progress(loader, self.steps_per_epoch, f"{where}epoch {epoch + 1}/{cfg.epochs}",
                       cfg.log.progress and dist.is_main)
        for step, cubes in enumerate(bar):
            if step >= self.steps_per_epoch:
                break
            cubes = _cubes_of(cubes).to(device, non_blocking=True)
            gen = make_generator(step_seed(cfg.seed, stage.index, epoch, step, dist.rank), device)
            views = method.views(cubes, gen, cfg.dims)
            with autocast(device, cfg.amp, cfg.precision):
                out = method.forward(net, views)
            loss, _ = method.loss(out, views)
            if not torch.isfinite(loss):
                value = float(loss.detach())
                raise TrainingDivergedError(
                    f"training diverged: loss {value} at step {global_step + 1} (epoch {epoch + 1}, "
                    f"step {step + 1} of the epoch); {_diverged_hint(optimizer.param_groups[0]['lr'])}",
                    step=global_step + 1, loss=value, path=stage.out_dir,
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            method.after_step(model, global_step + 1)
            total += float(loss.detach())
            count += 1
            samples += int(cubes.shape[0])
            global_step += 1
            if hasattr(bar, "set_postfix"):
                elapsed = max(time.perf_counter() - start, 1e-9)
                # the bar's own ETA covers this epoch; run_eta adds the epochs still to come
                rest = elapsed / (step + 1) * (self.steps_per_epoch * (cfg.epochs - epoch) - step - 1)
                eta = {"run_eta": format_seconds(rest)} if cfg.epochs <= MAX_ETA_EPOCHS else {}
                bar.set_postfix(loss=f"{total / count:.4f}", samples_s=f"{samples * dist.world_size / elapsed:.1f}",
                                **eta)
        if hasattr(bar, "close"):
            bar.close()
        seconds = time.perf_counter() - start
        train_loss = all_reduce_mean(total / max(count, 1), dist, device)
        return {
            "epoch": epoch + 1,
            "step": global_step,
            "train_loss": train_loss,
            "samples_per_s": samples * dist.world_size / max(seconds, 1e-9),
            "seconds": seconds,
        }

    def _epoch_context(self, model: nn.Module, stage: StageSpec, epoch: int) -> EpochContext:
        """The epoch hook's batches: this epoch's cubes of *all* ranks (rank 0's view of the keys),
        identical on every process, so DeepCluster's clusters agree across DDP ranks."""
        cfg = self.cfg
        loader = self.make_loader(self.train_ds, cfg.batch_size, epoch, cfg.data.workers, 0, 1, cfg.seed)
        batches: list[torch.Tensor] = []
        for step, cubes in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            batches.append(_cubes_of(cubes).to(self.device))
        if cfg.dims == 2 and task_input_dims(stage.task) != 3:  # DeepCluster sees the slices it trains on
            gen = make_generator(step_seed(cfg.seed, stage.index, epoch, 1 << 20), self.device)
            batches = [b[:, :, torch.randint(0, b.shape[2], (1,), generator=gen, device=self.device).item()]
                       for b in batches]
        gen = make_generator(step_seed(cfg.seed, stage.index, epoch, 1 << 21), self.device)
        return EpochContext(epoch=epoch, model=model, device=self.device, generator=gen, batches=batches, dims=cfg.dims)

    @torch.no_grad()
    def _validate(self, model: nn.Module, stage: StageSpec, epoch: int) -> dict[str, Any]:
        """Loss and metrics on the fixed validation cubes with fixed proxy randomness (rank 0).

        Besides the method's sums (divided by its sample count), the per-cube errors of the model
        and of its trivial baselines give the collapse check's margins over held-out patients.
        """
        if not self.dist.is_main:
            return {"val_loss": float("nan")}
        cfg, device = self.cfg, self.device
        method: Method = stage.method
        model.eval()
        sums: dict[str, float] = {}
        errors: dict[str, list[torch.Tensor]] = {}
        n = 0
        first = None
        bs = max(cfg.batch_size, 1)
        for i in range(0, len(self.val_cubes), bs):
            cubes = self.val_cubes[i:i + bs].to(device)
            gen = make_generator(step_seed(cfg.seed, stage.index, 1 << 30, i), device)
            views = method.views(cubes, gen, cfg.dims)
            with autocast(device, cfg.amp, cfg.precision):
                out = method.forward(model, views)
            loss, _ = method.loss(out, views)
            b = method.count(views)
            sums["val_loss"] = sums.get("val_loss", 0.0) + float(loss) * b
            for key, value in method.validation(out, views).items():
                sums[key] = sums.get(key, 0.0) + value
            for key, value in method.per_sample(out, views).items():
                errors.setdefault(key, []).append(value.detach().float().cpu())
            n += b
            if first is None:
                first = (views, out)
        model.train()
        metrics = {k: v / max(n, 1) for k, v in sums.items()}
        if errors and self.val_groups is not None:
            per_cube = {k: torch.cat(v).numpy() for k, v in errors.items()}
            metrics.update(margins(per_cube, self.val_groups[:len(per_cube["model"])]))
        if self.grids and first is not None and cfg.log.grids:
            staged = f" {stage_name(stage)}" if stage.n_stages > 1 else ""
            synthetic = " (synthetic data)" if self.meta.get("synthetic") else ""
            method.grid(first[0], first[1], stage.out_dir / "grids" / f"epoch_{epoch + 1:04d}.png",
                        f"{self.meta.get('task')}{staged}, epoch {epoch + 1}{synthetic}", cfg.log.grid_samples)
        return metrics

    def _check_finite(self, model: nn.Module, record: dict[str, Any], optimizer: torch.optim.Optimizer,
                      stage: StageSpec) -> None:
        """Raise :class:`TrainingDivergedError` when the weights or the epoch's losses are not finite.

        A loss can stay finite while the weights are not (a saturated sigmoid output), so the
        weights are checked too; this runs once per epoch, right before the checkpoints.
        """
        bad, total, names = nonfinite_tensors(model)
        losses = {k: record[k] for k in ("train_loss", "val_loss") if k in record}
        bad_losses = {k: v for k, v in losses.items() if not math.isfinite(v) and not (
            k == "val_loss" and not self.dist.is_main)}  # other ranks do not validate (NaN placeholder)
        if not bad and not bad_losses:
            return
        lr = optimizer.param_groups[0]["lr"]
        if bad:
            what = f"{bad:,} of {total:,} weight values are NaN/inf (e.g. {', '.join(names[:3])})"
        else:
            what = ", ".join(f"{k} {v}" for k, v in bad_losses.items())
        loss = record.get("train_loss", float("nan"))
        raise TrainingDivergedError(
            f"training diverged at step {record['step']} (end of epoch {record['epoch']}): {what}; {_diverged_hint(lr)}",
            step=record["step"], loss=loss, path=stage.out_dir,
        )

    # ------------------------------------------------------------------------------- checkpoints
    def _checkpoint(self, model, optimizer, scheduler, scaler, early, history, epoch, global_step,
                    stage: StageSpec, finished: bool, stopped_early: bool) -> dict[str, Any]:
        return {
            **self.meta,
            "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "early_stop": early.state_dict(),
            "epoch": epoch,
            "global_step": global_step,
            "stage": stage.index,
            "rng": capture_rng_state(),
            "history": history,
            "metrics": dict(history[-1]) if history else {},
            "finished": finished,
            "stopped_early": stopped_early,
        }


def _cubes_of(batch: Any) -> torch.Tensor:
    """The cube tensor of a loader batch (a tensor, or the first item of a tuple/dict)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        for key in ("cube", "image", "cubes"):
            if key in batch:
                return batch[key]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    raise TypeError(f"unexpected batch type {type(batch).__name__}")

