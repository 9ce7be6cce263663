"""``genesis-pretrain --dims``: never ignored; 2D pretraining from dataset layouts; optimizer rule; the
"do nothing" baseline of ``--evaluate``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _owndata import patches_h5  # noqa: E402

from genesis.cli.pretrain import main  # noqa: E402
from genesis.config import load_config  # noqa: E402
from genesis.errors import ConfigError  # noqa: E402
from genesis.training.checkpoint import load_checkpoint  # noqa: E402
from genesis.training.config import OptimConfig, PretrainConfig, resolve_optim  # noqa: E402
from genesis.training.pretrain import run_pretraining  # noqa: E402

TINY = ["--preset", "quick", "--epochs", "1", "--steps-per-epoch", "1", "--width", "2", "--device", "cpu",
        "--no-progress", "--set", "log.grids=false", "--set", "log.tensorboard=false"]


def test_auto_optimizer_uses_sgd_only_for_the_3d_unet_genesis_recipe():
    auto = OptimConfig()
    assert resolve_optim(auto, "combined", "restoration", "unet3d", 3) == OptimConfig("sgd", 1.0, 0.9)
    assert resolve_optim(auto, "combined", "restoration", "unet2d", 2).name == "radam"
    assert resolve_optim(auto, "combined", "restoration", "vqvae", 3) == OptimConfig("radam", 1e-3, 0.9)
    assert resolve_optim(auto, "masked_region", "restoration", "unet3d", 3).name == "radam"


def test_2d_pretraining_on_an_arrays_file_adapts_the_crop_and_records_dims(tmp_path, capsys):
    h5 = patches_h5(tmp_path / "p.h5", n=8, side=24)
    out = tmp_path / "run"
    assert main([*TINY, "--task", "masked_region", "--dims", "2", "--data", str(h5), "--out", str(out)]) == 0
    assert "crop (16, 32, 32) -> (1, 24, 24)" in capsys.readouterr().err
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["dims"] == 2 and ckpt["model_name"] == "unet2d" and ckpt["config"]["data"]["crop"] == [1, 24, 24]
    assert ckpt["config"]["optim"]["name"] == "adam"  # the quick preset's, kept

    # --evaluate shows the "do nothing" baseline next to the model
    assert main(["--evaluate", str(out / "best.pt"), "--out", str(tmp_path / "eval"), "--eval-cubes", "4",
                 "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    metrics = report["results"]["masked_region"]
    assert 0.0 < metrics["do_nothing_mse"] < 1.0 and "mse" in metrics
    assert "do_nothing_changed_mse" in metrics


def test_dims_mismatches_are_config_errors(tmp_path, capsys):
    h5 = patches_h5(tmp_path / "p.h5", n=8, side=24)
    # 2D images, 3D pretraining
    assert main([*TINY, "--task", "masked_region", "--data", str(h5), "--out", str(tmp_path / "a")]) == 2
    assert "holds 2D images; 3D pretraining needs volumes: use --dims 2" in capsys.readouterr().err
    cfg = load_config(PretrainConfig, None, {"task": "masked_region", "dims": 2, "model": "unet3d", "width": 2,
                                             "data.crop": (8, 16, 16), "device": "cpu", "out": str(tmp_path / "b"),
                                             "data.synthetic_volumes": 2, "data.synthetic_shape": (16, 32, 32)})
    with pytest.raises(ConfigError, match="unet3d is a 3D network"):
        run_pretraining(cfg)


def test_combined_pretraining_in_2d_trains_unet2d(tmp_path):
    h5 = patches_h5(tmp_path / "p.h5", n=8, side=24)
    out = tmp_path / "mg2d"
    assert main([*TINY, "--task", "combined", "--dims", "2", "--data", str(h5), "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["dims"] == 2 and ckpt["model_name"] == "unet2d"
