"""Video (Kinetics) and ImageNet baselines rebuilt with torchvision's parameter names."""

from __future__ import annotations

import pytest
import torch

from genesis.errors import GenesisError
from genesis.models import count_parameters, create_model
from genesis.models.classifier import EncoderClassifier

# torchvision's published parameter counts (models with their 400 / 1000-class heads)
EXPECTED = {"r3d_18": 33_371_472, "r2plus1d_18": 31_505_325, "resnet18": 11_689_512}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in EXPECTED}


def test_parameter_counts_match_torchvision(models: dict) -> None:
    assert {name: count_parameters(m) for name, m in models.items()} == EXPECTED


def test_torchvision_parameter_names(models: dict) -> None:
    r3d, r21d, r18 = (models[n].state_dict() for n in ("r3d_18", "r2plus1d_18", "resnet18"))
    assert r3d["stem.0.weight"].shape == (64, 3, 3, 7, 7)
    assert r3d["layer1.0.conv1.0.weight"].shape == (64, 64, 3, 3, 3)
    assert r3d["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1, 1)
    assert r3d["fc.weight"].shape == (400, 512)
    assert r21d["stem.0.weight"].shape == (45, 3, 1, 7, 7)
    assert r21d["stem.3.weight"].shape == (64, 45, 3, 1, 1)
    assert r21d["layer1.0.conv1.0.0.weight"].shape == (144, 64, 1, 3, 3)  # midplanes 144
    assert r21d["layer1.0.conv1.0.3.weight"].shape == (64, 144, 3, 1, 1)
    assert "layer1.0.conv1.0.1.running_mean" in r21d and "layer4.1.conv2.1.running_var" in r21d
    assert r18["conv1.weight"].shape == (64, 3, 7, 7)
    assert r18["layer2.0.downsample.1.running_mean"].shape == (128,)
    assert r18["fc.weight"].shape == (1000, 512)
    for sd in (r3d, r21d, r18):  # normalisation statistics are not part of the checkpoint
        assert not any("input_mean" in k or "input_std" in k for k in sd)


def test_grey_input_is_repeated_to_rgb(models: dict) -> None:
    grey = torch.rand(1, 1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    net = models["resnet18"]
    rgb_net = create_model("resnet18", in_channels=3)
    rgb_net.load_state_dict(net.state_dict())
    rgb_net.eval()
    with torch.no_grad():
        assert torch.allclose(net(grey[:, :, 0]), rgb_net(grey[:, :, 0].repeat(1, 3, 1, 1)), atol=1e-5)
    assert models["r3d_18"](grey).shape == (1, 400)
    assert models["r2plus1d_18"].forward_features(grey).shape == (1, 512, 1, 2, 2)
    assert models["resnet18"](torch.rand(2, 1, 32, 32)).shape == (2, 1000)


def test_wrong_input_is_a_clear_error(models: dict) -> None:
    with pytest.raises(GenesisError, match=r"shape \(1, 2, 4, 32, 32\)"):
        models["r3d_18"](torch.rand(1, 2, 4, 32, 32))


def test_head_replacement_and_classifier_backbone(models: dict) -> None:
    clf = EncoderClassifier("r3d_18", num_classes=2, hidden=None)
    assert not any(k.startswith("backbone.fc") for k in clf.state_dict())
    result = clf.backbone.load_state_dict(models["r3d_18"].state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == ["fc.weight", "fc.bias"]
    assert clf.eval()(torch.rand(2, 1, 4, 16, 16)).shape == (2, 2)
    with pytest.raises(RuntimeError):
        clf.backbone(torch.rand(1, 1, 4, 16, 16))
    net = models["resnet18"].replace_head(1)  # last use of the fixture
    assert net.fc.weight.shape == (1, 512) and net(torch.rand(1, 1, 32, 32)).shape == (1, 1)
