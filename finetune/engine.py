"""Fine-tuning loop, evaluation and the experiment driver :func:`run_finetune`.

One *run* = one label fraction x one seed: build the network (transfer or random init), train with
Adam on seeded random batches (crops around lesions for segmentation, class-balanced cubes for
classification), validate every epoch, stop early when the validation metric has not improved for
``patience`` epochs, then evaluate the best checkpoint on the test split:

* segmentation: whole test volumes / regions (larger than the training crop) through MONAI's
  ``sliding_window_inference`` with Gaussian blending; per-case Dice and IoU at probability 0.5 and
  the IoU averaged over thresholds 0.5..0.95 (:func:`finetune.stats.iou_over_thresholds`);
* classification: AUC over test samples, or over studies after max-aggregation (``pe``).

Every test value carries its patient (``groups``): confidence intervals resample patients
(:mod:`finetune.stats`). Segmentation values also say which cases have foreground; the headline
metrics are over those (see :func:`score_test`).

Runs are resumable: ``last.pt`` (model, optimiser, epoch, early-stopping state) is written
atomically after every epoch, ``result.json`` when a run is done. Batches and augmentation are
drawn from generators seeded by (seed, epoch, step), so a resumed run sees the same data.

A loss, weight or validation metric that is NaN or infinite stops the run with a
:class:`genesis.errors.TrainingDivergedError` naming the step, before anything is written: no
checkpoint ever holds diverged weights (earlier epochs' checkpoints stay as they were).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from finetune.augment import Augmenter
from finetune.config import FinetuneConfig
from finetune.data import (
    TargetData,
    draw_subsets,
    random_crop,
    unit_group,
    without_foreground,
)
from finetune.eta import StepTimer, total_steps
from finetune.stats import bootstrap_ci, dice, iou, iou_over_thresholds, metric_values, n_units, unit_statistic
from finetune.study import fit_in_plane
from finetune.targets import Target, get_target
from finetune.transfer import build_model, frozen_batchnorm_eval
from genesis.config import config_to_dict, save_config
from genesis.device import autocast, needs_grad_scaler, resolve_device
from genesis.errors import CheckpointError, DatasetLayoutError, TrainingDivergedError
from genesis.fileio import atomic_write_json
from genesis.models import unpack_output
from genesis.rng import numpy_generator
from genesis.training.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint

Log = Callable[[str], None]

SYNTHETIC_BANNER = "*** SYNTHETIC DATA: embedded synthetic chest CT, not patients; numbers are a demo only ***"


# ------------------------------------------------------------------------------------- batches
def sample_batch(
    task: str,
    train: list,
    crop: tuple[int, ...],
    batch_size: int,
    rng: np.random.Generator,
    balance: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: (B, C, *crop) images and (B, 1, *crop) masks or (B, 1) labels.

    Images without a channel axis get one (C = 1); masks hold class indices.
    """
    spatial = len(crop)
    if task == "segmentation":
        pairs = [random_crop(train[int(rng.integers(len(train)))], crop, rng) for _ in range(batch_size)]
        images = _with_channel(np.stack([p[0] for p in pairs]), spatial)
        masks = np.stack([p[1] for p in pairs])[:, None]
        return torch.from_numpy(images.astype(np.float32)), torch.from_numpy(masks.astype(np.float32))
    labels = np.array([s.label for s in train])
    if labels.ndim > 1:  # multi-label samples (chexpert): no single class to balance on
        balance, by_class = False, []
    else:
        classes = (0, 1) if set(labels.tolist()) <= {0, 1} else tuple(sorted(set(labels.tolist())))
        by_class = [np.flatnonzero(labels == c) for c in classes]
    picks = []
    for _ in range(batch_size):
        if balance and all(idx.size for idx in by_class):
            idx = by_class[int(rng.integers(len(by_class)))]  # positives are rare: draw every class equally
            picks.append(int(idx[rng.integers(idx.size)]))
        else:
            picks.append(int(rng.integers(len(train))))
    # study windows are stored larger than the crop (Ke et al.: 256 -> random 224); cubes pass unchanged
    images = _with_channel(np.stack([_fit_crop(train[i].image, crop, rng) for i in picks]), spatial).astype(np.float32)
    y = np.array([np.atleast_1d(train[i].label) for i in picks], dtype=np.float32)
    return torch.from_numpy(images), torch.from_numpy(y)


