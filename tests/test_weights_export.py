"""Export of our checkpoints (safetensors + model card + manifest) and loading by registry name."""

from __future__ import annotations

import os

import pytest
import torch
import yaml

from genesis.errors import ConfigError, UnknownNameError
from genesis.cli.weights import main as weights_main
from genesis.models import create_model
from genesis.training.checkpoint import save_checkpoint
from genesis.weights import WeightsSettings, export_checkpoint, load_weights, read_card
from genesis.weights.download import sha256_file
from genesis.weights.manifest import read_manifest_file

W = 2


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)  # test-only: parameter init
    model = create_model("unet3d", base_width=W)
    config = {
        "task": {"name": "genesis", "prob": 1.0},
        "model": {"name": "unet3d", "base_width": W, "in_channels": 1, "out_channels": 1, "up_mode": "transpose"},
        "data": {"source": "synthetic", "n": 4, "preprocess": {"window": [-1000.0, 1000.0]},
                 "sampler": {"crop": [16, 16, 16]}},
    }
    path = tmp_path / "run" / "last.pt"
    save_checkpoint({"model": model.state_dict(), "config": config, "epoch": 3,
                     "metrics": {"val_loss": torch.tensor(0.125), "psnr": 21.5}}, path)
    return path, model


def test_export_writes_card_and_manifest_and_loads_back(checkpoint, tmp_path):
    path, model = checkpoint
    result = export_checkpoint(path, "unet3d.synthetic_demo", tmp_path / "out", license="CC-BY-4.0")
    assert result.synthetic is True
    assert result.sha256 == sha256_file(result.weights) and result.size == result.weights.stat().st_size
    meta, body = read_card(result.card)
    assert meta["sha256"] == result.sha256 and meta["data"]["synthetic"] is True
    assert meta["proxy_task"] == "genesis" and meta["epoch"] == 3
    assert meta["metrics"] == {"val_loss": 0.125, "psnr": 21.5}
    assert meta["architecture"] == {"name": "unet3d", "args": {"base_width": W, "in_channels": 1,
                                                             "out_channels": 1, "up_mode": "transpose"}}
    assert "Synthetic data" in body
    (entry,) = read_manifest_file(result.manifest)
    assert entry.sha256 == result.sha256 and entry.hu_window == [-1000.0, 1000.0]
    assert entry.input["crop"] == [16, 16, 16] and entry.urls[0].startswith("file://")

    # straight from the file
    fresh = create_model("unet3d", base_width=W)
    report = load_weights(fresh, result.weights, strict=True)
    assert report.ok and not report.converted
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key

    # by name through a user registry file: downloaded (file://) into the cache and verified
    settings = WeightsSettings(cache_dir=tmp_path / "cache", registry_files=[result.manifest], progress=False)
    again = create_model("unet3d", **meta["architecture"]["args"])
    report = load_weights(again, "unet3d.synthetic_demo", settings=settings, strict=True)
    assert "unet3d.synthetic_demo" in report.source
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model.eval()(x))


def test_training_checkpoint_loads_directly(checkpoint):
    path, model = checkpoint
    fresh = create_model("unet3d", base_width=W)
    report = load_weights(fresh, path, part="encoder")
    assert report.loaded and all(k.startswith("down_tr") for k in report.loaded)


