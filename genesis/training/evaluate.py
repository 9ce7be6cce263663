"""Evaluate a pretrained proxy model on held-out volumes (``genesis-pretrain --evaluate CKPT``).

Restoration models: MSE, SSIM (MONAI, via :func:`genesis.methods.losses.ssim`) and the MSE on the
changed (or masked) region, each next to the "do nothing" baseline (``do_nothing_mse``,
``do_nothing_changed_mse``: the transformed input itself scored against the original, so one sees
whether the model restores anything), and the baselines the training log shows on the voxels the
loss is computed on (``mean_baseline_mse``: each cube's mean; ``identity_baseline_mse``; for tasks
that hide content, ``fill_baseline_mse`` and ``masked_fill_baseline_mse``: the hidden voxels filled
with the mean of the visible ones, next to ``loss_region_mse`` / ``masked_mse``), for the model's
own task and, for image-to-image models, for each
Models Genesis transform forced on (``prob=1.0``), so one sees which kind of damage the model
learned to undo. Label models: cross-entropy, accuracy and one-vs-rest AUROC, as in Table II of
Tariq et al. (2023). Other methods (contrastive, masked image modelling): their loss and validation
metrics with their trivial baselines. Results go to ``eval.json``; ``eval.png`` shows input, output and difference.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from genesis.config import load_config
from genesis.device import resolve_device
from genesis.errors import CheckpointError
from genesis.fileio import atomic_write_text
from genesis.models import unpack_output
from genesis.checkpoint import load_checkpoint
from genesis.methods.baselines import per_sample_errors
from genesis.methods.proxy import prepare_pair
from genesis.training.config import PretrainConfig
from genesis.training.engine import EpochContext, make_generator, step_seed

#: The Models Genesis transforms evaluated one at a time (those that are registered).
GENESIS_TRANSFORMS: tuple[str, ...] = ("nonlinear", "local_shuffle", "inner_cutout", "outer_cutout", "identity")

_SECTIONS = ("data", "optim", "schedule", "early_stop", "log")


def config_from_checkpoint(ckpt: dict[str, Any], path: Path) -> PretrainConfig:
    """The :class:`PretrainConfig` a checkpoint was trained with."""
    saved = ckpt.get("config")
    if not isinstance(saved, dict):
        raise CheckpointError("not a genesis-pretrain checkpoint (no 'config')", path)
    overrides: dict[str, Any] = {}
    for key, value in saved.items():
        if key in _SECTIONS and isinstance(value, dict):
            overrides.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            overrides[key] = value
    return load_config(PretrainConfig, None, overrides)


def roc_auc_ovr(probs: np.ndarray, labels: np.ndarray) -> float:
    """Macro one-vs-rest AUROC from rank statistics (Mann-Whitney U), ties averaged.

    Written here because scikit-learn is only a development dependency; classes absent from
    ``labels`` (or present alone) are skipped; NaN if no class can be scored.
    """
    from scipy.stats import rankdata

    aucs = []
    for c in range(probs.shape[1]):
        positive = labels == c
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(probs[:, c])
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def _build_transform(name: str) -> Any:
    import proxy_tasks

    try:
        return proxy_tasks.build(name, prob=1.0)
    except TypeError:
        return proxy_tasks.build(name)


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    out_dir: str | Path | None = None,
    device: str = "auto",
    n_cubes: int | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate a ``genesis-pretrain`` checkpoint on held-out cubes.

    Args:
        checkpoint: ``best.pt`` / ``last.pt`` of a pretraining run.
        data: scans to evaluate on (all of them are held out); None uses the run's own validation
            volumes (the synthetic default is regenerated from its seed).
        out_dir: where ``eval.json`` and ``eval.png`` go (None: nothing is written).
        device: ``auto``, ``cpu`` or ``cuda[:n]``.
        n_cubes: number of held-out cubes (default 32).
        seed: seed of the cubes and transforms (default: the run's seed).
        batch_size: evaluation batch size (default: the run's).
    Returns:
        ``{"checkpoint", "task", "kind", "synthetic", "n_cubes", "results": {name: metrics}}``.
    Raises:
        CheckpointError: unreadable or foreign checkpoint.
    """
    from genesis.data.groups import volume_groups
    from genesis.data.kinds import resolve_data
    from genesis.methods import losses, resolve_method
    from genesis.methods.label import primary_label
    from genesis.training.recipe import data_request, split_by_group
    from genesis.training.rundata import SubsetSource, load_val_cubes

    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    for key in ("model", "model_name", "model_kwargs"):
        if key not in ckpt:
            raise CheckpointError(f"not a genesis-pretrain checkpoint (no {key!r})", path)
    cfg = config_from_checkpoint(ckpt, path)
    dev = resolve_device(device)
    seed = cfg.seed if seed is None else int(seed)
    n = int(n_cubes or 32)
    bs = int(batch_size or cfg.batch_size)

    if data is not None:
        cfg.data.data = str(data)
        source = resolve_data(data_request(cfg)).source
        held_out = SubsetSource(source, list(range(len(source))))
    else:  # the run's own held-out patients
        source = resolve_data(data_request(cfg)).source
        _, val_idx = split_by_group(volume_groups(source), cfg.data.val_fraction)
        held_out = SubsetSource(source, val_idx)
    cubes = load_val_cubes(held_out, cfg, n)

    from genesis.methods import NetworkSpec

    method = resolve_method(cfg.task, cfg.task_params, cfg.dims, cfg.loss, cfg.seed)
    spec = NetworkSpec(ckpt["model_name"], dict(ckpt["model_kwargs"]))
    method.bind(spec)
    try:  # the method's module (backbone and heads), exactly as the run built it
        model = method.build_model(spec)
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"weights do not fit the module of {cfg.task!r} ({ckpt['model_name']}): {first[:300]}",
                              path) from None
    model.to(dev).eval()

    stages = method.stages()
    if len(stages) > 1:
        method = stages[min(int(ckpt.get("stage", len(stages) - 1)), len(stages) - 1)]
    task = getattr(method, "task", None)
    kind = {"restoration": "restoration", "label": "classification"}.get(method.family, method.family)
    hides = bool(getattr(task, "mask_hides_content", False))
    region = getattr(task, "loss_region", "all")

    def run(t: Any, name: str, salt: int) -> tuple[dict[str, float], tuple[Any, Any] | None]:
        sums: dict[str, float] = {}
        count = 0
        first = None
        probs, labels = [], []
        for i in range(0, n, bs):
            batch = cubes[i:i + bs].to(dev)
            gen = make_generator(step_seed(seed, salt, i), dev)
            pair = prepare_pair(t, batch, gen, cfg.dims)
            out = unpack_output(model(pair.input))
            logits = out.output.float()
            b = int(pair.input.shape[0])
            if kind == "classification":
                logits, label = primary_label(t, logits, pair.label, pair.input.dim() - 2)
                ce = float(F.cross_entropy(logits, label, reduction="sum"))
                sums["cross_entropy"] = sums.get("cross_entropy", 0.0) + ce
                sums["accuracy"] = sums.get("accuracy", 0.0) + float((logits.argmax(1) == label).sum())
                probs.append(torch.softmax(logits, 1).cpu())
                labels.append(label.cpu())
            else:
                pred = torch.sigmoid(logits)
                target = pair.target.float()
                err = (pred - target) ** 2
                sums["mse"] = sums.get("mse", 0.0) + float(err.flatten(1).mean(1).sum())
                sums["ssim"] = sums.get("ssim", 0.0) + float(losses.ssim(pred, target)) * b
                if pair.input.shape == target.shape:
                    # "do nothing": hand the transformed input back unchanged; a model that restores
                    # anything must beat this MSE
                    idle = (pair.input.float() - target) ** 2
                    sums["do_nothing_mse"] = sums.get("do_nothing_mse", 0.0) + float(idle.flatten(1).mean(1).sum())
                    if pair.mask is not None:
                        sums["_idle_changed_err"] = sums.get("_idle_changed_err", 0.0) + float(
                            (idle * pair.mask.expand_as(idle).float()).sum())
                if pred.shape == target.shape:  # the baselines the training log shows, on the loss's voxels
                    errors = per_sample_errors(pred, pair, region, hides and t is task)
                    for key, value in errors.items():
                        name = "loss_region_mse" if key == "model" else f"{key}_baseline_mse"
                        sums[name] = sums.get(name, 0.0) + float(value.sum())
                    if hides and t is task and pair.mask is not None:
                        masked = per_sample_errors(pred, pair, "mask", True)
                        sums["masked_mse"] = sums.get("masked_mse", 0.0) + float(masked["model"].sum())
                        if "fill" in masked:
                            sums["masked_fill_baseline_mse"] = (sums.get("masked_fill_baseline_mse", 0.0)
                                                                + float(masked["fill"].sum()))
                if pair.mask is not None:
                    mask = pair.mask.expand_as(err).float()
                    # pooled over voxels: samples the transform left untouched add nothing
                    sums["_changed_err"] = sums.get("_changed_err", 0.0) + float((err * mask).sum())
                    sums["_changed_n"] = sums.get("_changed_n", 0.0) + float(mask.sum())
            count += b
            if first is None:
                first = (pair, out)
        metrics = {k: v / max(count, 1) for k, v in sums.items() if not k.startswith("_")}
        if sums.get("_changed_n", 0.0) > 0:
            # the changed region of a Genesis transform is the masked region of a Tariq task
            metrics["changed_mse"] = sums["_changed_err"] / sums["_changed_n"]
            if "_idle_changed_err" in sums:
                metrics["do_nothing_changed_mse"] = sums["_idle_changed_err"] / sums["_changed_n"]
        if kind == "classification" and probs:
            metrics["auroc"] = roc_auc_ovr(torch.cat(probs).numpy(), torch.cat(labels).numpy())
        return metrics, first

    if method.adapts_each_epoch and kind == "classification":
        # DeepCluster needs its clusters before it can label anything
        batches = [cubes[i:i + bs].to(dev) for i in range(0, n, bs)]
        method.on_epoch_start(EpochContext(0, model, dev, make_generator(seed, dev), batches, cfg.dims))
    if method.family not in ("restoration", "label"):  # contrastive, MIM...: the method's own loss and metrics
        metrics, first = _evaluate_method(method, model, cubes, cfg.dims, seed, bs, dev)
        report = _finish(path, cfg, ckpt, kind, data, n, {cfg.task: metrics}, {}, out_dir)
        if out_dir is not None and first is not None:  # the method's own picture of what it made of a batch
            synthetic = " (synthetic data)" if report["synthetic"] else ""
            method.grid(first[0], first[1], Path(out_dir) / "eval.png", f"{cfg.task}{synthetic}, held-out cubes", 4)
        return report

    results: dict[str, dict[str, float]] = {}
    examples: dict[str, tuple[Any, Any]] = {}
    metrics, first = run(task, cfg.task, 0)
    results[cfg.task] = metrics
    if first is not None:
        examples[cfg.task] = first
    # Genesis transforms only make sense for image-to-same-image models (not next-slice prediction)
    same_image = getattr(task, "spatial_dims_out", None) is None
    if kind == "restoration" and same_image and first is not None and first[0].input.shape == first[0].target.shape:
        import proxy_tasks

        for j, name in enumerate(GENESIS_TRANSFORMS, start=1):
            if name not in proxy_tasks.list_tasks() or name == cfg.task:
                continue
            try:
                metrics, ex = run(_build_transform(name), name, j)
            except (TypeError, ValueError):  # a transform that does not apply to these inputs
                continue
            results[name] = metrics
            if ex is not None:
                examples[name] = ex

    return _finish(path, cfg, ckpt, kind, data, n, results, examples, out_dir)