def _fit_crop(image: np.ndarray, crop: tuple[int, ...], rng: np.random.Generator | None = None) -> np.ndarray:
    """A single-channel (D, H, W) window cut in-plane to the crop (see :func:`fit_in_plane`);
    2D images and multi-channel samples are already at the network's size and pass unchanged."""
    return fit_in_plane(image, crop[1:], rng) if len(crop) == 3 and image.ndim == 3 else image


def _with_channel(batch: np.ndarray, spatial: int) -> np.ndarray:
    """(B, *spatial) -> (B, 1, *spatial); (B, C, *spatial) unchanged."""
    return batch[:, None] if batch.ndim == spatial + 1 else batch


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice (1 - Dice over the batch), both on the sigmoid output."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, masks)
    prob = torch.sigmoid(logits)
    inter = (prob * masks).sum()
    soft_dice = (2 * inter + 1.0) / (prob.sum() + masks.sum() + 1.0)
    return bce + (1.0 - soft_dice)


def multiclass_segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy + soft Dice over the K classes (MONAI ``DiceCELoss``); ``masks`` hold
    class indices (B, 1, *spatial)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)(logits.float(), masks)


def target_loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Loss of a batch: one output channel is binary (sigmoid), K > 1 are K classes (softmax)."""
    multiclass = logits.shape[1] > 1
    if task == "segmentation":
        return multiclass_segmentation_loss(logits, targets) if multiclass else segmentation_loss(logits, targets)
    if multiclass:
        return F.cross_entropy(logits.float(), targets.reshape(-1).long())
    return F.binary_cross_entropy_with_logits(logits.reshape(targets.shape), targets)


@torch.no_grad()
def recompute_bn_stats(
    model: torch.nn.Module,
    task: str,
    train: list,
    crop: tuple[int, int, int],
    cfg: FinetuneConfig,
    seed: int,
    device: torch.device,
    slices: Any = None,
) -> None:
    """Precise batch norm: running statistics of the trainable BN layers = the average over
    ``cfg.precise_bn_batches`` training batches under the current weights.

    With a few hundred steps of batch 4 the moving average (momentum 0.1) still carries the
    statistics of earlier weights, and eval-mode predictions suffer (Wu & Johnson 2021). Frozen
    BN layers (frozen encoder) keep their statistics. Batches come from a generator seeded by
    ``seed`` only, so the result is reproducible.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
              and any(p.requires_grad for p in m.parameters(recurse=False))]
    if not layers or cfg.precise_bn_batches < 1:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    frozen_batchnorm_eval(model)
    rng = numpy_generator(seed, 1_000_003)  # a stream no (epoch, step) batch uses
    for _ in range(cfg.precise_bn_batches):
        images, _ = (slices.sample(train, cfg.batch_size, rng) if slices is not None
                     else sample_batch(task, train, crop, cfg.batch_size, rng, cfg.balance))
        with autocast(device, cfg.amp, cfg.precision):
            model(images.to(device))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.train(was_training)


# ---------------------------------------------------------------------------------- evaluation
def _forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return unpack_output(model(x)).output


