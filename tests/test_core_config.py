"""Config dataclasses <-> YAML with dotted overrides, and clear errors for bad files/keys."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from genesis.config import config_to_dict, load_config, save_config
from genesis.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1.0
    momentum: float = 0.9


@dataclass
class Cfg:
    crop: tuple[int, int, int] = (32, 64, 64)
    window: tuple[float, float] = (-1000.0, 1000.0)
    name: str = "combined"
    data: str | None = None
    epochs: int = 10
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_and_overrides_compose(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("crop: [16, 32, 32]\noptim:\n  lr: 0.5\n")
    cfg = load_config(Cfg, path, {"optim.momentum": 0.5, "epochs": 3, "data": None})
    assert cfg.crop == (16, 32, 32) and isinstance(cfg.crop, tuple)
    assert cfg.optim == Optim(lr=0.5, momentum=0.5)
    assert cfg.epochs == 3 and cfg.data is None and cfg.name == "combined"
    # ints in YAML are accepted for float fields
    path.write_text("window: [-600, 1500]\n")
    assert load_config(Cfg, path).window == (-600.0, 1500.0)


def test_round_trip_through_saved_yaml(tmp_path):
    cfg = Cfg(crop=(8, 16, 16), data="scans/", optim=Optim(lr=0.1))
    save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(Cfg, tmp_path / "out" / "config.yaml") == cfg
    assert config_to_dict(cfg)["crop"] == [8, 16, 16]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("optim:\n  lrr: 1\n", "lrr"),
        ("crop: [1, 2]\n", "crop"),
        ("epochs: many\n", "epochs"),
        ("- a\n- b\n", "mapping"),
        ("crop: [1, 2\n", "YAML"),
    ],
)
def test_bad_config_files_name_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, path)
    assert "bad.yaml" in str(info.value) and fragment in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_an_override_cannot_remove_a_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\n")
    for value in (None, 3, "sgd", [1, 2]):  # --set optim=null would fall back to every default silently
        with pytest.raises(ConfigError, match=r"override optim=.*'optim' is a section of settings \(lr, momentum\)"):
            load_config(Cfg, path, {"optim": value})
    # a mapping sets the fields it names and keeps the others (the file's lr)
    assert load_config(Cfg, path, {"optim": {"momentum": 0.1}}).optim == Optim(lr=0.5, momentum=0.1)
    assert load_config(Cfg, path, {"optim": {}}).optim == Optim(lr=0.5)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config(Cfg, path, {"optim": {"nesterov": True}})


def test_seeds_out_of_range_name_the_range():
    from finetune.config import FinetuneConfig

    from genesis.config import MAX_SEED, check_seed
    from genesis.training.config import PretrainConfig

    check_seed(MAX_SEED)
    for bad in (2**70, -1, MAX_SEED + 1):
        with pytest.raises(ConfigError, match=r"seed must be in \[0, 4294967295\]"):
            check_seed(bad)
        with pytest.raises(ConfigError, match=r"seed must be in \[0, 4294967295\]"):
            PretrainConfig(seed=bad).validate()
        with pytest.raises(ConfigError, match=r"seed must be in \[0, 4294967295\]"):
            FinetuneConfig(seed=bad).validate()
    with pytest.raises(ConfigError, match=r"its 3 runs use seeds 4294967294 to 4294967296"):
        FinetuneConfig(seed=MAX_SEED - 1, repeats=3).validate()
    with pytest.raises(ConfigError, match="must be an integer"):
        check_seed(1.5)
