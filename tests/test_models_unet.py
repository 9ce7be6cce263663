"""Models Genesis U-Net (3D and 2D): shapes, parameter counts, official names, batch-norm modes."""

from __future__ import annotations

import pytest
import torch

from genesis.errors import GenesisError
from genesis.models import count_parameters, create_model, list_models
from genesis.models.unet2d import UNet2D
from genesis.models.unet3d import UNet3D

OFFICIAL_KEYS = [
    "down_tr64.ops.0.conv1.weight",
    "down_tr64.ops.0.conv1.bias",
    "down_tr64.ops.0.bn1.weight",
    "down_tr64.ops.0.bn1.running_mean",
    "down_tr64.ops.0.bn1.running_var",
    "down_tr64.ops.1.conv1.weight",
    "down_tr128.ops.1.bn1.bias",
    "down_tr256.ops.0.conv1.weight",
    "down_tr512.ops.1.conv1.weight",
    "up_tr256.up_conv.weight",
    "up_tr256.up_conv.bias",
    "up_tr256.ops.0.conv1.weight",
    "up_tr128.ops.1.bn1.running_var",
    "up_tr64.ops.1.conv1.weight",
    "out_tr.final_conv.weight",
    "out_tr.final_conv.bias",
]


def test_registered() -> None:
    assert {"unet3d", "unet2d"} <= set(list_models())
    assert isinstance(create_model("unet3d", base_width=2), UNet3D)
    assert isinstance(create_model("unet2d", base_width=2), UNet2D)


def test_parameter_counts_match_the_releases() -> None:
    # Zhou et al. 2021: 19.07M (PyTorch, transposed convs), 16.32M (Keras, UpSampling3D).
    assert count_parameters(UNet3D()) == 19_073_665
    assert round(count_parameters(UNet3D(up_mode="upsample")) / 1e6, 2) == 16.32


def test_official_parameter_names_and_shapes() -> None:
    sd = UNet3D().state_dict()
    for key in OFFICIAL_KEYS:
        assert key in sd, key
    assert sd["down_tr64.ops.0.conv1.weight"].shape == (32, 1, 3, 3, 3)
    assert sd["down_tr64.ops.1.conv1.weight"].shape == (64, 32, 3, 3, 3)
    assert sd["down_tr512.ops.1.conv1.weight"].shape == (512, 256, 3, 3, 3)
    assert sd["up_tr256.up_conv.weight"].shape == (512, 512, 2, 2, 2)
    assert sd["up_tr256.ops.0.conv1.weight"].shape == (256, 768, 3, 3, 3)
    assert sd["up_tr128.ops.0.conv1.weight"].shape == (128, 384, 3, 3, 3)
    assert sd["up_tr64.ops.0.conv1.weight"].shape == (64, 192, 3, 3, 3)
    assert sd["out_tr.final_conv.weight"].shape == (1, 64, 1, 1, 1)
    assert not any(k.startswith("up_tr256.up_conv") for k in UNet3D(up_mode="upsample", base_width=2).state_dict())


def test_state_dict_round_trip_with_module_prefix_stripped() -> None:
    a, b = UNet3D(base_width=2), UNet3D(base_width=2)
    saved = {f"module.{k}": v for k, v in a.state_dict().items()}  # DataParallel-style release
    b.load_state_dict({k.removeprefix("module."): v for k, v in saved.items()}, strict=True)
    x = torch.rand(1, 1, 8, 8, 8)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("up_mode", ["transpose", "upsample"])
def test_shapes_3d(up_mode: str) -> None:
    torch.manual_seed(0)
    net = UNet3D(in_channels=1, out_channels=3, base_width=2, up_mode=up_mode)
    x = torch.rand(2, 1, 8, 16, 24)
    assert net(x).shape == (2, 3, 8, 16, 24)
    feats = net.encode(x)
    assert [f.shape[1] for f in feats] == [4, 8, 16, 32]
    assert [tuple(f.shape[2:]) for f in feats] == [(8, 16, 24), (4, 8, 12), (2, 4, 6), (1, 2, 3)]
    assert net.forward_features(x).shape == (2, net.feature_dim, 1, 2, 3)
    assert net.feature_dim == 32
    assert torch.allclose(net.decode(feats), net(x))


def test_shapes_2d() -> None:
    net = UNet2D(base_width=2, out_channels=2)
    x = torch.rand(3, 1, 16, 8)
    assert net(x).shape == (3, 2, 16, 8)
    assert net.forward_features(x).shape == (3, 32, 2, 1)
    assert "down_tr64.ops.0.conv1.weight" in net.state_dict()
    assert net.state_dict()["down_tr64.ops.0.conv1.weight"].shape == (2, 1, 3, 3)