@torch.no_grad()
def predict_volume(
    model: torch.nn.Module, image: np.ndarray, crop: tuple[int, ...], cfg: FinetuneConfig, device: torch.device,
    batched: bool = False,
) -> np.ndarray:
    """Foreground probability of a whole (z, y, x) volume (or (y, x) image, channels first when
    several) by sliding-window inference; (K, *spatial) class probabilities for K-class models.
    ``batched``: ``image`` is (N, C, *spatial) and the result has a leading N axis (planes of a
    volume, :mod:`finetune.slicewise`)."""
    from monai.inferers import sliding_window_inference  # MONAI (1.5 s to import) once a run evaluates

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    x = (x if batched else x[None, None] if x.dim() == len(crop) else x[None]).to(device)
    with autocast(device, cfg.amp, cfg.precision):
        logits = sliding_window_inference(
            x,
            roi_size=crop,
            sw_batch_size=cfg.evaluation.sw_batch_size,
            predictor=lambda t: _forward(model, t),
            overlap=cfg.evaluation.sw_overlap,
            mode=cfg.evaluation.sw_mode,
        )
    logits = torch.as_tensor(logits).float()
    if logits.shape[1] > 1:
        probs = torch.softmax(logits, 1)
        return (probs if batched else probs[0]).cpu().numpy()
    return torch.sigmoid(logits)[:, 0].cpu().numpy() if batched else torch.sigmoid(logits)[0, 0].cpu().numpy()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    target: Target,
    samples: list,
    crop: tuple[int, int, int],
    cfg: FinetuneConfig,
    device: torch.device,
) -> dict[str, Any]:
    """Per-unit test values: a unit is a case (segmentation), a sample, or a study (aggregated).

    Returns:
        Segmentation: ``{"names", "groups", "foreground", "dice", "iou", "iou_mean_thresholds"}``
        (one value per case; ``foreground``: the case's mask has foreground).
        Classification: ``{"names", "groups", "labels", "scores"}`` (one per sample or per group).
        ``groups`` is every unit's patient (:func:`finetune.data.unit_group`).
    """
    model.eval()
    if target.task == "segmentation" and target.out_channels > 1:
        return _evaluate_multiclass(model, target, samples, crop, cfg, device)
    if target.task == "segmentation":
        out: dict[str, Any] = {"names": [], "groups": [], "foreground": [], "dice": [], "iou": [],
                               "iou_mean_thresholds": []}
        slices = getattr(target, "slices", None)  # 2D/2.5D inputs of a 3D target: plane by plane, stacked
        for case in samples:
            if slices is not None:
                prob = slices.predict(case.image, lambda planes: predict_volume(model, planes, crop, cfg, device, batched=True))
            else:
                prob = predict_volume(model, case.image, crop, cfg, device)
            pred = prob > 0.5
            out["names"].append(case.name)
            out["groups"].append(unit_group(case))
            out["foreground"].append(bool(np.any(case.mask)))
            out["dice"].append(dice(pred, case.mask))
            out["iou"].append(iou(pred, case.mask))
            out["iou_mean_thresholds"].append(iou_over_thresholds(prob, case.mask))
        return out
    scores: list[float] = []
    batch = max(1, cfg.batch_size)
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        x = torch.from_numpy(_with_channel(np.stack([_fit_crop(s.image, crop) for s in chunk]), len(crop)).astype(np.float32)).to(device)
        with autocast(device, cfg.amp, cfg.precision):
            logits = _forward(model, x)
        if hasattr(target, "score_units"):  # multi-label (chexpert): every label's sigmoid
            scores.extend(torch.sigmoid(logits.float()).reshape(len(chunk), -1).cpu().tolist())
        elif target.out_channels > 1:  # K classes: the softmax vector of every sample
            scores.extend(torch.softmax(logits.float().reshape(len(chunk), -1), 1).cpu().tolist())
        else:
            scores.extend(torch.sigmoid(logits.float()).reshape(len(chunk), -1)[:, 0].cpu().tolist())
    if hasattr(target, "score_units"):  # multi-label targets (chexpert): per-label AUCs
        return target.score_units(samples, np.asarray(scores, dtype=np.float64).reshape(len(samples), -1), cfg)
    labels = [int(s.label) for s in samples]
    names = [s.name for s in samples]
    groups = [unit_group(s) for s in samples]
    if target.aggregate is not None:  # study-level prediction = max (Ke et al. 2023) or mean over its windows
        members: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            members.setdefault(s.group, []).append(i)
        names = sorted(members)
        labels = [max(labels[i] for i in members[g]) for g in names]
        reduce = max if getattr(cfg, "aggregate", "max") == "max" else (lambda v: float(np.mean(list(v))))
        scores = [reduce(scores[i] for i in members[g]) for g in names]
        groups = names  # one unit per study
    return {"names": names, "groups": groups, "labels": labels, "scores": scores}


