"""Encoder classifier and classification head: shapes, backbone weight loading, freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genesis.models import count_parameters, create_model
from genesis.models.classifier import EncoderClassifier
from genesis.models.heads import ClassificationHead
from genesis.models.unet3d import UNet3D


def test_reference_head_layout() -> None:
    head = ClassificationHead(512, 3)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 3)]
    assert any(isinstance(m, nn.ReLU) for m in head.modules())
    probe = ClassificationHead(512, 3, hidden=None)
    assert [type(m) for m in probe.layers] == [nn.Linear]
    assert probe(torch.rand(5, 512)).shape == (5, 3)


def test_unet3d_classifier_shapes_and_pooling() -> None:
    torch.manual_seed(0)
    model = create_model("encoder_classifier", encoder="unet3d", encoder_kwargs={"base_width": 2}, num_classes=4)
    assert isinstance(model, EncoderClassifier)
    x = torch.rand(3, 1, 8, 16, 16)
    assert model(x).shape == (3, 4)
    model.eval()
    pooled = model.forward_features(x)
    assert pooled.shape == (3, model.feature_dim) and model.feature_dim == 32
    assert torch.allclose(pooled, model.backbone.forward_features(x).mean(dim=(2, 3, 4)), atol=1e-6)
    # the decoder is dropped: every parameter is used (DDP-safe), only encoder + head remain
    assert all(k.startswith(("backbone.down_tr", "head.")) for k in model.state_dict())


def test_paper_sized_classifier_head_on_512_features() -> None:
    model = EncoderClassifier("unet3d", num_classes=2)
    assert model.feature_dim == 512
    assert model.head.layers[0].in_features == 512 and model.head.layers[0].out_features == 1024
    assert count_parameters(model.head) == 512 * 1024 + 1024 + 1024 * 2 + 2


def test_backbone_loads_unet3d_encoder_weights_by_official_names() -> None:
    torch.manual_seed(1)
    pretrained = UNet3D(base_width=2)
    model = EncoderClassifier("unet3d", {"base_width": 2}, num_classes=2)
    state = pretrained.state_dict()
    assert "down_tr64.ops.0.conv1.weight" in model.backbone.state_dict()
    result = model.backbone.load_state_dict(state, strict=False)
    assert result.missing_keys == []
    assert all(k.startswith(("up_tr", "out_tr")) for k in result.unexpected_keys)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.rand(2, 1, 8, 8, 8)
    pretrained.eval(), model.eval()
    assert torch.allclose(model.backbone.forward_features(x), pretrained.forward_features(x))


def test_encoder_arguments_at_top_level() -> None:
    model = create_model("encoder_classifier", encoder="unet3d", num_classes=1, hidden=None, base_width=2)
    assert model.feature_dim == 32 and model(torch.rand(2, 1, 8, 8, 8)).shape == (2, 1)
    merged = EncoderClassifier("unet3d", {"base_width": 4, "in_channels": 2}, num_classes=2, base_width=2)
    assert merged.feature_dim == 32 and merged.backbone.in_channels == 2


def test_keep_decoder_option() -> None:
    model = EncoderClassifier("unet3d", {"base_width": 2}, num_classes=2, keep_decoder=True)
    assert "backbone.up_tr256.up_conv.weight" in model.state_dict()


@pytest.mark.parametrize(
    "encoder,kwargs,shape",
    [
        ("unet2d", {"base_width": 2}, (2, 1, 16, 16)),
        ("vqvae", {"spatial_dims": 2, "channels": (4, 8), "num_res_blocks": 1, "embedding_dim": 4}, (2, 1, 16, 16)),
        ("vqvae", {"spatial_dims": 3, "channels": (4, 8), "num_res_blocks": 1, "embedding_dim": 4}, (2, 1, 8, 8, 8)),
    ],
)
def test_other_encoders(encoder: str, kwargs: dict, shape: tuple[int, ...]) -> None:
    model = EncoderClassifier(encoder, kwargs, num_classes=3, hidden=16)
    logits = model(torch.rand(*shape))
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # no unused parameters


def test_freeze_backbone() -> None:
    torch.manual_seed(0)
    model = EncoderClassifier("unet3d", {"base_width": 2}, num_classes=2, hidden=None).freeze_backbone()
    model.train()
    assert not model.backbone.training and model.head.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    running = model.backbone.down_tr64.ops[0].bn1.running_mean.clone()
    model(torch.rand(2, 1, 8, 8, 8)).sum().backward()
    assert torch.equal(running, model.backbone.down_tr64.ops[0].bn1.running_mean)  # stats of pretraining kept
    assert all(p.grad is not None for p in model.head.parameters())
    model.freeze_backbone(False).train()
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())
