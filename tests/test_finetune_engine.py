"""End-to-end fine-tuning on the synthetic default (tiny networks, a few steps) and its parts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from finetune import run_finetune
from finetune.augment import Augmenter
from finetune.config import AugmentConfig, FinetuneConfig
from finetune.report import compare_with
from finetune.transfer import apply_init, build_model
from genesis.cli.finetune import main
from genesis.models import create_model
from genesis.training.checkpoint import save_checkpoint


def tiny(target: str, out, **kw) -> FinetuneConfig:
    cfg = FinetuneConfig(target=target, out=str(out), width=2, crop=(8, 16, 16), epochs=1, steps_per_epoch=2,
                         batch_size=2, head_hidden=8, device="cpu", **kw)
    cfg.synthetic.n_train, cfg.synthetic.n_val, cfg.synthetic.n_test = 2, 1, 2
    cfg.synthetic.shape = (48, 64, 64)
    cfg.evaluation.bootstrap_resamples = 50
    cfg.evaluation.region_scale = 1.5
    return cfg


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A checkpoint shaped like genesis-pretrain's best.pt (width 2, distinctive weights)."""
    torch.manual_seed(0)
    model = create_model("unet3d", base_width=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    path = tmp_path_factory.mktemp("pretrain") / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "unet3d", "model_kwargs": {"base_width": 2},
                     "epoch": 3, "synthetic": True}, path)
    return path, model.state_dict()


def test_ncs_from_scratch_writes_metrics_md_png(tmp_path):
    out = tmp_path / "ncs"
    metrics = run_finetune(tiny("ncs", out), log=lambda s: None)
    assert metrics["synthetic"] is True and metrics["task"] == "segmentation"
    agg = metrics["label_fractions"][0]["aggregate"]
    for m in ("dice", "iou", "iou_mean_thresholds"):
        assert 0.0 <= agg[m]["mean"] <= 1.0
        assert agg[m]["ci_low"] <= agg[m]["ci_high"]
    assert json.loads((out / "metrics.json").read_text())["synthetic"] is True
    assert "SYNTHETIC DATA" in (out / "metrics.md").read_text()
    assert (out / "metrics.png").stat().st_size > 0
    assert (out / "fraction-1" / "seed-0" / "best.pt").is_file()


def test_ncc_from_pretrain_checkpoint_transfers_the_encoder(tmp_path, pretrained):
    path, state = pretrained
    cfg = tiny("ncc", tmp_path / "ncc", weights=str(path))
    cfg.width = 7  # ignored: the checkpoint's model_kwargs say 2
    model, name, kwargs, info = build_model("classification", cfg)
    assert name == "encoder_classifier" and kwargs["base_width"] == 2 and info["loaded"] > 0
    for key, value in model.backbone.state_dict().items():
        if key.startswith("down_tr") and not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key
    metrics = run_finetune(cfg, log=lambda s: None)
    run = metrics["label_fractions"][0]["runs"][0]
    assert metrics["primary_metric"] == "auc" and metrics["weights"] == str(path)
    assert run["metrics"]["auc"] is None or 0.0 <= run["metrics"]["auc"] <= 1.0


def test_segmentation_transfer_keeps_decoder_and_replaces_output(pretrained, tmp_path):
    path, state = pretrained
    torch.manual_seed(1)
    model, *_ = build_model("segmentation", tiny("ncs", tmp_path, weights=str(path), init="xavier"))
    own = model.state_dict()
    assert torch.equal(own["up_tr64.ops.0.conv1.weight"], state["up_tr64.ops.0.conv1.weight"])
    assert not torch.equal(own["out_tr.final_conv.weight"], state["out_tr.final_conv.weight"])


def test_linear_probe_freezes_the_encoder(tmp_path):
    model, _, kwargs, _ = build_model("classification", tiny("ncc", tmp_path, linear_probe=True))
    assert kwargs["hidden"] is None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") for n in trainable)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.head.modules()) == 1


def test_init_schemes_follow_their_bounds():
    for scheme, bound in (("uniform", lambda fan_in: 0.05), ("msra", lambda fan_in: math.sqrt(6 / fan_in))):
        layer = torch.nn.Conv3d(4, 8, 3)
        apply_init(layer, scheme)
        fan_in = 4 * 27
        assert layer.weight.abs().max() <= bound(fan_in) + 1e-6
        assert layer.weight.abs().max() > 0.8 * bound(fan_in)
        assert torch.count_nonzero(layer.bias) == 0
    lin = torch.nn.Linear(30, 10)
    apply_init(lin, "xavier")
    assert lin.weight.abs().max() <= math.sqrt(6 / 40) + 1e-6