def _evaluate_multiclass(
    model: torch.nn.Module, target: Target, samples: list, crop: tuple[int, ...], cfg: FinetuneConfig,
    device: torch.device,
) -> dict[str, Any]:
    """K-class segmentation: per case, Dice and IoU of every foreground class (argmax prediction)
    and their means over the classes (``dice``, ``iou``); which cases hold any foreground
    (``foreground``) and each class (``foreground_<class>``)."""
    names = list(getattr(target, "class_names", None) or [str(k) for k in range(target.out_channels)])
    out: dict[str, Any] = {"names": [], "groups": [], "foreground": [], "dice": [], "iou": []}
    for k in range(1, target.out_channels):
        out[f"dice_{names[k]}"] = []
        out[f"iou_{names[k]}"] = []
        out[f"foreground_{names[k]}"] = []  # the per-class metrics count the cases holding the class
    for case in samples:
        pred = predict_volume(model, case.image, crop, cfg, device).argmax(0)
        dices, ious = [], []
        for k in range(1, target.out_channels):
            dices.append(dice(pred == k, case.mask == k))
            ious.append(iou(pred == k, case.mask == k))
            out[f"dice_{names[k]}"].append(dices[-1])
            out[f"iou_{names[k]}"].append(ious[-1])
            out[f"foreground_{names[k]}"].append(bool(np.any(case.mask == k)))
        out["names"].append(case.name)
        out["groups"].append(unit_group(case))
        out["foreground"].append(bool(np.any(case.mask > 0)))
        out["dice"].append(float(np.mean(dices)))
        out["iou"].append(float(np.mean(ious)))
    return out


def score_test(target: Target, values: dict[str, Any], cfg: FinetuneConfig) -> dict[str, Any]:
    """The test record of a run: its metrics, their patient-bootstrap CIs and, for segmentation,
    the cases without foreground and the metrics over all cases.

    Segmentation metrics are means over the test cases whose ground truth has foreground (the
    convention of the segmentation challenges: an empty mask has no object to overlap); the mean
    over every case, empty masks scored 1 for an empty prediction and 0 otherwise, is
    ``metrics_all_cases``.
    """
    metrics = metric_values(target.task, values, target.metrics)
    n = n_units(values)
    ci = {m: bootstrap_ci(unit_statistic(target.task, values, m), n, n_resamples=cfg.evaluation.bootstrap_resamples,
                          confidence=cfg.evaluation.confidence, seed=cfg.seed)
          for m in target.metrics}
    out: dict[str, Any] = {"metrics": metrics, "ci": ci, "n_test_units": n}
    if target.task == "segmentation" and "foreground" in values:
        empty = [name for name, fg in zip(values["names"], values["foreground"]) if not fg]
        predicted_empty = sum(1 for d, fg in zip(values["dice"], values["foreground"]) if not fg and d == 1.0)
        out["metrics_all_cases"] = metric_values(target.task, values, target.metrics, all_cases=True)
        out["cases_without_foreground"] = {"n": len(empty), "names": empty, "predicted_empty": predicted_empty}
    return out


