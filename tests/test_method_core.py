"""The method core: a recipe resolved once from registries of data kinds and methods; checkpoints
that name their backbone (and old ones migrated on load); the split by patient; the collapse check
and the baselines of masked tasks."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _owndata import patches_h5  # noqa: E402

from genesis.checkpoint import checkpoint_parts, load_checkpoint, pretrained_backbone, save_checkpoint  # noqa: E402
from genesis.cli.pretrain import list_tasks_text, main  # noqa: E402
from genesis.config import load_config  # noqa: E402
from genesis.data.kinds import DATA_KINDS, DataRequest, resolve_data  # noqa: E402
from genesis.errors import ConfigError  # noqa: E402
from genesis.methods import FAMILIES, catalogue, resolve_method  # noqa: E402
from genesis.models import create_model  # noqa: E402
from genesis.training.collapse import collapse_note, margins  # noqa: E402
from genesis.training.config import DataConfig, PretrainConfig  # noqa: E402
from genesis.training.recipe import resolve_recipe, split_by_group  # noqa: E402

TINY = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--width", "2", "--device", "cpu",
        "--precision", "fp32", "--no-progress", "--set", "log.grids=false", "--set", "log.tensorboard=false",
        "--set", "data.val_cubes=4"]
CT = ["--crop", "16", "32", "32", "--set", "data.synthetic_shape=[32,64,64]", "--set", "data.synthetic_volumes=3"]


def _cfg(tmp_path: Path, **overrides) -> PretrainConfig:
    base = {"width": 2, "device": "cpu", "out": str(tmp_path / "run"), "data.crop": (16, 32, 32),
            "data.synthetic_volumes": 3, "data.synthetic_shape": (32, 64, 64), "batch_size": 2}
    base.update(overrides)
    return load_config(PretrainConfig, None, base)


# ------------------------------------------------------------------------------------ the recipe
def test_the_recipe_is_resolved_once_from_the_registries(tmp_path: Path) -> None:
    run = resolve_recipe(_cfg(tmp_path))
    r = run.recipe
    assert (r.data.kind, r.family, r.model_name, r.loss, r.optim["name"], r.optim["lr"]) == (
        "synthetic_ct", "restoration", "unet3d", "mse", "sgd", 1.0)  # the Models Genesis recipe
    assert r.crop == (16, 32, 32) and r.dims == 3 and r.parts.backbone == "" and r.monitor_key == "val_mse"
    assert r.steps_per_epoch == int(np.ceil(2 * 32 / 2))  # 2 training scans x 32 cubes / batch 2
    assert run.config.steps_per_epoch == r.steps_per_epoch and run.config.optim.name == "sgd"
    json.dumps(r.to_dict())  # plain data

    assert resolve_recipe(_cfg(tmp_path, task="mae")).recipe.model_name == "unet3d"  # MAE's U-Net form by default
    label = resolve_recipe(_cfg(tmp_path, task="rotation")).recipe
    assert (label.family, label.model_name, label.loss, label.parts.backbone, label.parts.network.name) == (
        "label", "encoder_classifier", "ce", "backbone.", "unet3d")
    xray = resolve_recipe(_cfg(tmp_path, task="barlow_twins", dims=2, **{"data.modality": "xray",
                                                                         "data.image_size": 32,
                                                                         "task_params": {"dim": 8}})).recipe
    assert (xray.data.kind, xray.family, xray.dims, xray.crop, xray.parts.heads) == (
        "synthetic_radiographs", "contrastive", 2, (1, 32, 32), ("head.",))


def test_data_kinds_claim_their_inputs(tmp_path: Path) -> None:
    def kind(data=None, **changes) -> str:
        request = DataRequest(data=replace(DataConfig(), data=data, **changes), dims=2)
        return resolve_data(request).plan.kind

    assert {"ct_volumes", "layout", "nnunet_preprocessed", "nnunet_raw", "radiographs", "synthetic_ct",
            "synthetic_radiographs"} <= set(DATA_KINDS.names())
    assert kind() == "synthetic_ct"
    assert kind(modality="xray", image_size=32) == "synthetic_radiographs"
    h5 = patches_h5(tmp_path / "p.h5", n=4, side=24)
    assert kind(str(h5)) == "layout"
    png = tmp_path / "xr"
    png.mkdir()
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(png / "a.png")
    assert kind(str(png), image_size=32) == "radiographs"


def test_list_tasks_groups_every_name_by_family() -> None:
    text = list_tasks_text()
    groups = catalogue()
    assert list(groups)[:3] == list(FAMILIES[:3])
    assert "combined" in dict(groups["restoration"]) and "rotation" in dict(groups["label"])
    assert "barlow_twins" in dict(groups["contrastive"])
    assert text.startswith("restoration:\n  combined") and "\nlabel:\n" in text


def test_methods_resolve_with_their_checks() -> None:
    assert resolve_method("combined", {}, 3).family == "restoration"
    assert resolve_method("rotation", {}, 3).family == "label"
    with pytest.raises(ConfigError, match="works on 2D slices"):
        resolve_method("barlow_twins", {}, 3)
    with pytest.raises(ConfigError, match="invalid parameters"):
        resolve_method("masked_region", {"fraction": 2.0}, 2)


# ------------------------------------------------------------------------- split by patient
def test_split_by_group_never_cuts_a_patient() -> None:
    groups = ["a", "a", "b", "b", "c", "c", "d", "e", "e", "e"]
    train, val = split_by_group(groups, 0.2)
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
    assert sorted(train + val) == list(range(len(groups)))
    assert {groups[i] for i in val} == {"e"}  # round(5 x 0.2) = 1 patient: the last one
    assert split_by_group(["x"] * 4, 0.2) == ([0, 1, 2, 3], [0, 1, 2, 3])  # one patient: both sides, said in the log


def test_pretraining_on_grouped_patches_splits_by_patient(tmp_path: Path, capsys) -> None:
    h5 = patches_h5(tmp_path / "p.h5", n=30, side=24)
    out = tmp_path / "run"
    assert main([*TINY, "--task", "masked_region", "--dims", "2", "--data", str(h5), "--out", str(out),
                 "--group-size", "5", "--set", "data.val_fraction=0.34"]) == 0
    err = capsys.readouterr().err
    assert "held-out scan(s) of 2 patient(s)" in err and "training: 20 scan(s) of 4 patient(s)" in err
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["patients"] == {"train": 4, "val": 2}
    train, val = set(ckpt["scans"]["train"]), set(ckpt["scans"]["val"])
    patient = {f"p#{i}": i // 5 for i in range(30)}
    assert {patient[s] for s in train}.isdisjoint({patient[s] for s in val})
    assert ckpt["recipe"]["split"]["val_groups"] == 2 and (out / "recipe.yaml").is_file()
    with open(out / "data.csv") as handle:  # each scan's patient and side
        rows = list(csv.DictReader(handle))
    assert {(r["group"], r["split"]) for r in rows if r["group"] == "group-0005"} == {("group-0005", "val")}
    assert "rule accepts" not in err  # whole-image 2D crops: the Models Genesis rule does not apply


# -------------------------------------------------------------------- checkpoints and backbones
def test_checkpoints_name_their_backbone_and_old_ones_are_migrated(tmp_path: Path) -> None:
    out = tmp_path / "rot"
    assert main([*TINY, *CT, "--task", "rotation", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["format"] == "genesis-pretrain/2" and ckpt["parts"]["backbone"] == "backbone."
    name, kwargs, state, left_out = pretrained_backbone(ckpt)
    net = create_model(name, **kwargs)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("up_", "out_tr")) for k in missing)  # the encoder only
    assert left_out and all(k.startswith("head.") for k in left_out)

    old = {k: v for k, v in ckpt.items() if k not in ("parts", "recipe")}
    old["format"] = "genesis-pretrain/1"  # a checkpoint written before the method core
    assert checkpoint_parts(old) == {**ckpt["parts"], "heads": ["head."], "teacher": None}
    assert pretrained_backbone(old)[2].keys() == state.keys()
    restoration = {"model": {"down_tr64.ops.0.conv1.weight": torch.zeros(1)}, "model_name": "unet3d",
                   "model_kwargs": {"base_width": 2}}
    assert pretrained_backbone(restoration)[:2] == ("unet3d", {"base_width": 2})

    # an old run resumes (no recipe to compare), a resumed run with other data does not
    save_checkpoint(old, out / "last.pt")
    assert main([*TINY, *CT, "--task", "rotation", "--out", str(out), "--resume", "--epochs", "2"]) == 0


def test_resume_compares_the_recipe(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mr"
    h5 = patches_h5(tmp_path / "p.h5", n=12, side=24)
    args = [*TINY, "--task", "masked_region", "--dims", "2", "--out", str(out)]
    assert main([*args, "--data", str(h5)]) == 0
    patches_h5(h5, n=20, side=24)  # the same file, now with more patients: the settings match, the recipe not
    capsys.readouterr()
    assert main([*args, "--data", str(h5), "--resume", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "recipe differs" in err and "split" in err


def test_quick_preset_leaves_a_plans_network_alone() -> None:
    from genesis.cli.pretrain import _architecture_from_plans

    assert _architecture_from_plans("nnunet") and not _architecture_from_plans("unet3d")


# ------------------------------------------------------------------------------ collapse check
def _errors(model: np.ndarray, mean: np.ndarray) -> dict[str, np.ndarray]:
    return {"model": model, "mean": mean}


def test_collapse_is_flagged_for_the_mean_predictor_not_for_a_clearly_better_model() -> None:
    rng = np.random.default_rng(0)
    groups = [f"p{i // 8}" for i in range(48)]  # 6 held-out patients x 8 cubes
    mean_err = rng.uniform(0.05, 0.15, 48)
    good = margins(_errors(mean_err * rng.uniform(0.6, 0.9, 48), mean_err), groups)
    flat = margins(_errors(mean_err * rng.uniform(0.99, 1.01, 48), mean_err), groups)
    assert good["val_mean_margin"] > 0.1 and good["val_patients"] == 6
    base = {"epoch": 10, "val_mse": 0.05, "val_output_std": 0.2, "val_target_std": 0.2}
    assert collapse_note({**base, **good}) == ""
    note = collapse_note({**base, **flat})
    assert "no better than predicting each cube's mean" in note and "6 held-out patients" in note and "+-" in note


def test_an_uncertain_margin_is_not_flagged_as_collapse() -> None:
    # 2 patients: one clearly better, one slightly worse: the interval is too wide to call collapse
    groups = ["a"] * 4 + ["b"] * 4
    mean_err = np.full(8, 0.1)
    model = np.array([0.05] * 4 + [0.102] * 4)
    m = margins(_errors(model, mean_err), groups)
    assert collapse_note({"epoch": 9, "val_mse": 0.076, **m}) == ""


def test_the_standard_error_is_over_patients_not_cubes() -> None:
    groups = ["a"] * 50 + ["b"] * 50 + ["c"] * 50
    mean_err = np.full(150, 0.1)
    model = np.concatenate([np.full(50, 0.05), np.full(50, 0.09), np.full(50, 0.07)])
    m = margins(_errors(model, mean_err), groups)
    per_patient = np.array([0.5, 0.1, 0.3])
    assert m["val_mean_margin"] == pytest.approx(per_patient.mean())
    assert m["val_mean_margin_se"] == pytest.approx(per_patient.std(ddof=1) / np.sqrt(3))


def test_masked_tasks_log_the_fill_baseline_and_evaluate_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "mr"
    assert main([*TINY, *CT, "--task", "masked_region", "--dims", "2", "--out", str(out)]) == 0
    with open(out / "log.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["val_fill_mse"]) < float(row["val_mean_mse"])  # the baseline that matters is much stronger
    ckpt = load_checkpoint(out / "last.pt")
    record = ckpt["history"][-1]
    assert 0 < record["val_masked_fill_mse"] < 1 and "val_fill_margin" in record
    assert main(["--evaluate", str(out / "best.pt"), "--out", str(tmp_path / "eval"), "--eval-cubes", "4",
                 "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]["masked_region"]
    for key in ("fill_baseline_mse", "mean_baseline_mse", "masked_fill_baseline_mse", "masked_mse", "loss_region_mse"):
        assert key in metrics
    assert metrics["fill_baseline_mse"] < metrics["mean_baseline_mse"]


# ------------------------------------------- every method's backbone goes to fine-tuning and exports
@pytest.mark.slow
def test_a_contrastive_checkpoint_fine_tunes_and_exports_its_backbone(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from genesis.cli.finetune import main as finetune
    from genesis.weights.export import export_checkpoint

    out = tmp_path / "simclr"
    assert main([*TINY, *CT, "--task", "simclr", "--batch-size", "4", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["parts"]["heads"] and ckpt["recipe"]["family"] == "contrastive"

    ft = tmp_path / "ncs"
    assert finetune(["--target", "ncs", "--preset", "quick", "--epochs", "1", "--steps-per-epoch", "1",
                     "--weights", str(out / "best.pt"), "--out", str(ft), "--device", "cpu",
                     "--set", "evaluation.bootstrap_resamples=10"]) == 0
    report = json.loads((ft / "load_report.json").read_text())
    reasons = {entry["reason"] for entry in report["left_out"]}
    assert any("pretraining method only" in r for r in reasons)  # the projector
    assert "encoder only" in report["new_layers_reason"] and report["loaded"]
    assert all(k.startswith("down_tr") for k in report["loaded"])

    exported = export_checkpoint(out / "best.pt", "unet3d.simclr_test", tmp_path / "export", license="CC-BY-4.0")
    tensors = load_file(str(exported.weights))
    net = create_model("unet3d", base_width=2).encoder_only()
    net.load_state_dict(tensors, strict=True)  # the backbone alone, no projector


def test_a_set_that_removes_a_section_is_refused(tmp_path: Path, capsys) -> None:
    assert main([*TINY, "--set", "data=null", "--out", str(tmp_path / "x")]) == 2
    assert "data" in capsys.readouterr().err


def test_evaluate_rebuilds_any_methods_module(tmp_path: Path) -> None:
    out = tmp_path / "spark"
    assert main([*TINY, *CT, "--task", "spark", "--model", "unet3d", "--out", str(out)]) == 0
    assert main(["--evaluate", str(out / "best.pt"), "--out", str(tmp_path / "eval"), "--eval-cubes", "4",
                 "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())["results"]["spark"]
    assert {"loss", "masked_mse", "patch_mean_mse"} <= set(metrics) and (tmp_path / "eval" / "eval.png").is_file()


def test_a_run_started_with_overwrite_resumes_exactly_with_its_teacher(tmp_path: Path) -> None:
    args = [*TINY, *CT, "--task", "byol", "--batch-size", "4", "--steps-per-epoch", "2"]
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "log.csv").write_text("epoch\n")  # a run was there: --overwrite replaces it
    assert main([*args, "--epochs", "1", "--out", str(tmp_path / "part"), "--overwrite"]) == 0
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "part"), "--resume"]) == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    part = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    assert any(k.startswith("teacher.") for k in full)
    assert all(torch.equal(full[k], part[k]) for k in full)