def test_resume_continues_an_interrupted_run_exactly(tmp_path):
    straight = tiny("ncc", tmp_path / "straight", patience=5)
    straight.epochs = 2
    run_finetune(straight, log=lambda s: None)
    reference = json.loads((tmp_path / "straight" / "fraction-1" / "seed-0" / "result.json").read_text())

    out = tmp_path / "resume"
    run_finetune(tiny("ncc", out, patience=5), log=lambda s: None)
    run_dir = out / "fraction-1" / "seed-0"
    (run_dir / "result.json").unlink()  # as if killed after epoch 1, before the test evaluation
    cfg2 = tiny("ncc", out, patience=5, resume=True)
    cfg2.epochs = 2
    logs: list[str] = []
    second = run_finetune(cfg2, log=logs.append)
    assert any("resuming" in line for line in logs)
    run = json.loads((run_dir / "result.json").read_text())
    assert run["epochs_run"] == 2 and len(run["history"]) == 2
    # batches, augmentation and init are seeded by (seed, epoch, step): same as never interrupted
    assert run["history"] == reference["history"]
    assert run["test_units"] == reference["test_units"]
    # a finished run is reused, not retrained
    third = run_finetune(cfg2, log=logs.append)
    assert third["label_fractions"][0]["runs"] == second["label_fractions"][0]["runs"]


def test_label_fractions_and_repeats_aggregate_with_joint_bootstrap(tmp_path):
    cfg = tiny("ncc", tmp_path / "lf", repeats=2, label_fractions=(0.5, 1.0))
    metrics = run_finetune(cfg, log=lambda s: None)
    fr = {f["fraction"]: f for f in metrics["label_fractions"]}
    assert set(fr) == {0.5, 1.0}
    assert [r["seed"] for r in fr[0.5]["runs"]] == [0, 1]
    assert max(fr[0.5]["n_train"]) < fr[1.0]["n_train"][0]
    agg = fr[1.0]["aggregate"]["auc"]
    values = [v for v in agg["values"] if v is not None and not math.isnan(v)]
    if len(values) == 2:
        assert agg["mean"] == pytest.approx(np.mean(values))
        assert agg["sd"] == pytest.approx(np.std(values, ddof=1))