# -------------------------------------------------------------------------------------- one run
def train_run(
    target: Target,
    data: TargetData,
    train: list,
    cfg: FinetuneConfig,
    seed: int,
    run_dir: Path,
    device: torch.device,
    log: Log = print,
    timer: StepTimer | None = None,
) -> dict[str, Any]:
    """Train one run and evaluate its best checkpoint on the test split; returns ``result.json``.

    ``timer`` receives the duration of every training step (the experiment's time estimate).

    Raises:
        TrainingDivergedError: a NaN/infinite loss (at its step), weights or validation metric (at
            the end of the epoch), before that epoch's checkpoints are written.
    """
    result_path = run_dir / "result.json"
    if cfg.resume and result_path.is_file():
        log(f"  {run_dir}: finished earlier, reusing result.json")
        return json.loads(result_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    crop = target.crop(cfg)
    with torch.random.fork_rng(devices=[]):  # seeds the layer init of this run only, not the caller's RNG
        torch.manual_seed(seed)
        model, model_name, model_kwargs, transfer_info = build_model(
            target.task, cfg, spatial_dims=target.spatial_dims, in_channels=target.in_channels,
            out_channels=getattr(target, "num_outputs", target.out_channels))
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                                 weight_decay=cfg.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if needs_grad_scaler(device, cfg.amp, cfg.precision) else None
    rotate = cfg.augment.rotate_degrees if cfg.augment.rotate_degrees is not None else target.rotate_degrees
    augmenter = Augmenter(cfg.augment, crop, with_mask=target.task == "segmentation", rotate_degrees=rotate)

    state: dict[str, Any] = {"epoch": 0, "best_metric": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if cfg.resume and last_path.is_file():
        ckpt = load_checkpoint(last_path, map_location=device)
        try:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"cannot resume: checkpoint does not fit this configuration ({exc})", last_path) from None
        state = {k: ckpt[k] for k in state}
        log(f"  resuming {run_dir} after epoch {state['epoch']}")

    extra = {"model_name": model_name, "model_kwargs": model_kwargs, "target": target.name,
             "config": config_to_dict(cfg), "seed": seed}
    started = time.perf_counter()
    for epoch in range(state["epoch"], cfg.epochs):
        if state["bad_epochs"] >= cfg.patience:
            break
        model.train()
        frozen_batchnorm_eval(model)
        losses = []
        for step in range(cfg.steps_per_epoch):
            step_started = time.perf_counter()
            rng = numpy_generator(seed, epoch, step)
            if getattr(target, "slices", None) is not None:  # 2D/2.5D planes of a 3D target (finetune.slicewise)
                images, targets = target.slices.sample(train, cfg.batch_size, rng)
            else:
                images, targets = sample_batch(target.task, train, crop, cfg.batch_size, rng, cfg.balance)
            masks = targets if target.task == "segmentation" else None
            images, masks = augmenter.batch(images, masks, rng.integers(0, 2**31, images.shape[0]))
            images = images.to(device)
            targets = (masks if masks is not None else targets).to(device)
            with autocast(device, cfg.amp, cfg.precision):
                out = unpack_output(model(images))
            logits = out.output.float()
            if hasattr(target, "loss"):  # e.g. chexpert: BCE masked by ignored (uncertain) labels
                loss = target.loss(logits, targets)
            else:
                loss = target_loss(target.task, logits, targets)
            if out.aux_loss is not None:
                loss = loss + out.aux_loss.float()
            value = float(loss.detach())  # checked before the update: a NaN loss never reaches the weights
            if not math.isfinite(value):
                raise _diverged(f"loss {value}", epoch, step + 1, cfg, optimizer, run_dir, value)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            losses.append(value)
            if timer is not None:
                timer.record(time.perf_counter() - step_started)
        if timer is not None:
            timer.finish()  # an epoch shorter than the steps it times
        train_loss = float(np.mean(losses))
        recompute_bn_stats(model, target.task, train, crop, cfg, seed, device, getattr(target, "slices", None))
        _check_weights(model, epoch, cfg, optimizer, run_dir, train_loss)
        val_values = evaluate(model, target, data.val, crop, cfg, device)
        val = metric_values(target.task, val_values, (target.val_metric,))[target.val_metric]
        _check_validation(target.task, val_values, val, target.val_metric, epoch, cfg, optimizer, run_dir, train_loss)
        # An undefined validation metric (e.g. AUC of a one-class validation set) falls back to
        # the training loss so early stopping still has something to watch.
        score = val if not math.isnan(val) else -train_loss
        state["history"].append({"epoch": epoch + 1, "train_loss": train_loss, f"val_{target.val_metric}": val})
        state["epoch"] = epoch + 1
        if score > state["best_metric"]:
            state.update(best_metric=score, best_epoch=epoch + 1, bad_epochs=0)
            save_checkpoint({"model": model.state_dict(), "epoch": epoch + 1, "metric": score, **extra}, best_path)
        else:
            state["bad_epochs"] += 1
        # no RNG state to save: batches, augmentation and init are seeded by (seed, epoch, step)
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(), **state, **extra}, last_path)
        log(f"  epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}  val {target.val_metric} {val:.4f}")

    if best_path.is_file():
        model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
    test_values = evaluate(model, target, data.test, crop, cfg, device)
    result = {
        "seed": seed,
        "n_train": len(train),
        # the patients this run trained and validated on (the samples given to the batches)
        "train_groups": sorted({unit_group(s) for s in train}),
        "val_groups": sorted({unit_group(s) for s in data.val}),
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "train_seconds": round(time.perf_counter() - started, 2),
        **score_test(target, test_values, cfg),
        "transfer": transfer_info,
        "history": state["history"],
        "test_units": test_values,
    }
    atomic_write_json(result_path, result)
    return json.loads(result_path.read_text())


