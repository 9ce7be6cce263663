"""Baselines of Ke et al.: every released-weights manifest builds, has upstream names, and loads.

torchvision is not installed, so the upstream checks are its published parameter counts and
parameter names/shapes; MedicalNet is checked against MONAI's own constructor.
"""

from __future__ import annotations

from pathlib import Path

import monai.networks.nets as monai_nets
import pytest
import torch

from genesis.errors import GenesisError
from genesis.models import count_parameters, create_model, list_models
from genesis.models.classifier import EncoderClassifier
from genesis.models.medicalnet import MedicalNetResNet
from genesis.weights import WeightsRegistry, load_weights

# torchvision's published num_params (1000-class ImageNet / 400-class Kinetics heads)
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnext101_32x8d": 88_791_336,
    "mc3_18": 11_695_440,
    "r3d_18": 33_371_472,
    "r2plus1d_18": 31_505_325,
}
MEDICALNET_MONAI = {"resnet18_3d": monai_nets.resnet18, "resnet50_3d": monai_nets.resnet50}


def _entries() -> list:
    return [e for e in WeightsRegistry.load().entries() if not getattr(e, "example", False)]


@pytest.fixture(scope="module")
def manifest_models() -> dict[str, torch.nn.Module]:
    """One model per manifest, built from the manifest's architecture section."""
    torch.manual_seed(0)
    return {e.name: create_model(e.architecture["name"], **e.architecture.get("args", {})).eval() for e in _entries()}


def _by_arch(models: dict, arch: str) -> torch.nn.Module:
    entry = next(e for e in _entries() if e.architecture["name"] == arch)
    return models[entry.name]


def test_every_manifest_architecture_is_registered() -> None:
    archs = {e.architecture["name"] for e in _entries()}
    assert archs >= {"unet3d", "r3d_18", "mc3_18", "r2plus1d_18", "resnet18", "resnet34", "resnet50",
                     "resnext101_32x8d", "resnet18_3d", "resnet50_3d"}
    assert archs <= set(list_models())


def test_parameter_counts_match_torchvision(manifest_models: dict) -> None:
    counts = {arch: count_parameters(_by_arch(manifest_models, arch)) for arch in TORCHVISION_PARAMS}
    assert counts == TORCHVISION_PARAMS