def test_compare_writes_paired_student_and_welch_t_tests(tmp_path):
    # the same test set and evaluation on both sides (comparability), runs paired by seed and draw
    def fake(path, values):
        path.mkdir()
        runs = [{"seed": k, "metrics": {"auc": v}} for k, v in enumerate(values)]
        doc = {"target": "ncc", "task": "classification", "configuration": "x", "synthetic": True,
               "primary_metric": "auc", "metrics": ["auc"],
               "comparability": {"target": "ncc", "test_fingerprint": "f", "draws": {"1": {str(k): "d" for k in range(4)}}},
               "label_fractions": [{"fraction": 1.0, "runs": runs, "aggregate": {"auc": {"values": values}}}]}
        (path / "metrics.json").write_text(json.dumps(doc))
        return doc

    ours = fake(tmp_path / "a", [0.81, 0.84, 0.79])
    fake(tmp_path / "b", [0.70, 0.75, 0.72, 0.69])
    comp = compare_with(ours, tmp_path / "b")
    row = comp["fractions"][0]["auc"]
    a, b = [0.81, 0.84, 0.79], [0.70, 0.75, 0.72]  # seed 3 ran on one side only: left out
    assert comp["left_out"] == ["fraction 1: seed(s) [3] run on one side only"]
    assert row["p_student"] == pytest.approx(scipy_stats.ttest_ind(a, b).pvalue)
    assert row["p_welch"] == pytest.approx(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert row["p_paired"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert row["bootstrap"] is None  # no result.json with per-patient values next to these metrics.json


def test_augmenter_moves_image_and_mask_together_and_is_seeded():
    aug = Augmenter(AugmentConfig(flip_prob=0.5, rotate90_prob=0.5, noise_prob=0.0), (8, 16, 16), with_mask=True)
    mask = (torch.rand(1, 8, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    outs = [aug(mask.clone(), mask.clone(), seed=s) for s in range(6)]
    for image, m in outs:
        assert torch.equal(image, m) and image.shape == (1, 8, 16, 16)
    assert any(not torch.equal(image, mask) for image, _ in outs)
    again = aug(mask.clone(), mask.clone(), seed=3)
    assert torch.equal(again[0], outs[3][0])


def test_cli_runs_and_reports_user_errors(tmp_path, capsys, pretrained):
    common = ["--target", "ncs", "--width", "2", "--crop", "8", "16", "16", "--epochs", "1",
              "--steps-per-epoch", "1", "--batch-size", "1", "--device", "cpu",
              "--set", "synthetic.n_train=1", "--set", "synthetic.n_val=1", "--set", "synthetic.n_test=1",
              "--set", "synthetic.shape=[48, 64, 64]", "--set", "evaluation.bootstrap_resamples=20"]
    scratch, genesis = tmp_path / "scratch", tmp_path / "genesis"
    assert main(common + ["--out", str(scratch), "--init", "msra"]) == 0
    code = main(common + ["--out", str(genesis), "--weights", str(pretrained[0]), "--compare", str(scratch)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "SYNTHETIC" in printed and "iou_mean_thresholds at label fraction 1" in printed
    doc = json.loads((genesis / "metrics.json").read_text())
    assert doc["comparison"]["fractions"][0]["dice"]["n_a"] == 1
    assert doc["comparison"]["other_configuration"] == "random (msra)"
    assert "Comparison with" in (genesis / "metrics.md").read_text()
    assert main(["--target", "ncc", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["--target", "ncc", "--label-fraction", "1.5", "--out", str(tmp_path / "y")]) == 2


def test_classifier_checkpoint_transfers_its_encoder(tmp_path):
    clf = create_model("encoder_classifier", encoder="unet3d", encoder_kwargs={"base_width": 2}, num_classes=4)
    path = tmp_path / "rotation.pt"
    save_checkpoint({"model": clf.state_dict(), "model_name": "encoder_classifier",
                     "model_kwargs": {"encoder": "unet3d", "encoder_kwargs": {"base_width": 2}, "num_classes": 4}}, path)
    model, _, kwargs, info = build_model("classification", tiny("ncc", tmp_path, weights=str(path)))
    assert kwargs["base_width"] == 2 and info["loaded"] > 0
    key = "down_tr64.ops.0.conv1.weight"
    assert torch.equal(model.backbone.state_dict()[key], clf.backbone.state_dict()[key])
    # segmentation takes the encoder and trains a new decoder (the report says so)
    seg, _, _, seg_info = build_model("segmentation", tiny("ncs", tmp_path, weights=str(path)))
    assert torch.equal(seg.state_dict()[key], clf.backbone.state_dict()[key])
    report = seg_info["load_report"]
    assert "encoder only" in report["new_layers_reason"] and any(k.startswith("up_tr") for k in report["new_layers"])
    assert all(k.startswith("down_tr") for k in report["loaded"])


def test_precise_bn_recomputes_trainable_statistics_only():
    from finetune.data import SegCase
    from finetune.engine import recompute_bn_stats

    cfg = FinetuneConfig(width=2, crop=(8, 16, 16), batch_size=2, device="cpu", precise_bn_batches=3)
    rng = np.random.default_rng(0)
    mask = np.zeros((16, 32, 32), np.uint8)
    mask[6:10, 12:20, 12:20] = 1
    train = [SegCase(rng.random((16, 32, 32), dtype=np.float32) + 2.0, mask, "c", [(8, 16, 16)])]
    torch.manual_seed(0)
    model = create_model("unet3d", base_width=2)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for p in bns[0].parameters():
        p.requires_grad_(False)  # a frozen layer keeps its statistics
    frozen_mean = bns[0].running_mean.clone()
    recompute_bn_stats(model, "segmentation", train, cfg.crop, cfg, seed=0, device=torch.device("cpu"))
    assert torch.equal(bns[0].running_mean, frozen_mean)
    # the first trainable layer sees inputs near 2.5: its statistics are those of the data, not the init
    assert not torch.allclose(bns[1].running_mean, torch.zeros_like(bns[1].running_mean))
    assert all(m.momentum == 0.1 for m in bns) and int(bns[1].num_batches_tracked) == 3
    again = create_model("unet3d", base_width=2)
    again.load_state_dict(model.state_dict())
    again_bns = [m for m in again.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    for p in again_bns[0].parameters():
        p.requires_grad_(False)
    recompute_bn_stats(again, "segmentation", train, cfg.crop, cfg, seed=0, device=torch.device("cpu"))
    assert all(torch.allclose(a.running_var, b.running_var) for a, b in zip(again_bns[1:], bns[1:]))  # seeded