def _diverged(what: str, epoch: int, step: int, cfg: FinetuneConfig, optimizer: torch.optim.Optimizer,
              run_dir: Path, loss: float) -> TrainingDivergedError:
    """The error of a run that diverged at ``step`` (1-based, within 0-based ``epoch``)."""
    global_step = epoch * cfg.steps_per_epoch + step
    lr = optimizer.param_groups[0]["lr"]
    return TrainingDivergedError(
        f"fine-tuning diverged: {what} at step {global_step} (epoch {epoch + 1}, step {step} of the epoch); lower "
        f"the learning rate (now {lr:g}; --lr); no checkpoint was written for this epoch (earlier ones are kept)",
        step=global_step, loss=loss, path=run_dir)


def _check_weights(model: torch.nn.Module, epoch: int, cfg: FinetuneConfig, optimizer: torch.optim.Optimizer,
                   run_dir: Path, train_loss: float) -> None:
    """A loss can stay finite while the weights are not (e.g. an update to inf on the last step)."""
    from genesis.training.engine import nonfinite_tensors  # pretraining's check; its imports once a run trains

    bad, total, names = nonfinite_tensors(model)
    if bad or not math.isfinite(train_loss):
        what = (f"{bad:,} of {total:,} weight values are NaN/inf (e.g. {', '.join(names[:3])})" if bad
                else f"mean training loss {train_loss}")
        raise _diverged(what, epoch, cfg.steps_per_epoch, cfg, optimizer, run_dir, train_loss)


def _check_validation(task: str, values: dict[str, Any], val: float, metric: str, epoch: int, cfg: FinetuneConfig,
                      optimizer: torch.optim.Optimizer, run_dir: Path, train_loss: float) -> None:
    """An infinite validation metric, non-finite validation scores, or a NaN segmentation metric is
    divergence; a NaN classification metric with finite scores is undefined (e.g. the AUC of a
    validation split with one class) and left to the early-stopping fallback."""
    scores = np.asarray(values.get("scores", []), dtype=np.float64)
    undefined = task != "segmentation" and bool(np.isfinite(scores).all())
    if math.isinf(val) or not np.isfinite(scores).all() or (math.isnan(val) and not undefined):
        raise _diverged(f"validation {metric} {val}" + ("" if np.isfinite(scores).all() else " (NaN/inf scores)"),
                        epoch, cfg.steps_per_epoch, cfg, optimizer, run_dir, train_loss)