def _evaluate_method(method: Any, model: Any, cubes: torch.Tensor, dims: int, seed: int, bs: int,
                     dev: torch.device) -> tuple[dict[str, float], tuple[Any, Any] | None]:
    """Loss and validation metrics of a method that has no proxy task (MAE, SimCLR...), and its
    first batch's (views, outputs) for the picture."""
    sums: dict[str, float] = {}
    count = 0
    first = None
    for i in range(0, len(cubes), bs):
        gen = make_generator(step_seed(seed, 0, i), dev)
        views = method.views(cubes[i:i + bs].to(dev), gen, dims)
        out = method.forward(model, views)
        loss, _ = method.loss(out, views)
        b = method.count(views)
        sums["loss"] = sums.get("loss", 0.0) + float(loss) * b
        for key, value in method.validation(out, views).items():
            name = key[4:] if key.startswith("val_") else key
            sums[name] = sums.get(name, 0.0) + value
        count += b
        if first is None:
            first = (views, out)
    return {k: v / max(count, 1) for k, v in sums.items()}, first


def _finish(path: Path, cfg: PretrainConfig, ckpt: dict[str, Any], kind: str, data: str | None, n: int,
            results: dict[str, dict[str, float]], examples: dict[str, Any], out_dir: str | Path | None) -> dict[str, Any]:
    report = {
        "checkpoint": str(path),
        "task": cfg.task,
        "kind": kind,
        "model_name": ckpt["model_name"],
        "synthetic": bool(ckpt.get("synthetic", False)) and data is None,
        "data": data if data is not None else ("synthetic" if ckpt.get("synthetic") else cfg.data.data),
        "n_cubes": n,
        "results": results,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "eval.json", json.dumps(report, indent=2, allow_nan=True) + "\n")
        if examples:
            _save_examples(examples, kind, out / "eval.png", report)
    return report


