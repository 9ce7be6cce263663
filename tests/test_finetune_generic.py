"""The generic ``segmentation`` / ``classification`` targets end to end, at tiny scale (2D and 3D)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _owndata import classification_csv, datalist, msd_folder, patches_h5  # noqa: E402

from finetune import run_finetune  # noqa: E402
from finetune.config import FinetuneConfig  # noqa: E402
from genesis.cli.finetune import main as finetune_main  # noqa: E402
from genesis.cli.pretrain import main as pretrain_main  # noqa: E402
from genesis.errors import ConfigError, DatasetLayoutError  # noqa: E402


def tiny(target: str, data, out, **kw) -> FinetuneConfig:
    cfg = FinetuneConfig(target=target, data=str(data), out=str(out), width=2, epochs=1, steps_per_epoch=1,
                         batch_size=2, head_hidden=8, device="cpu", amp=False, **kw)
    cfg.evaluation.bootstrap_resamples = 20
    return cfg


def test_2d_h5_segmentation_with_groups_test_data_fractions_and_pretrained_weights(tmp_path, capsys):
    train = patches_h5(tmp_path / "train.h5", n=24)
    test = patches_h5(tmp_path / "test.h5", n=8, seed=1)  # --group-size 4 applies to it too: 2 patients
    common = ["--target", "segmentation", "--dims", "2", "--data", str(train), "--group-size", "4",
              "--test-data", str(test), "--label-fraction", "0.5", "1.0", "--repeats", "2", "--preset", "quick",
              "--epochs", "1", "--steps-per-epoch", "1", "--width", "2", "--device", "cpu",
              "--set", "evaluation.bootstrap_resamples=20", "--set", "precise_bn_batches=1"]
    assert finetune_main([*common, "--out", str(tmp_path / "scratch")]) == 0
    metrics = json.loads((tmp_path / "scratch" / "metrics.json").read_text())
    assert metrics["primary_metric"] == "dice" and metrics["spatial_dims"] == 2
    assert [f["fraction"] for f in metrics["label_fractions"]] == [0.5, 1.0]
    for f in metrics["label_fractions"]:
        assert f["aggregate"]["dice"]["n_runs"] == 2 and 0.0 <= f["aggregate"]["dice"]["mean"] <= 1.0
    # 24 samples / group size 4 = 6 patients; 1 held out for validation -> 5 train patients, 0.5 -> 2 or 3
    assert metrics["label_fractions"][1]["n_train"] == [20, 20]
    assert set(metrics["label_fractions"][0]["n_train"]) <= {8, 12}
    assert metrics["n_test_units"] == 2 and metrics["n_test_samples"] == 8 and metrics["test_unit"] == "patients"
    out = capsys.readouterr().out
    assert "images already in [0, 1]: used as they are" in out and "model unet2d" in out
    for name in ("metrics.md", "metrics.png"):
        assert (tmp_path / "scratch" / name).is_file()

    # the same with --weights from a 2D pretraining checkpoint on the same images
    assert pretrain_main(["--task", "masked_region", "--dims", "2", "--data", str(train), "--preset", "quick",
                          "--epochs", "1", "--steps-per-epoch", "1", "--width", "2", "--no-progress",
                          "--device", "cpu", "--out", str(tmp_path / "pre")]) == 0
    common[common.index("0.5")] = "1.0"  # one fraction is enough for the pretrained side
    common.remove("1.0")
    assert finetune_main([*common, "--weights", str(tmp_path / "pre" / "best.pt"), "--out", str(tmp_path / "mg"),
                          "--compare", str(tmp_path / "scratch")]) == 0
    mg = json.loads((tmp_path / "mg" / "metrics.json").read_text())
    assert mg["weights"].endswith("best.pt") and mg["model"] == "unet2d"
    report = json.loads((tmp_path / "mg" / "load_report.json").read_text())
    assert report["loaded"] and not report["inflated_2d_to_3d"]  # built as the 2D network it fine-tunes
    assert [f["fraction"] for f in mg["label_fractions"]] == [1.0]
    assert mg["comparison"]["fractions"][0]["dice"]["n_a"] == 2


def test_3d_msd_folder_multiclass_segmentation(tmp_path):
    root = msd_folder(tmp_path / "Dataset001_Blobs", n=5, channels=2, n_classes=3)
    cfg = tiny("segmentation", root, tmp_path / "out", crop=(16, 16, 16))
    metrics = run_finetune(cfg, log=lambda s: None)
    assert metrics["classes"] == ["background", "bright", "dark"]
    assert metrics["metrics"] == ["dice", "iou", "dice_bright", "dice_dark", "iou_bright", "iou_dark"]
    agg = metrics["label_fractions"][0]["aggregate"]
    assert 0.0 <= agg["dice"]["mean"] <= 1.0
    run = json.loads((tmp_path / "out" / "fraction-1" / "seed-0" / "result.json").read_text())
    units = run["test_units"]
    assert units["names"] == ["case_005"]  # imagesTs + labelsTs is the test set
    assert np.isclose(units["dice"][0], np.mean([units["dice_bright"][0], units["dice_dark"][0]]))
    assert run["transfer"]["model_kwargs"]["in_channels"] == 2 and run["transfer"]["model_kwargs"]["out_channels"] == 3


def test_pretrained_single_output_weights_fill_a_multiclass_network(tmp_path):
    from genesis.models import create_model
    from genesis.training.checkpoint import save_checkpoint

    root = msd_folder(tmp_path / "Dataset003", n=4, channels=1, n_classes=3, with_test=False)
    weights = tmp_path / "pre.pt"  # a restoration network: one output channel
    save_checkpoint({"model": create_model("unet3d", base_width=2).state_dict(), "model_name": "unet3d",
                     "model_kwargs": {"base_width": 2}}, weights)
    metrics = run_finetune(tiny("segmentation", root, tmp_path / "out", crop=(16, 16, 16), weights=str(weights)),
                           log=lambda s: None)
    assert metrics["weights_source"] and metrics["classes"] == ["background", "bright", "dark"]


def test_monai_datalist_segmentation_and_csv_classification(tmp_path):
    seg = run_finetune(tiny("segmentation", datalist(tmp_path / "dl"), tmp_path / "seg", crop=(16, 16, 16)),
                       log=lambda s: None)
    assert seg["n_val"] == 1 and seg["n_test_units"] == 1 and seg["classes"] == ["0", "1"]
    cls = run_finetune(tiny("classification", classification_csv(tmp_path / "csv"), tmp_path / "cls",
                            crop=(8, 8, 8), balance=True), log=lambda s: None)
    assert cls["metrics"] == ["auc", "accuracy"] and cls["task"] == "classification"
    acc = cls["label_fractions"][0]["aggregate"]["accuracy"]["mean"]
    assert 0.0 <= acc <= 1.0


def test_multiclass_classification_from_npz_reports_ovr_auc_and_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 8)
    images = rng.uniform(0, 0.2, (24, 1, 16, 16)).astype(np.float32)
    images[np.arange(24), 0, :, :] += labels[:, None, None] * 0.3
    groups = np.array([f"p{i // 2}" for i in range(24)])
    np.savez(tmp_path / "cls.npz", images=images, labels=labels, groups=groups)
    metrics = run_finetune(tiny("classification", tmp_path / "cls.npz", tmp_path / "out"), log=lambda s: None)
    units = json.loads((tmp_path / "out" / "fraction-1" / "seed-0" / "result.json").read_text())["test_units"]
    assert len(units["scores"][0]) == 3  # softmax over 3 classes
    assert np.isclose(sum(units["scores"][0]), 1.0, atol=1e-4)
    assert metrics["label_fractions"][0]["aggregate"]["auc"]["mean"] is not None


def test_dims_mismatch_and_wrong_target_are_errors(tmp_path):
    h5 = patches_h5(tmp_path / "p.h5", n=12)
    with pytest.raises(ConfigError, match="--dims 3, but the images .* are 2D"):
        run_finetune(tiny("segmentation", h5, tmp_path / "a", dims=3), log=lambda s: None)
    with pytest.raises(ConfigError, match="3D network"):
        run_finetune(tiny("segmentation", h5, tmp_path / "b", model="unet3d", group_size=4), log=lambda s: None)
    with pytest.raises(DatasetLayoutError, match="use --target segmentation"):
        run_finetune(tiny("classification", h5, tmp_path / "c"), log=lambda s: None)
    from genesis.training.checkpoint import save_checkpoint

    from genesis.models import create_model

    # real 3D weights (an empty state dict now fails earlier, in the load report written before the data)
    save_checkpoint({"model": create_model("unet3d", base_width=2).state_dict(), "model_name": "unet3d",
                     "model_kwargs": {"base_width": 2}}, tmp_path / "w3d.pt")
    with pytest.raises(ConfigError, match="hold a 3D network"):
        run_finetune(tiny("segmentation", h5, tmp_path / "d", weights=str(tmp_path / "w3d.pt"), group_size=4),
                     log=lambda s: None)
    with pytest.raises(ConfigError, match="needs a crop of 2 sides"):
        FinetuneConfig(crop=(16, 16, 16), dims=2).validate()


def test_fractions_and_splits_draw_whole_groups(tmp_path):
    h5 = patches_h5(tmp_path / "p.h5", n=12)
    # 12 samples in 2 groups of 6: cannot give train, val and test one patient each
    with pytest.raises(DatasetLayoutError, match="2 training patient group"):
        run_finetune(tiny("segmentation", h5, tmp_path / "a", group_size=6), log=lambda s: None)
    # 5 train patients left after validation: 0.05 of them is less than one patient
    with pytest.raises(DatasetLayoutError, match="less than one"):
        run_finetune(tiny("segmentation", h5, tmp_path / "b", group_size=2, label_fractions=(0.05,),
                          test_data=str(patches_h5(tmp_path / "t.h5", n=4, seed=3))), log=lambda s: None)

    from finetune.targets.generic import assign_group_splits
    from genesis.data.layouts import read_dataset

    ds = read_dataset(h5, group_size=2)
    splits = assign_group_splits(ds, has_test=False, seed=0)
    groups = {s: {it.group for it in items} for s, items in splits.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    assert sum(len(items) for items in splits.values()) == 12
    assert all(len(g) >= 1 for g in groups.values())