def test_output_is_logits_not_sigmoid() -> None:
    torch.manual_seed(1)
    net = UNet3D(base_width=2)
    with torch.no_grad():
        net.out_tr.final_conv.bias.fill_(5.0)
        out = net.eval()(torch.rand(1, 1, 8, 8, 8))
    assert out.max() > 1.0  # a sigmoid output could not exceed 1


@pytest.mark.parametrize("shape", [(1, 1, 10, 16, 16), (1, 1, 16, 16), (1, 2, 8, 8, 8)])
def test_bad_input_shape_is_a_clear_error(shape: tuple[int, ...]) -> None:
    net = UNet3D(base_width=2)
    with pytest.raises(ValueError, match=r"shape \(") as info:
        net(torch.rand(*shape))
    assert isinstance(info.value, GenesisError)
    assert str(tuple(shape)) in str(info.value)


def _trained_bn_net(**kw: object) -> UNet3D:
    torch.manual_seed(0)
    net = UNet3D(base_width=2, **kw)  # type: ignore[arg-type]
    net.train()
    with torch.no_grad():
        for _ in range(3):  # move the running stats away from (0, 1)
            net(torch.rand(4, 1, 8, 8, 8) * 3 + 1)
    return net.eval()


def test_eval_batch_norm_uses_running_stats() -> None:
    net = _trained_bn_net()
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(1, 1, 8, 8, 8, generator=g), torch.rand(3, 1, 8, 8, 8, generator=g) * 5
    running = net.down_tr64.ops[0].bn1.running_mean.clone()
    with torch.no_grad():
        alone = net(a)
        in_batch = net(torch.cat([a, b]))[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)  # independent of the batch composition
    assert torch.equal(running, net.down_tr64.ops[0].bn1.running_mean)


def test_compat_flag_reproduces_batch_statistics_in_eval() -> None:
    net = _trained_bn_net(bn_batch_stats_in_eval=True)
    g = torch.Generator().manual_seed(2)
    # 16^3 so that a batch of one still has several bottom voxels to take statistics over
    a, b = torch.rand(1, 1, 16, 16, 16, generator=g), torch.rand(3, 1, 16, 16, 16, generator=g) * 5
    running = net.down_tr64.ops[0].bn1.running_mean.clone()
    with torch.no_grad():
        alone = net(a)
        in_batch = net(torch.cat([a, b]))[:1]
        net.train()
        train_mode = net(torch.cat([a, b]))[:1]
    assert not torch.allclose(alone, in_batch, atol=1e-3)  # depends on the other samples
    assert torch.allclose(in_batch, train_mode, atol=1e-5)  # same normalisation as in training
    assert torch.equal(running, net.down_tr64.ops[0].bn1.running_mean) is False  # training updated them
    net.eval()
    running = net.down_tr64.ops[0].bn1.running_mean.clone()
    with torch.no_grad():
        net(a)
    assert torch.equal(running, net.down_tr64.ops[0].bn1.running_mean)  # eval never updates them
    net.bn_batch_stats_in_eval = False  # switchable after loading weights
    assert not net.bn_batch_stats_in_eval
    with torch.no_grad():
        assert torch.allclose(net(a), net(torch.cat([a, b]))[:1], atol=1e-5)


def test_replace_output_and_encoder_only() -> None:
    net = UNet3D(base_width=2)
    enc_before = {k: v.clone() for k, v in net.state_dict().items() if k.startswith(net.encoder_state_prefixes)}
    net.replace_output(4)
    assert net(torch.rand(2, 1, 8, 8, 8)).shape == (2, 4, 8, 8, 8)
    assert net.state_dict()["out_tr.final_conv.weight"].shape == (4, 4, 1, 1, 1)
    net.encoder_only()
    sd = net.state_dict()
    assert set(sd) == set(enc_before)
    assert net.encoder_state_prefixes == ("down_tr64", "down_tr128", "down_tr256", "down_tr512")
    assert net.eval().forward_features(torch.rand(1, 1, 8, 8, 8)).shape == (1, 32, 1, 1, 1)
    with pytest.raises(RuntimeError):
        net(torch.rand(1, 1, 8, 8, 8))


def test_gradients_reach_the_first_layer() -> None:
    net = UNet3D(base_width=2)
    net(torch.rand(2, 1, 8, 8, 8)).mean().backward()
    grad = net.down_tr64.ops[0].conv1.weight.grad
    assert grad is not None and grad.abs().sum() > 0