def _save_examples(examples: dict[str, tuple[Any, Any]], kind: str, path: Path, report: dict[str, Any]) -> None:
    from genesis.viz import save_grid

    def middle(x: torch.Tensor) -> np.ndarray:
        img = x.detach().float().cpu()[-1]
        return (img[img.shape[0] // 2] if img.dim() == 3 else img).numpy()

    rows, names = [], []
    for name, (pair, out) in examples.items():
        if kind == "classification":
            pred = out.output.float().argmax(1)
            label = pair.label[0].flatten()[0]
            rows.append([middle(pair.input[0])])
            names.append(f"{name}: label {int(label)}, pred {int(pred[0])}")
            continue
        restored = torch.sigmoid(out.output.float())
        diff = (restored[0] - pair.target[0].float()).abs()
        rows.append([middle(pair.input[0]), middle(restored[0]), middle(pair.target[0]), middle(diff)])
        names.append(name)
    if not rows:
        return
    synthetic = " (synthetic data)" if report.get("synthetic") else ""
    from genesis.viz import restoration_columns

    # rows are different transforms: say what each column is, per the evaluated task's wording
    wording = restoration_columns(None, report["task"] if len(rows) == 1 else None)
    cols = ["input"] if kind == "classification" else [*wording, "|restoration - target|"]
    save_grid(rows, path, row_titles=names, col_titles=cols, title=f"{report['task']}{synthetic}",
              vmin=[0.0, 0.0, 0.0, 0.0], vmax=[1.0, 1.0, 1.0, 0.5], cmap=["gray", "gray", "gray", "magma"])
