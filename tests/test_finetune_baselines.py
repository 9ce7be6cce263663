"""Fine-tuning the Ke et al. baselines (video 3D, ImageNet 2D, LRCN) through genesis-finetune.

Tiny configurations on the synthetic default; released weights are stood in for by state dicts we
save ourselves and register through a local ``file://`` manifest (GENESIS_WEIGHTS_REGISTRY), so
nothing touches the network.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from finetune import run_finetune
from finetune.baselines import check_model, resolve_model
from finetune.config import FinetuneConfig
from finetune.transfer import build_model
from genesis.cli.finetune import main
from genesis.errors import ConfigError
from genesis.models import create_model
from genesis.training.checkpoint import save_checkpoint
from genesis.weights.download import sha256_file


def tiny(target: str, out, **kw) -> FinetuneConfig:
    kw.setdefault("crop", (8, 32, 32))
    cfg = FinetuneConfig(target=target, out=str(out), epochs=1, steps_per_epoch=2, batch_size=2, device="cpu", **kw)
    cfg.synthetic.n_train, cfg.synthetic.n_val, cfg.synthetic.n_test = 2, 1, 2
    cfg.synthetic.shape = (48, 64, 64)
    cfg.evaluation.bootstrap_resamples = 50
    return cfg


def register(tmp_path, monkeypatch, name: str, arch: str, state: dict, args: dict | None = None) -> None:
    """Save ``state`` as a torchvision-style file and register it as ``name`` (file:// URL)."""
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    entry = {"name": name, "urls": [path.as_uri()], "sha256": sha256_file(path), "format": "torchvision",
             "architecture": {"name": arch, "args": args or {"num_classes": 1000}}}
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(entry))
    monkeypatch.setenv("GENESIS_WEIGHTS_REGISTRY", str(manifest))
    monkeypatch.setenv("GENESIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENESIS_OFFLINE", raising=False)


def released(arch: str, seed: int, **kw) -> dict:
    """A distinctive state dict of ``arch`` with its released head (e.g. 1000 ImageNet classes)."""
    torch.manual_seed(seed)
    model = create_model(arch, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_encoder_equal(model: torch.nn.Module, state: dict, prefixes: tuple[str, ...]) -> int:
    own, n = model.state_dict(), 0
    for key, value in state.items():
        if key.split(".", 1)[0] in prefixes:
            assert torch.equal(own[key], value), key
            n += 1
    return n


@pytest.mark.slow
def test_cli_r3d_18_from_scratch_on_ncc_end_to_end(tmp_path, capsys):
    out = tmp_path / "ncc-r3d"
    argv = ["--target", "ncc", "--model", "r3d_18", "--preset", "quick", "--crop", "8", "16", "16",
            "--epochs", "1", "--steps-per-epoch", "2", "--out", str(out), "--device", "cpu",
            "--set", "synthetic.shape=[48, 64, 64]", "--set", "synthetic.n_test=2", "--set", "synthetic.n_train=2"]
    assert main(argv) == 0
    assert "auc" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "r3d_18" and metrics["model_family"] == "baseline"
    assert metrics["weights"] is None and metrics["weights_source"] is None
    assert metrics["configuration"] == "r3d_18: random (scratch)"
    auc = metrics["label_fractions"][0]["aggregate"]["auc"]
    assert auc["mean"] is None or 0.0 <= auc["mean"] <= 1.0
    assert "Model: r3d_18" in (out / "metrics.md").read_text()
    ckpt = torch.load(out / "fraction-1" / "seed-0" / "best.pt", weights_only=True)
    assert ckpt["model_name"] == "r3d_18" and ckpt["model_kwargs"] == {"normalize": True, "num_classes": 1}
    assert ckpt["model"]["fc.weight"].shape == (1, 512)


def test_registered_imagenet_weights_pick_the_2d_model_and_load(tmp_path, monkeypatch):
    state = released("resnet18", seed=3)
    register(tmp_path, monkeypatch, "resnet18.test_imagenet", "resnet18", state)
    cfg = tiny("ncc", tmp_path / "ncc-resnet18", weights="resnet18.test_imagenet", init="xavier")
    assert resolve_model(cfg, "classification").name == "resnet18"  # from the manifest, no --model

    model, name, kwargs, info = build_model("classification", cfg)
    assert name == "resnet18" and kwargs == {"normalize": True, "num_classes": 1} and model.normalize
    n = assert_encoder_equal(model, state, model.encoder_state_prefixes)
    assert n == info["loaded"] > 0 and info["missing"] == 0
    assert model.fc.weight.shape == (1, 512)  # the ImageNet head was replaced, not loaded
    assert info["weights_source"].startswith("resnet18.test_imagenet")

    metrics = run_finetune(cfg, log=lambda s: None)
    assert metrics["model"] == "resnet18" and metrics["weights"] == "resnet18.test_imagenet"
    assert metrics["weights_architecture"] == "resnet18"
    assert metrics["weights_source"].startswith("resnet18.test_imagenet (")
    assert metrics["configuration"] == "resnet18: pretrained resnet18.test_imagenet"
    run = metrics["label_fractions"][0]["runs"][0]
    assert run["metrics"]["auc"] is None or 0.0 <= run["metrics"]["auc"] <= 1.0
    assert "Weights: resnet18.test_imagenet" in (tmp_path / "ncc-resnet18" / "metrics.md").read_text()


def test_registered_kinetics_weights_load_into_r3d_18_with_frozen_encoder(tmp_path, monkeypatch):
    state = released("r3d_18", seed=4, num_classes=400)
    register(tmp_path, monkeypatch, "r3d_18.test_kinetics", "r3d_18", state, {"num_classes": 400})
    cfg = tiny("pe", tmp_path, weights="r3d_18.test_kinetics", model="r3d_18", freeze="encoder")
    model, name, _, info = build_model("classification", cfg)
    assert name == "r3d_18" and info["model"] == "r3d_18"
    assert assert_encoder_equal(model, state, model.encoder_state_prefixes) == info["loaded"] > 0
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}