# ------------------------------------------------------------------------------ the experiment
def _check_splits(data: TargetData, target: Target) -> None:
    for split in ("train", "val", "test"):
        if not getattr(data, split):
            raise DatasetLayoutError(f"target {target.name!r}: the {split} split is empty ({data.source})")
    if target.task == "classification" and not getattr(target, "multilabel", False):
        labels = {s.label for s in data.train}
        if (labels != {0, 1} and target.out_channels == 1) or len(labels) < 2:
            raise DatasetLayoutError(
                f"target {target.name!r}: the training split needs positives and negatives, has labels {sorted(labels)} ({data.source})"
            )


def check_labels(data: TargetData, target: Target, log: Log) -> list[str]:
    """Labels without foreground (segmentation): an error when no training case has any, else a
    warning naming the cases of each split that have none. Returns the training and validation
    warnings (the test cases without foreground are reported by the metrics, apart)."""
    if target.task != "segmentation":
        return []
    empty = {split: without_foreground(getattr(data, split)) for split in ("train", "val", "test")}
    if len(empty["train"]) == len(data.train):
        raise DatasetLayoutError(f"target {target.name!r}: no training label holds any foreground: nothing to "
                                 f"segment ({data.source})")
    warnings = []
    for split, names in empty.items():
        if names:
            shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            what = (" (their metrics are reported apart; the headline metrics are over the cases with foreground)"
                    if split == "test" else "")
            line = (f"{len(names)} of {len(getattr(data, split))} {split} cases have no foreground in their "
                    f"labels{what}: {shown}")
            log(f"warning: {line}")
            if split != "test":
                warnings.append(line)
    return warnings


def fraction_warnings(fraction: float, draws: Any, cfg: FinetuneConfig, target: Target) -> list[str]:
    """What the reader of a label fraction's numbers must know: reused subsets, fewer training
    patients than ``cfg.min_train_patients``, drawn subsets without any foreground."""
    out = []
    if draws.note and fraction < 1.0:
        out.append(f"label fraction {fraction:g}: {draws.note}")
    counts = sorted({len({unit_group(s) for s in train}) for train in draws.subsets})
    if counts[0] < cfg.min_train_patients:
        shown = counts[0] if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        out.append(f"label fraction {fraction:g} leaves {shown} training patient(s), fewer than "
                   f"min_train_patients = {cfg.min_train_patients}: its numbers rest on very few patients")
    if target.task == "segmentation":
        seeds = [cfg.seed + k for k, train in enumerate(draws.subsets) if len(without_foreground(train)) == len(train)]
        if seeds:
            out.append(f"label fraction {fraction:g}: the training patients of seed(s) {seeds} have no foreground at all")
    return out