def test_torchvision_parameter_names_and_shapes(manifest_models: dict) -> None:
    r34, r50, rx101, mc3 = (_by_arch(manifest_models, a).state_dict()
                            for a in ("resnet34", "resnet50", "resnext101_32x8d", "mc3_18"))
    assert r34["layer3.5.conv2.weight"].shape == (256, 256, 3, 3)  # 6 blocks in stage 3
    assert r34["layer4.0.downsample.0.weight"].shape == (512, 256, 1, 1)
    assert "layer1.0.downsample.0.weight" not in r34 and r34["fc.weight"].shape == (1000, 512)
    assert r50["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert r50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert r50["layer4.2.bn3.running_var"].shape == (2048,) and r50["fc.weight"].shape == (1000, 2048)
    # ResNeXt 32x8d: 32 groups of 8 channels per 64 -> stage widths 256, 512, 1024, 2048
    assert rx101["layer1.0.conv1.weight"].shape == (256, 64, 1, 1)
    assert rx101["layer1.0.conv2.weight"].shape == (256, 8, 3, 3)
    assert rx101["layer3.22.conv2.weight"].shape == (1024, 32, 3, 3)  # 23 blocks in stage 3
    assert rx101["layer4.0.conv3.weight"].shape == (2048, 2048, 1, 1)
    # MC3: 3x3x3 first stage, 1x3x3 later stages and shortcuts that keep time
    assert mc3["stem.0.weight"].shape == (64, 3, 3, 7, 7)
    assert mc3["layer1.0.conv1.0.weight"].shape == (64, 64, 3, 3, 3)
    assert mc3["layer2.0.conv1.0.weight"].shape == (128, 64, 1, 3, 3)
    assert mc3["layer4.1.conv2.0.weight"].shape == (512, 512, 1, 3, 3)
    assert mc3["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1, 1) and mc3["fc.weight"].shape == (400, 512)
    for sd in (r34, r50, rx101, mc3):
        assert not any("input_mean" in k or "input_std" in k for k in sd)


def test_medicalnet_matches_monai_with_medicalnet_arguments(manifest_models: dict) -> None:
    for arch, monai_builder in MEDICALNET_MONAI.items():
        ours = _by_arch(manifest_models, arch).state_dict()
        depth = int(arch[len("resnet"):-len("_3d")])
        bias_downsample, shortcut_type = monai_nets.resnet.get_medicalnet_pretrained_resnet_args(depth)
        ref = monai_builder(spatial_dims=3, n_input_channels=1, shortcut_type=shortcut_type,
                            bias_downsample=bias_downsample, feed_forward=False).state_dict()
        assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    r18, r50 = (_by_arch(manifest_models, a).state_dict() for a in ("resnet18_3d", "resnet50_3d"))
    assert r18["conv1.weight"].shape == (64, 1, 7, 7, 7)
    assert not any("downsample" in k or k.startswith("fc.") for k in r18)  # shortcut "A", no head
    assert r50["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1, 1)
    assert "layer1.0.downsample.0.bias" not in r50  # bias_downsample False


def _write_upstream_file(entry, model: torch.nn.Module, directory: Path) -> tuple[Path, str]:
    """The model's weights in the layout the release uses; one tensor changed to see it load."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # a 1-D tensor (batch-norm scale), unchanged by the official release's axis conversion
    probe = next(k for k, v in state.items() if v.dim() == 1 and v.is_floating_point() and k.endswith("weight"))
    state[probe] = state[probe] + 1.0
    if entry.format in ("medicalnet", "official-genesis-pt"):  # DataParallel dumps
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:  # torchvision: a plain state dict (the Keras release is covered by test_weights_convert)
        obj = state
    path = directory / f"{entry.name}.pth"
    torch.save(obj, path)
    return path, probe


def test_each_manifest_loads_a_state_dict_with_nothing_missing(manifest_models: dict, tmp_path: Path) -> None:
    for entry in _entries():
        model = manifest_models[entry.name]
        path, probe = _write_upstream_file(entry, model, tmp_path)
        expected = model.state_dict()[probe] + 1.0
        report = load_weights(model, path)
        assert report.ok, (entry.name, report.summary())
        assert report.missing == [] and report.target == "model"
        assert torch.equal(model.state_dict()[probe], expected), entry.name
        path.unlink()


def test_tiny_forward_of_every_baseline(manifest_models: dict) -> None:
    g = torch.Generator().manual_seed(0)
    window = torch.rand(1, 1, 8, 32, 32, generator=g)
    with torch.no_grad():
        assert _by_arch(manifest_models, "mc3_18")(window).shape == (1, 400)
        assert _by_arch(manifest_models, "mc3_18").forward_features(window).shape == (1, 512, 8, 2, 2)  # time kept
        for arch, dim in (("resnet18_3d", 512), ("resnet50_3d", 2048)):
            net = _by_arch(manifest_models, arch)
            assert net.feature_dim == dim and net(window).shape == (1, dim)  # no head: pooled features
            assert net.forward_features(window).shape == (1, dim, 1, 1, 1)
        for arch, dim in (("resnet34", 512), ("resnet50", 2048), ("resnext101_32x8d", 2048)):
            net = _by_arch(manifest_models, arch)
            assert net.feature_dim == dim
            assert net(window[:, :, :2]).shape == (1, 1000)  # a window of 2 slices
        assert _by_arch(manifest_models, "resnet34").forward_features(window[:, :, :2]).shape == (1, 512, 2, 1, 1)


def test_2d_network_on_a_window_equals_slice_by_slice() -> None:
    torch.manual_seed(1)
    net = create_model("resnet18", num_classes=3).eval()
    window = torch.rand(2, 1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        feats = net.forward_features(window)
        per_slice = torch.stack([net.forward_features(window[:, :, k]) for k in range(3)], dim=2)
        assert feats.shape == (2, 512, 3, 1, 1) and torch.allclose(feats, per_slice, atol=1e-5)
        logits = net.slice_logits(window)
        assert logits.shape == (2, 3, 3)
        assert torch.allclose(logits[:, 1], net(window[:, :, 1]), atol=1e-5)
        # a window's logit is the max of its slice logits (Ke et al.), or their mean
        assert torch.allclose(net(window), logits.amax(1), atol=1e-5)
        assert torch.allclose(net.set_input_mode(slice_aggregate="mean")(window), logits.mean(1), atol=1e-5)


def test_heads_classifier_backbones_and_input_errors() -> None:
    torch.manual_seed(3)
    x = torch.rand(2, 1, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    med = create_model("resnet18_3d").replace_head(1).eval()
    assert med.fc.weight.shape == (1, 512) and med(x).shape == (2, 1)
    assert create_model("resnet18_3d", num_classes=2).fc.weight.shape == (2, 512)
    for name in ("resnet18", "resnet18_3d"):
        clf = EncoderClassifier(name, num_classes=2, hidden=None).eval()
        assert not any(k.startswith("backbone.fc") for k in clf.state_dict())
        assert clf(x).shape == (2, 2)
    with pytest.raises(GenesisError, match=r"shape \(1, 2, 4, 32, 32\)"):
        create_model("resnet18")(torch.rand(1, 2, 4, 32, 32))
    with pytest.raises(GenesisError, match=r"shape \(1, 3, 4, 32, 32\)"):
        med(torch.rand(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match="depth"):
        MedicalNetResNet(depth=19)


def test_lrcn_runs_a_gru_over_slice_features_and_loads_imagenet_weights(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = create_model("lrcn", backbone="resnet18", hidden_size=16, num_classes=1).eval()
    x = torch.rand(2, 1, 5, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert model(x).shape == (2, 1) and model.feature_dim == 16
        outputs, _ = model.sequence_features(x)
        assert outputs.shape == (2, 5, 16)
        assert torch.allclose(model.forward_features(x), outputs[:, -1], atol=1e-6)  # last state
    assert model.replace_head(3)(x).shape == (2, 3)

    bi = create_model("lrcn", backbone="resnet18", hidden_size=8, bidirectional=True, num_layers=2).eval()
    with torch.no_grad():
        out, _ = bi.sequence_features(x)  # forward direction ends at the last slice, backward at the first
        assert torch.allclose(bi.forward_features(x), torch.cat([out[:, -1, :8], out[:, 0, 8:]], 1), atol=1e-6)
        bi.pool = "mean"
        assert torch.allclose(bi.forward_features(x), out.mean(1), atol=1e-6)
        bi.pool = "max"
        assert torch.allclose(bi.forward_features(x), out.amax(1), atol=1e-6)

    imagenet = create_model("resnet18")  # the torchvision checkpoint layout, with its 1000-class head
    torch.save(imagenet.state_dict(), tmp_path / "resnet18-imagenet.pth")
    report = load_weights(model, tmp_path / "resnet18-imagenet.pth")
    assert report.target == "model.backbone" and report.ok, report.summary()
    assert torch.equal(model.backbone.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    assert not hasattr(model.backbone, "fc") or model.backbone.fc is None

    with pytest.raises(ValueError, match="2D backbone"):
        create_model("lrcn", backbone="r3d_18")
    with pytest.raises(GenesisError, match="window"):
        model(torch.rand(2, 1, 32, 32))


def test_default_lrcn_is_resnext101_with_a_gru() -> None:
    model = create_model("lrcn")
    assert model.backbone_name == "resnext101_32x8d"
    head = 1000 * 2048 + 1000
    assert count_parameters(model.backbone) == TORCHVISION_PARAMS["resnext101_32x8d"] - head
    assert model.gru.input_size == 2048 and model.fc.weight.shape == (1, 512)