def test_lrcn_takes_the_2d_weights_into_its_backbone(tmp_path, monkeypatch):
    state = released("resnet18", seed=5)
    register(tmp_path, monkeypatch, "resnet18.test_imagenet", "resnet18", state)
    cfg = tiny("pe", tmp_path, weights="resnet18.test_imagenet", model="lrcn", model_args={"hidden_size": 8})
    model, name, kwargs, info = build_model("classification", cfg)
    assert name == "lrcn" and kwargs["backbone"] == "resnet18"
    assert assert_encoder_equal(model.backbone, state, model.backbone.encoder_state_prefixes) == info["loaded"]
    assert model(torch.rand(2, 1, 4, 32, 32)).shape == (2, 1)


def test_baseline_on_a_segmentation_target_is_a_config_error(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="segmentation targets"):
        run_finetune(tiny("ncs", tmp_path / "ncs", model="r3d_18"), log=lambda s: None)
    assert not (tmp_path / "ncs" / "metrics.json").exists()
    register(tmp_path, monkeypatch, "r3d_18.test_kinetics", "r3d_18", released("r3d_18", seed=6))
    with pytest.raises(ConfigError, match="segmentation targets"):
        build_model("segmentation", tiny("ncs", tmp_path, weights="r3d_18.test_kinetics"))
    assert main(["--target", "lcs", "--model", "resnet18", "--out", str(tmp_path / "lcs")]) != 0


def test_crop_below_the_architecture_minimum_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"\(8, 16, 16\).*--crop 8 16 16"):
        check_model(tiny("ncc", tmp_path, model="r3d_18", crop=(8, 8, 8)), "classification", (8, 8, 8), "ncc")
    with pytest.raises(ConfigError, match=r"\(1, 32, 32\)"):
        check_model(tiny("ncc", tmp_path, model="resnet18"), "classification", (8, 16, 16), "ncc")
    with pytest.raises(ConfigError, match=r"\(32, 32, 32\)"):  # MedicalNet strides every axis
        check_model(tiny("ncc", tmp_path, model="resnet18_3d"), "classification", (16, 32, 32), "ncc")
    assert check_model(tiny("ncc", tmp_path, model="mc3_18"), "classification", (8, 16, 16), "ncc").name == "mc3_18"


def test_weights_for_another_architecture_and_unknown_models_are_config_errors(tmp_path, monkeypatch):
    register(tmp_path, monkeypatch, "r3d_18.test_kinetics", "r3d_18", released("r3d_18", seed=7))
    with pytest.raises(ConfigError, match="made for 'r3d_18'"):
        resolve_model(tiny("ncc", tmp_path, weights="r3d_18.test_kinetics", model="resnet18"), "classification")
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model(tiny("ncc", tmp_path, model="no_such_net"), "classification")
    with pytest.raises(ConfigError, match="classifier"):
        check_model(tiny("ncc", tmp_path, model="unet2d"), "classification", (8, 32, 32), "ncc")


def test_finetuned_baseline_checkpoint_names_its_model(tmp_path):
    """A genesis-finetune best.pt of a baseline fine-tunes again without --model."""
    model = create_model("mc3_18", num_classes=1)
    path = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "model_name": "mc3_18",
                     "model_kwargs": {"normalize": True, "num_classes": 1}}, path)
    choice = resolve_model(tiny("ncc", tmp_path, weights=str(path)), "classification")
    assert choice.name == "mc3_18" and choice.args == {"normalize": True}
    unet = tiny("ncc", tmp_path)
    assert resolve_model(unet, "classification").name == "unet3d"  # default unchanged