def test_unknown_name_and_bad_export_name(checkpoint, tmp_path):
    settings = WeightsSettings(cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(UnknownNameError, match="unet3d.genesis_chest_ct"):
        load_weights(create_model("unet3d", base_width=W), "unet3d.no_such_weights", settings=settings)
    with pytest.raises(ConfigError, match="arch.tag"):
        export_checkpoint(checkpoint[0], "NoDots", tmp_path, license="MIT")


def test_cli_export(checkpoint, tmp_path, capsys):
    path, _ = checkpoint
    assert weights_main(["export", str(path), "--name", "unet3d.cli_export", "--out", str(tmp_path / "o"),
                        "--license", "CC-BY-4.0"]) == 0
    out = capsys.readouterr().out
    assert "synthetic" in out and (tmp_path / "o" / "unet3d.cli_export.md").is_file()
    assert weights_main(["export", str(tmp_path / "missing.pt"), "--name", "unet3d.x", "--license", "MIT"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    # no silent license: the command refuses and says what to pass
    assert weights_main(["export", str(path), "--name", "unet3d.cli_export2", "--out", str(tmp_path / "o2")]) == 2
    assert "--license" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_registry_name_with_official_format(tmp_path):
    """A user registry entry with the official format: converted on load, like the release."""
    torch.manual_seed(0)
    source = create_model("unet3d", base_width=W)
    path = tmp_path / "Genesis_Chest_CT.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in source.state_dict().items()}}, path)
    manifest = tmp_path / "reg.yaml"
    manifest.write_text(yaml.safe_dump({"name": "unet3d.local_official", "urls": [path.as_uri()],
                                        "format": "official-genesis-pt", "sha256": sha256_file(path)}))
    env = {"GENESIS_CACHE": str(tmp_path / "c"), "GENESIS_WEIGHTS_REGISTRY": os.pathsep.join([str(manifest)])}
    settings = WeightsSettings.from_env(env, progress=False)
    target = create_model("unet3d", base_width=W)
    report = load_weights(target, "unet3d.local_official", settings=settings, strict=True)
    assert "official" in report.converted
    w = source.state_dict()["down_tr64.ops.0.conv1.weight"]
    assert torch.equal(target.state_dict()["down_tr64.ops.0.conv1.weight"], w.permute(0, 1, 4, 3, 2))


def test_export_reads_the_pretraining_engine_layout(tmp_path):
    """genesis.training.pretrain writes model_name/model_kwargs/task/synthetic at the top level."""
    torch.manual_seed(0)
    model = create_model("unet3d", base_width=W, up_mode="upsample")
    config = {"task": "combined", "model": "auto", "width": W,
              "data": {"data": "/scans/luna16", "window": [-1000.0, 1000.0], "crop": [32, 64, 64], "spacing": None}}
    path = tmp_path / "best.pt"
    save_checkpoint({"model": model.state_dict(), "config": config, "epoch": 7, "task": "combined",
                     "model_name": "unet3d", "model_kwargs": {"base_width": W, "up_mode": "upsample"},
                     "synthetic": False, "metrics": {"epoch": 7, "val_loss": 0.01}}, path)
    save_checkpoint({**torch.load(path, weights_only=True), "scans": {"train": ["a.nii.gz", "b.nii.gz"],
                                                                      "val": ["c.nii.gz"]}}, path)
    result = export_checkpoint(path, "unet3d.luna_demo", tmp_path / "out", license="Custom-Research-Only")
    meta, body = read_card(result.card)
    # Hugging Face model-card fields; a license the hub does not know becomes "other" + its name
    assert meta["library_name"] == "genesis" and meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "other" and meta["license_name"] == "Custom-Research-Only"
    assert meta["datasets"] == ["luna16"] and {"unet3d", "combined", "3d"} <= set(meta["tags"])
    # no local paths in the card: scans by name and count
    assert "/scans" not in result.card.read_text() and meta["config"]["data"]["data"] == "luna16"
    assert meta["data"]["scans"] == {"count": 3, "train": 2, "val": 1, "names": ["a.nii.gz", "b.nii.gz", "c.nii.gz"]}
    # files a user publishes get normal permissions (0666 minus the umask), not mkstemp's 0600
    umask = os.umask(0)
    os.umask(umask)
    for written in (result.weights, result.card, result.manifest):
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask
    assert result.synthetic is False and meta["data"]["synthetic"] is False and "Synthetic data" not in body
    assert meta["architecture"] == {"name": "unet3d", "args": {"base_width": W, "up_mode": "upsample"}}
    assert meta["proxy_task"] == "combined" and meta["config"]["data"]["crop"] == [32, 64, 64]
    (entry,) = read_manifest_file(result.manifest)
    assert entry.input["crop"] == [32, 64, 64] and entry.spacing is None
    fresh = create_model(entry.architecture["name"], **entry.architecture["args"])
    assert load_weights(fresh, result.weights, strict=True).ok