def run_finetune(cfg: FinetuneConfig, log: Log = print) -> dict[str, Any]:
    """Run every (label fraction, seed) of ``cfg`` and write ``OUT/metrics.json``, ``.md`` and ``.png``.

    Returns:
        The content of ``metrics.json`` (see :func:`finetune.report.build_metrics`).

    Raises:
        GenesisError: bad configuration, dataset layout or checkpoint (message names the file).
    """
    from finetune.baselines import check_model
    from finetune.compare import check_comparable, comparability
    from finetune.report import build_metrics, write_reports

    cfg.validate()
    target = get_target(cfg.target)
    if cfg.model is None and getattr(target, "default_model", None):  # e.g. chexpert: densenet121
        from dataclasses import replace

        from finetune.baselines import weights_architecture

        if weights_architecture(cfg.weights)[0] is None:
            cfg = replace(cfg, model=target.default_model)
    choice = check_model(cfg, target.task, target.crop(cfg), target.name)  # before any data is read
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    from genesis.io import assumed_spacing

    with assumed_spacing(cfg.assume_spacing):  # every volume a target reads (luna16, lidc, layouts...)
        data = target.load(cfg)
    from finetune.load_report import write_load_report

    # after the data: the generic targets learn their dimensions, channels and classes from it, and
    # a report built for another network (e.g. 2D kernels "inflated" into a 3D U-Net) would be wrong
    network = {"spatial_dims": target.spatial_dims, "in_channels": target.in_channels,
               "out_channels": getattr(target, "num_outputs", target.out_channels)}
    if hasattr(target, "network_input"):  # 2D/2.5D ncs: unet2d
        network.update(target.network_input(cfg))
    write_load_report(cfg, target.task, out, log, **network)
    _check_splits(data, target)
    label_warnings = check_labels(data, target, log)
    record = comparability(cfg, target, data)
    if cfg.compare:  # before any training: a comparison with another test set or evaluation is refused
        check_comparable(record, cfg.compare)
    if data.synthetic:
        log(SYNTHETIC_BANNER)
    for note in data.notes:
        log(note)
    network = "unet2d" if choice.name == "unet3d" and target.spatial_dims == 2 else choice.name
    log(f"target {target.name} ({target.title}); model {network}"
        f"{f' with weights {cfg.weights}' if cfg.weights else f' ({cfg.init} init)'}; data: {data.source}; "
        f"train/val/test = {len(data.train)}/{len(data.val)}/{len(data.test)}; device {device}")
    from genesis.device import describe_precision, resolve_precision

    log(describe_precision(resolve_precision(cfg.precision, device, cfg.amp), device))
    lr_record = None
    if cfg.lr_search:  # Ke et al.: the rate with the best validation metric on 10% of the data
        from finetune.lr_search import search_learning_rate

        lr_record = search_learning_rate(cfg, target, data, device, out, log, run_one=train_run)
        cfg.optim.lr = lr_record["chosen"]
    timer = StepTimer(total_steps(cfg), device.type, log)  # warns after the first steps when a CPU takes long
    runs: dict[float, list[dict[str, Any]]] = {}
    draws_of: dict[float, dict[str, Any]] = {}
    seeds = [cfg.seed + r for r in range(cfg.repeats)]
    for fraction in cfg.label_fractions:
        draws = draw_subsets(data.train, fraction, seeds, by_group=target.fraction_by_group)
        warnings = fraction_warnings(fraction, draws, cfg, target)
        for line in warnings:
            log(f"warning: {line}")
        possible = draws.n_possible if draws.n_possible < 2**53 else float(draws.n_possible)  # exact in JSON readers
        draws_of[fraction] = {"n_possible": possible, "n_distinct": draws.n_distinct, "warnings": warnings}
        runs[fraction] = []
        for seed, train in zip(seeds, draws.subsets):
            run_dir = out / f"fraction-{fraction:g}" / f"seed-{seed}"
            log(f"run: label fraction {fraction:g} ({len(train)} training units of "
                f"{len({unit_group(s) for s in train})} patient(s)), seed {seed}")
            result = train_run(target, data, train, cfg, seed, run_dir, device, log, timer=timer)
            result["result"] = str(run_dir.relative_to(out) / "result.json")
            runs[fraction].append(result)
            shown = ", ".join(f"{m} {v:.4f}" for m, v in result["metrics"].items() if v is not None)
            log(f"  test: {shown}")
    metrics = build_metrics(cfg, target, data, runs, draws_of, record)
    metrics["label_warnings"] = label_warnings
    metrics["lr_search"] = lr_record
    write_reports(metrics, out, target, compare=cfg.compare)
    return json.loads((out / "metrics.json").read_text())
