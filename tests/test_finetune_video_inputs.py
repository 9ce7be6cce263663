"""Inputs and study-level evaluation of Ke et al. for the video/2D baselines: ``--channels``,
``--aggregate`` and ``genesis-finetune --target pe --weights <Kinetics video model>``.

Released weights are stood in for by a state dict saved here and registered through a local
``file://`` manifest, so nothing touches the network.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from finetune.baselines import check_model
from finetune.config import FinetuneConfig
from genesis.cli.finetune import main
from genesis.errors import ConfigError, GenesisError
from genesis.models import create_model
from genesis.models._pretrained import CT_WINDOWS, CT_WINDOWS_SPAN
from genesis.weights.download import sha256_file


def test_grey_to_rgb_modes_make_the_documented_channels():
    net = create_model("r3d_18", num_classes=1, normalize=False)
    x = torch.arange(4.0).view(1, 1, 4, 1, 1).expand(1, 1, 4, 2, 2) / 4
    assert torch.equal(net._grey_to_rgb(x), x.expand(1, 3, 4, 2, 2))
    net.set_input_mode("neighbors")
    rgb = net._grey_to_rgb(x)[0, :, :, 0, 0]  # (3 channels, 4 slices): n-1, n, n+1 with repeated ends
    assert torch.allclose(rgb * 4, torch.tensor([[0.0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 3]]))
    net.set_input_mode("windows", CT_WINDOWS_SPAN)
    low, high = CT_WINDOWS_SPAN
    hu = torch.tensor([-1000.0, 0.0, 100.0, 400.0])
    grey = ((hu - low) / (high - low)).view(1, 1, 4, 1, 1)
    rgb = net._grey_to_rgb(grey)[0, :, :, 0, 0]
    expected = torch.stack([((hu - a) / (b - a)).clamp(0, 1) for a, b in CT_WINDOWS])
    assert torch.allclose(rgb, expected, atol=1e-5)
    with pytest.raises(GenesisError, match="neighbors"):
        create_model("resnet18").set_input_mode("neighbors")(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="HU range"):
        net.set_input_mode("windows")


def test_2d_networks_score_a_window_by_its_slice_logits():
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=1).eval()
    x = torch.rand(2, 1, 3, 32, 32)
    with torch.no_grad():
        per_slice = torch.stack([net(x[:, :, i]) for i in range(3)], 1)  # (B, D, 1)
        assert torch.allclose(net(x), per_slice.amax(1), atol=1e-5)  # default: max (Ke et al.)
        net.set_input_mode(slice_aggregate="mean")
        assert torch.allclose(net(x), per_slice.mean(1), atol=1e-5)


def test_channels_need_an_rgb_baseline(tmp_path):
    cfg = FinetuneConfig(target="ncc", out=str(tmp_path), channels="windows")
    with pytest.raises(ConfigError, match="U-Net"):
        check_model(cfg, "classification", (8, 32, 32), "ncc")
    with pytest.raises(ConfigError, match="channels must be one of"):
        FinetuneConfig(channels="rgb").validate()


def test_pe_with_registered_kinetics_video_weights_end_to_end(tmp_path, monkeypatch, capsys):
    torch.manual_seed(2)
    state = create_model("s3d").state_dict()
    path = tmp_path / "s3d-test.pth"
    torch.save(state, path)
    manifest = tmp_path / "s3d.yaml"
    manifest.write_text(yaml.safe_dump({"name": "s3d.test_kinetics", "urls": [path.as_uri()],
                                        "sha256": sha256_file(path), "format": "torchvision",
                                        "architecture": {"name": "s3d", "args": {"num_classes": 400}}}))
    monkeypatch.setenv("GENESIS_WEIGHTS_REGISTRY", str(manifest))
    monkeypatch.setenv("GENESIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENESIS_OFFLINE", raising=False)
    out = tmp_path / "pe-s3d"
    argv = ["--target", "pe", "--weights", "s3d.test_kinetics", "--channels", "windows", "--aggregate", "mean",
            "--crop", "8", "32", "32", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
            "--out", str(out), "--device", "cpu", "--set", "synthetic.shape=[32, 64, 64]",
            "--set", "synthetic.n_train=2", "--set", "synthetic.n_val=1", "--set", "synthetic.n_test=2",
            "--set", "evaluation.bootstrap_resamples=20"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "s3d" and metrics["weights"] == "s3d.test_kinetics"
    assert metrics["channels"] == "windows" and metrics["aggregate"] == "mean"
    assert metrics["evaluation"] == "study-level: mean over window predictions"
    assert metrics["config"]["window"] is None  # the windows mode widened the input to all three windows
    run = metrics["label_fractions"][0]["runs"][0]
    assert set(run["ci"]) == {"auc"}
    assert run["metrics"]["auc"] is None or 0.0 <= run["metrics"]["auc"] <= 1.0
    result = json.loads((out / "fraction-1" / "seed-0" / "result.json").read_text())
    assert result["transfer"]["loaded"] == len([k for k in state if not k.startswith("classifier")])
    assert len(result["test_units"]["names"]) == 2  # one prediction per study


def test_study_windows_are_stored_larger_and_cropped_like_ke_et_al():
    from finetune import get_target
    from finetune.study import fit_in_plane, stored_side

    assert stored_side(224) == 256 and stored_side(32) == 37
    window = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    assert np.array_equal(fit_in_plane(window, (3, 3)), window[:, 1:4, 1:4])  # evaluation: centre crop
    crops = {fit_in_plane(window, (3, 3), np.random.default_rng(s))[0, 0, 0] for s in range(20)}
    assert len(crops) > 1 and crops <= {0.0, 1.0, 2.0, 5.0, 6.0, 7.0, 10.0, 11.0, 12.0}
    assert fit_in_plane(window, (7, 7)).shape == (2, 7, 7)  # padded with air
    pe = get_target("pe")
    assert pe.crop(FinetuneConfig(target="pe")) == (32, 128, 128)
    assert pe.crop(FinetuneConfig(target="pe", model="penet")) == (24, 128, 128)
    assert pe.crop(FinetuneConfig(target="pe", weights="penet.kinetics600")) == (24, 128, 128)
    assert pe.rotate_degrees == 20.0 and get_target("ncc").rotate_degrees == 0.0


def test_lr_search_picks_the_best_validation_rate_and_records_it(tmp_path, monkeypatch):
    from finetune import lr_search, run_finetune

    cfg = FinetuneConfig(target="ncc", out=str(tmp_path / "ncc-lr"), epochs=1, steps_per_epoch=1, batch_size=2,
                         device="cpu", crop=(8, 32, 32), width=4, head_hidden=8, lr_search=True,
                         lr_grid=(1e-2, 1e-4), lr_search_fraction=0.5)
    cfg.synthetic.n_train, cfg.synthetic.n_val, cfg.synthetic.n_test = 2, 1, 2
    cfg.synthetic.shape = (48, 64, 64)
    cfg.evaluation.bootstrap_resamples = 20
    metrics = run_finetune(cfg, log=lambda s: None)
    record = metrics["lr_search"]
    assert record["grid"] == [1e-2, 1e-4] and record["fraction"] == 0.5 and record["val_metric"] == "auc"
    assert set(record["scores"]) == {"0.01", "0.0001"}
    assert record["chosen"] in (1e-2, 1e-4) and metrics["config"]["optim"]["lr"] == record["chosen"]
    assert all((tmp_path / "ncc-lr" / "lr-search" / f"lr-{r}" / "result.json").is_file() for r in ("0.01", "0.0001"))
    # the choice: best validation metric, ties to the earlier rate, undefined metrics never win
    assert lr_search.best_validation({"history": [{"val_auc": 0.5}, {"val_auc": float("nan")}, {"val_auc": 0.7}]},
                                     "auc") == 0.7
    fake = {1e-1: [0.6], 1e-2: [0.8], 1e-3: [0.8], 1e-4: [float("nan")]}
    def run_one(target, data, train, trial, *a, **k):
        return {"history": [{"val_auc": v} for v in fake[trial.optim.lr]]}

    monkeypatch.setattr(lr_search, "subset_fraction", lambda items, *a, **k: items)
    from finetune import get_target
    from finetune.data import TargetData

    data = TargetData(train=[], val=[], test=[], synthetic=True, source="test")
    quick = FinetuneConfig(target="ncc", lr_grid=tuple(fake), lr_search=True)
    picked = lr_search.search_learning_rate(quick, get_target("ncc"), data, torch.device("cpu"), tmp_path, lambda s: None,
                                            run_one=run_one)
    assert picked["chosen"] == 1e-2 and picked["scores"]["0.0001"] is None


def test_2d_and_2_5d_views_of_a_cube():
    torch.manual_seed(3)
    cube = torch.rand(2, 1, 8, 8, 8)
    axial = create_model("resnet18")._view_rgb(cube, "axial")
    assert axial.shape == (2, 3, 1, 8, 8) and torch.equal(axial[:, :, 0], cube[:, 0, 3:6])
    planes = create_model("resnet18")._view_rgb(cube, "orthogonal")[:, :, 0]
    assert torch.equal(planes[:, 0], cube[:, 0, 4]) and torch.equal(planes[:, 1], cube[:, 0, :, 4, :])
    assert torch.equal(planes[:, 2], cube[:, 0, :, :, 4])
    net = create_model("resnet18", num_classes=1).eval().set_input_mode(view="orthogonal")
    rgb = create_model("resnet18", num_classes=1, in_channels=3).eval()
    rgb.load_state_dict(net.state_dict())
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), rgb(net._view_rgb(x, "orthogonal")[:, :, 0]), atol=1e-5)
    with pytest.raises(ValueError, match="3D network"):
        create_model("r3d_18").set_input_mode(view="axial")
    cfg = FinetuneConfig(target="ncc", out="unused", model="lrcn", view="axial")
    from finetune.baselines import apply_input_mode

    with pytest.raises(ConfigError, match="lrcn"):
        apply_input_mode(create_model("lrcn", backbone="resnet18", hidden_size=4), cfg, "lrcn")
