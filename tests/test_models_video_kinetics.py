"""Kinetics-pretrained video baselines of Ke et al. (torchvision / PyTorchVideo layouts) and PENet.

Neither torchvision's video models nor pytorchvideo import here, so the upstream checks are (1) the
published parameter counts (torchvision's ``num_params``; the PyTorchVideo model zoo's counts, given
there to 0.01 M), (2) a compact layout fixture ``tests/data/video_layouts.json``: the number of
state-dict tensors and a sample of parameter names with their shapes, written from the published
architecture code (torchvision ``models/video/{s3d,swin_transformer,mvit}.py``, pytorchvideo
``models/{resnet,r2plus1d,csn,slowfast}.py``, marshuang80/penet ``models/penet_classifier.py``),
and (3) a checkpoint saved in each release's container format (plain state dict, PyTorchVideo's
``{"model_state": ...}``, PENet's ``{"model_state": {"module.": ...}}``) that loads strictly
through a ``file://`` manifest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from genesis.models import count_parameters, create_model
from genesis.weights import load_weights
from genesis.weights.download import sha256_file

LAYOUTS = json.loads((Path(__file__).parent / "data" / "video_layouts.json").read_text())
TORCHVISION_PARAMS = {"s3d": 8_320_048, "swin3d_t": 28_158_070, "mvit_v2_s": 34_537_744}
PTV_ZOO_MILLIONS = {"slow_r50": 32.45, "slowfast_r50": 34.57, "r2plus1d_r50": 28.11, "csn_r101": 22.21}
# (slices, side) of the tiny CPU inputs: SlowFast needs slices divisible by 4, S3D at least 8
TINY = {"slowfast_r50": (8, 32), "s3d": (8, 32)}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: create_model(name) for name in LAYOUTS}


def test_published_parameter_counts(models: dict) -> None:
    counts = {name: count_parameters(m) for name, m in models.items()}
    assert {n: counts[n] for n in TORCHVISION_PARAMS} == TORCHVISION_PARAMS
    assert {n: round(counts[n] / 1e6, 2) for n in PTV_ZOO_MILLIONS} == PTV_ZOO_MILLIONS


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_published_names_and_shapes(models: dict, name: str) -> None:
    state = models[name].state_dict()
    layout = LAYOUTS[name]
    assert len(state) == layout["n_tensors"]
    assert {k: list(state[k].shape) for k in layout["samples"] if k in state} == layout["samples"]
    assert not any("input_mean" in k or "input_std" in k for k in state)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_forward_backward_on_a_grey_window(models: dict, name: str) -> None:
    net = models[name].train()
    slices, side = TINY.get(name, (4, 32))
    x = torch.rand(2, 1, slices, side, side, generator=torch.Generator().manual_seed(1))
    logits = net(x)
    assert logits.shape == (2, int(LAYOUTS[name]["samples"][net.head_path + ".weight"][0]))
    logits.float().pow(2).mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads[:3] + grads[-2:])
    net.zero_grad(set_to_none=True)


def _register(tmp_path: Path, monkeypatch, name: str, arch: str, obj: object, fmt: str) -> None:
    path = tmp_path / f"{name}.bin"
    torch.save(obj, path)
    entry = {"name": name, "urls": [path.as_uri()], "sha256": sha256_file(path), "format": fmt,
             "architecture": {"name": arch, "args": {}}}
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(yaml.safe_dump(entry))
    monkeypatch.setenv("GENESIS_WEIGHTS_REGISTRY", str(manifest))
    monkeypatch.setenv("GENESIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENESIS_OFFLINE", raising=False)


@pytest.mark.parametrize("container", ["plain", "pytorchvideo"])
def test_release_containers_load_strictly_through_the_registry(tmp_path, monkeypatch, models, container):
    """A plain torchvision state dict, and PyTorchVideo's / PENet's ``{"model_state": ...}`` with a
    DataParallel ``module.`` prefix, load strictly by registered name (S3D: the smallest file)."""
    source = models["s3d"].state_dict()
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in source.items()}
    obj = state if container == "plain" else {"model_state": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    _register(tmp_path, monkeypatch, "s3d.test_release", "s3d", obj, "torchvision" if container == "plain" else container)
    target = create_model("s3d")
    report = load_weights(target, "s3d.test_release", strict=True)
    assert report.ok and len(report.loaded) == len(state)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in state.items())


def test_head_replacement_keeps_the_published_encoder(models: dict) -> None:
    net = models["slow_r50"]  # last use of this fixture model
    encoder = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("blocks.5")}
    net.replace_head(1)
    assert net.blocks[5].proj.weight.shape == (1, 2048)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in encoder.items())
    net.encoder_only()
    assert not any(k.startswith("blocks.5") for k in net.state_dict())
    with pytest.raises(RuntimeError, match="encoder-only"):
        net(torch.rand(1, 1, 4, 32, 32))
    mvit = models["mvit_v2_s"].eval()
    x = torch.rand(1, 1, 4, 32, 32)
    with torch.no_grad():  # the published classifier reads the normalised class token
        tokens, _ = mvit.tokens(x)
        assert torch.allclose(mvit(x), mvit.head(tokens[:, 0]), atol=1e-5)
