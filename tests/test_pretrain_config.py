"""Pretraining configuration: paper defaults, YAML files, flags, presets, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genesis.cli.pretrain import build_parser, overrides_from_args
from genesis.config import load_config
from genesis.errors import ConfigError
from genesis.training.config import OptimConfig, PretrainConfig, quick_overrides, resolve_optim
from genesis.training.schedule import EarlyStopping, EpochScheduler, build_optimizer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def cfg_from(argv: list[str]) -> PretrainConfig:
    args = build_parser().parse_args(argv)
    return load_config(PretrainConfig, args.config, overrides_from_args(args))


def test_defaults_are_the_models_genesis_recipe() -> None:
    cfg = PretrainConfig()
    assert cfg.task == "combined" and cfg.dims == 3 and cfg.width == 32 and cfg.batch_size == 6
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("auto", None, 0.9)
    assert resolve_optim(cfg.optim, "combined", "restoration") == OptimConfig("sgd", 1.0, 0.9)
    assert resolve_optim(cfg.optim, "rotation", "classification").name == "radam"
    assert resolve_optim(cfg.optim, "masked_region", "restoration").lr == 1e-3
    assert resolve_optim(OptimConfig("adam", 0.01), "combined", "restoration").lr == 0.01
    assert cfg.schedule.name == "plateau" and cfg.schedule.factor == 0.5
    assert cfg.early_stop.patience == 50
    assert cfg.data.crop == (32, 64, 64) and cfg.data.window == (-1000.0, 1000.0)
    assert cfg.data.data is None  # synthetic default


def test_flags_override_yaml_and_preset(tmp_path: Path) -> None:
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("batch_size: 3\noptim:\n  lr: 0.5\ndata:\n  crop: [16, 32, 32]\n")
    cfg = cfg_from(["--config", str(yaml_file), "--lr", "0.1", "--crop", "8", "16", "16", "--task", "rotation",
                    "--dims", "2", "--set", "schedule.patience=7", "--set", "task_params.k=5"])
    assert cfg.batch_size == 3 and cfg.optim.lr == 0.1 and cfg.data.crop == (8, 16, 16)
    assert cfg.task == "rotation" and cfg.dims == 2 and cfg.schedule.patience == 7
    assert cfg.task_params == {"k": 5}
    quick = cfg_from(["--preset", "quick", "--epochs", "2"])
    assert quick.width == quick_overrides()["width"] and quick.data.crop == (16, 32, 32)
    assert quick.epochs == 2  # an explicit flag beats the preset


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("pretrain*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(PretrainConfig, path)
    cfg.validate()


def test_bad_settings_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no_such_key"):
        cfg_from(["--set", "no_such_key=1"])
    with pytest.raises(ConfigError, match="dims"):
        load_config(PretrainConfig, None, {"dims": 4}).validate()
    with pytest.raises(ConfigError, match="optim.name"):
        load_config(PretrainConfig, None, {"optim.name": "lbfgs"}).validate()


def test_plateau_schedule_halves_and_round_trips() -> None:
    cfg = load_config(PretrainConfig, None, {"schedule.patience": 1})
    params = [torch.nn.Parameter(torch.zeros(1))]
    optim = resolve_optim(cfg.optim, "combined", "restoration")
    opt = build_optimizer(params, optim)
    sched = EpochScheduler(opt, cfg.schedule)
    for loss in (1.0, 1.0, 1.0):
        sched.step(loss)
    assert sched.lr == 0.5
    clone = EpochScheduler(build_optimizer(params, optim), cfg.schedule)
    clone.load_state_dict(sched.state_dict())
    assert clone.inner.state_dict() == sched.inner.state_dict()


def test_early_stopping_counts_epochs_without_improvement() -> None:
    stop = EarlyStopping(patience=2)
    assert stop.update(1.0) and not stop.update(1.0) and not stop.should_stop
    assert not stop.update(2.0) and stop.should_stop
    again = EarlyStopping(patience=2)
    again.load_state_dict(stop.state_dict())
    assert again.best == 1.0 and again.should_stop


def test_crop_not_divisible_by_8_fails_before_any_data_is_read() -> None:
    with pytest.raises(ConfigError, match="multiples of 8"):
        load_config(PretrainConfig, None, {"data.crop": (10, 32, 32)}).validate()
    # 2D tasks only pool the axial plane
    load_config(PretrainConfig, None, {"data.crop": (5, 32, 32), "dims": 2}).validate()
