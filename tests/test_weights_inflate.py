"""2D pretraining (unet2d) initialises a 3D U-Net by kernel inflation."""

from __future__ import annotations

import torch

from genesis.models import create_model
from genesis.training.checkpoint import save_checkpoint
from genesis.weights import load_weights
from genesis.weights.load import inflate_kernel


def test_inflated_conv_reproduces_the_2d_response_on_depth_constant_input():
    conv2d = torch.nn.Conv2d(2, 3, 3, padding=1)
    conv3d = torch.nn.Conv3d(2, 3, 3, padding=(0, 1, 1))  # depth padding off: interior slices
    with torch.no_grad():
        conv3d.weight.copy_(inflate_kernel(conv2d.weight, 3, transposed=False))
        conv3d.bias.copy_(conv2d.bias)
    image = torch.randn(1, 2, 8, 8)
    volume = image[:, :, None].repeat(1, 1, 3, 1, 1)
    assert torch.allclose(conv3d(volume)[:, :, 0], conv2d(image), atol=1e-5)


def test_unet2d_checkpoint_loads_into_unet3d(tmp_path):
    torch.manual_seed(0)
    source = create_model("unet2d", base_width=2)
    path = save_checkpoint({"model": source.state_dict(), "model_name": "unet2d"}, tmp_path / "slices.pt")
    target = create_model("unet3d", base_width=2)
    report = load_weights(target, path)
    assert not report.mismatched and not report.missing
    assert "down_tr64.ops.0.conv1.weight" in report.inflated and "up_tr256.up_conv.weight" in report.inflated
    w2, w3 = source.state_dict(), target.state_dict()
    assert torch.allclose(w3["down_tr64.ops.0.conv1.weight"].sum(2), w2["down_tr64.ops.0.conv1.weight"], atol=1e-6)
    assert torch.equal(w3["up_tr256.up_conv.weight"][:, :, 0], w2["up_tr256.up_conv.weight"])
    assert torch.equal(w3["down_tr64.ops.0.bn1.running_mean"], w2["down_tr64.ops.0.bn1.running_mean"])
    assert "inflated" in report.summary()
