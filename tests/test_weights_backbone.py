"""Encoder weights move between a saved classifier (backbone.*) and plain U-Nets or other classifiers."""

from __future__ import annotations

import torch

from genesis.models import create_model
from genesis.training.checkpoint import save_checkpoint
from genesis.weights import load_weights


def _classifier(seed: int):
    torch.manual_seed(seed)
    return create_model("encoder_classifier", encoder="unet3d", num_classes=4, hidden=8, base_width=2)


def test_classifier_encoder_loads_into_plain_unet_and_other_classifier(tmp_path):
    source = _classifier(0)
    path = save_checkpoint({"model": source.state_dict()}, tmp_path / "rotation.pt")
    weight = source.backbone.state_dict()["down_tr64.ops.0.conv1.weight"]

    unet = create_model("unet3d", base_width=2)
    report = load_weights(unet, path, part="encoder")
    assert torch.equal(unet.state_dict()["down_tr64.ops.0.conv1.weight"], weight)
    assert report.loaded and not report.mismatched
    assert all(k.startswith("down_tr") for k in report.loaded)

    other = _classifier(1)
    report = load_weights(other, path, part="encoder")
    assert report.target == "model.backbone"
    assert torch.equal(other.backbone.state_dict()["down_tr64.ops.0.conv1.weight"], weight)
    # the head is not transferred with part="encoder"
    head_key = next(k for k in other.state_dict() if not k.startswith("backbone."))
    assert not torch.equal(other.state_dict()[head_key], source.state_dict()[head_key])

    full = _classifier(2)
    load_weights(full, path, part="full")
    assert all(torch.equal(full.state_dict()[k], v) for k, v in source.state_dict().items())
