"""The official Models Genesis releases load into our UNet3D and compute the same function.

The official networks were trained on (x, y, z) arrays; ours are (z, y, x). The reference
networks below are written in the test from the structure of the official code
(MrGiovanni/ModelsGenesis pytorch/unet3d.py and keras/unet3d.py) and keep its axis order, so
``ours(v.T) == official(v).T`` proves the conversion.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genesis.errors import CheckpointError
from genesis.models import create_model
from genesis.weights import load_weights

W = 2  # base width: tiny networks, the converter does not care
OFFICIAL_SHAPE = (2, 1, 16, 24, 8)  # (B, C, x, y, z): distinct sides catch any axis mix-up


def to_ours(t: torch.Tensor) -> torch.Tensor:
    """(B, C, x, y, z) <-> (B, C, z, y, x)."""
    return t.permute(0, 1, 4, 3, 2)


# --------------------------------------------------------------- official PyTorch reference
class _ContBN(nn.BatchNorm3d):
    """The reference batch norm: batch statistics even in eval mode (``batch_stats=True``)."""

    batch_stats = False

    def forward(self, x):
        if self.batch_stats:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


class _LUConv(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, kernel_size=3, padding=1)
        self.bn1 = _ContBN(cout)

    def forward(self, x):
        return F.relu(self.bn1(self.conv1(x)))


class _Down(nn.Module):
    def __init__(self, cin, depth, w):
        super().__init__()
        self.ops = nn.Sequential(_LUConv(cin, w * 2**depth), _LUConv(w * 2**depth, w * 2**depth * 2))
        self.depth = depth

    def forward(self, x):
        out = self.ops(x)
        return (out if self.depth == 3 else F.max_pool3d(out, 2)), out


class _Up(nn.Module):
    def __init__(self, cin, depth, w):
        super().__init__()
        self.up_conv = nn.ConvTranspose3d(cin, cin, kernel_size=2, stride=2)
        self.ops = nn.Sequential(_LUConv(cin + cin // 2, w * 2 ** (depth + 1)), _LUConv(w * 2 ** (depth + 1), w * 2 ** (depth + 1)))

    def forward(self, x, skip):
        return self.ops(torch.cat((self.up_conv(x), skip), 1))


class _Out(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.final_conv = nn.Conv3d(cin, 1, kernel_size=1)

    def forward(self, x):
        return torch.sigmoid(self.final_conv(x))


class OfficialUNet3D(nn.Module):
    """Structure and parameter names of the official release, (x, y, z) layout."""

    def __init__(self, w):
        super().__init__()
        self.down_tr64, self.down_tr128 = _Down(1, 0, w), _Down(2 * w, 1, w)
        self.down_tr256, self.down_tr512 = _Down(4 * w, 2, w), _Down(8 * w, 3, w)
        self.up_tr256, self.up_tr128, self.up_tr64 = _Up(16 * w, 2, w), _Up(8 * w, 1, w), _Up(4 * w, 0, w)
        self.out_tr = _Out(2 * w)

    def forward(self, x):
        x, s64 = self.down_tr64(x)
        x, s128 = self.down_tr128(x)
        x, s256 = self.down_tr256(x)
        x, _ = self.down_tr512(x)
        return self.out_tr(self.up_tr64(self.up_tr128(self.up_tr256(x, s256), s128), s64))


def _randomise_bn(model: nn.Module, g: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            n = m.num_features
            m.weight.data = 1 + 0.2 * torch.randn(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean.data = 0.1 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)


@pytest.fixture(scope="module")
def official():
    torch.manual_seed(0)  # test-only: parameter init of the reference network
    model = OfficialUNet3D(W)
    _randomise_bn(model, torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture(scope="module")
def official_file(official, tmp_path_factory):
    path = tmp_path_factory.mktemp("official") / "Genesis_Chest_CT.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in official.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def volume():
    return torch.rand(OFFICIAL_SHAPE, generator=torch.Generator().manual_seed(2))


def test_official_pt_gives_the_same_function_on_our_layout(official, official_file, volume):
    ours = create_model("unet3d", base_width=W, up_mode="transpose").eval()
    report = load_weights(ours, official_file, strict=True)
    assert report.ok and "official" in report.converted
    assert len(report.loaded) == len(official.state_dict())
    with torch.no_grad():
        expected = to_ours(official(volume))
        got = torch.sigmoid(ours(to_ours(volume)))
    assert got.shape == expected.shape == (2, 1, 8, 24, 16)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # Without the axis conversion the function differs: the test can see a wrong layout.
    plain = create_model("unet3d", base_width=W).eval()
    load_weights(plain, official_file, layout="zyx", strict=True)
    with torch.no_grad():
        assert (torch.sigmoid(plain(to_ours(volume))) - expected).abs().max() > 1e-3


def test_official_batch_statistics_mode_matches_too(official, official_file, volume):
    ours = create_model("unet3d", base_width=W, bn_batch_stats_in_eval=True).eval()
    load_weights(ours, official_file, strict=True)
    for m in official.modules():
        if isinstance(m, _ContBN):
            m.batch_stats = True
    try:
        with torch.no_grad():
            expected = to_ours(official(volume))
            got = torch.sigmoid(ours(to_ours(volume)))
    finally:
        for m in official.modules():
            if isinstance(m, _ContBN):
                m.batch_stats = False
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_encoder_part_and_backbone(official, official_file):
    ours = create_model("unet3d", base_width=W)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    report = load_weights(ours, official_file, part="encoder")
    assert report.loaded and all(k.startswith(("down_tr64", "down_tr128", "down_tr256", "down_tr512")) for k in report.loaded)
    assert not report.missing
    after = ours.state_dict()
    assert torch.equal(after["up_tr64.ops.0.conv1.weight"], before["up_tr64.ops.0.conv1.weight"])
    assert torch.equal(after["down_tr512.ops.1.conv1.weight"],
                       official.state_dict()["down_tr512.ops.1.conv1.weight"].permute(0, 1, 4, 3, 2))

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = create_model("unet3d", base_width=W).encoder_only()
            self.head = nn.Linear(16 * W, 2)

    clf = Classifier()
    report = load_weights(clf, official_file)
    assert report.target == "model.backbone" and not report.missing and not report.unexpected
    assert torch.equal(clf.backbone.down_tr64.ops[0].conv1.weight,
                       official.state_dict()["down_tr64.ops.0.conv1.weight"].permute(0, 1, 4, 3, 2))


def test_shape_mismatch_is_reported_not_raised(official_file):
    wider = create_model("unet3d", base_width=W + 2)
    before = wider.down_tr64.ops[0].conv1.weight.detach().clone()
    report = load_weights(wider, official_file)
    shapes = {name: (src, dst) for name, src, dst in report.mismatched}
    assert shapes["down_tr64.ops.0.conv1.weight"] == ((W, 1, 3, 3, 3), (W + 2, 1, 3, 3, 3))
    assert "down_tr64.ops.0.conv1.weight" in report.missing
    assert torch.equal(wider.down_tr64.ops[0].conv1.weight, before)  # left as it was
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(wider, official_file, strict=True)


class _Pickled:  # a custom class: loading it would need arbitrary code
    def __init__(self):
        self.w = torch.ones(2)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _Pickled()}, path)
    with pytest.raises(CheckpointError, match="unsafe"):
        load_weights(create_model("unet3d", base_width=W), path)


# ----------------------------------------------------------------------- Keras reference
def _keras_conv(x: torch.Tensor, kernel: np.ndarray, bias: np.ndarray) -> torch.Tensor:
    """Keras Conv3D, channels_first, padding 'same', written from its definition:
    out[o, p] = b[o] + sum_{i,j,k,c} K[i, j, k, c, o] * x[c, p + (i, j, k) - centre]."""
    k = torch.from_numpy(kernel)
    r = kernel.shape[0] // 2
    xp = F.pad(x, (r, r, r, r, r, r))
    X, Y, Z = x.shape[2:]
    out = torch.zeros(x.shape[0], kernel.shape[4], X, Y, Z)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            for l in range(kernel.shape[2]):
                out += torch.einsum("bcxyz,co->boxyz", xp[:, :, i:i + X, j:j + Y, l:l + Z], k[i, j, l])
    return out + torch.from_numpy(bias).view(1, -1, 1, 1, 1)


def _keras_bn(x, layer, eps=1e-3):
    shape = (1, -1, 1, 1, 1)
    t = {k: torch.from_numpy(v).view(shape) for k, v in layer.items()}
    return t["gamma"] * (x - t["moving_mean"]) / torch.sqrt(t["moving_variance"] + eps) + t["beta"]


def _keras_deconv(x: torch.Tensor, kernel: np.ndarray, bias: np.ndarray) -> torch.Tensor:
    """Keras Conv3DTranspose, kernel 2, stride 2, channels_first; kernel stored (k1, k2, k3, out, in):
    out[o, 2p + (i, j, k)] = b[o] + sum_c K[i, j, k, o, c] * x[c, p]."""
    b, _, X, Y, Z = x.shape
    out = torch.einsum("bcxyz,ijkoc->boxiyjzk", x, torch.from_numpy(kernel))
    return out.reshape(b, kernel.shape[3], 2 * X, 2 * Y, 2 * Z) + torch.from_numpy(bias).view(1, -1, 1, 1, 1)


def _keras_reference(x: torch.Tensor, layers: dict[str, dict[str, np.ndarray]]) -> torch.Tensor:
    """unet_model_3d(depth=4, batch_normalization=True) on (x, y, z); deconvolution when the
    layers hold ``conv3d_transpose_<n>``."""
    def block(t, i):
        conv = layers[f"depth_{i}_conv"]
        return F.relu(_keras_bn(_keras_conv(t, conv["kernel"], conv["bias"]), layers[f"depth_{i}_bn"]))

    skips, unit, cur = [], 0, x
    for level in range(4):
        l1 = block(cur, unit)
        l2 = block(l1, unit + 1)
        unit += 2
        skips.append(l2)
        cur = F.max_pool3d(l2, 2) if level < 3 else l2
    for n, level in enumerate((2, 1, 0), start=1):
        deconv = layers.get(f"conv3d_transpose_{n}")
        if deconv is not None:
            up = _keras_deconv(cur, deconv["kernel"], deconv["bias"])
        else:  # UpSampling3D: nearest neighbour
            up = cur.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
        cur = block(block(torch.cat([up, skips[level]], 1), unit), unit + 1)
        unit += 2
    final = layers["conv3d_15"]
    return torch.sigmoid(_keras_conv(cur, final["kernel"], final["bias"]))


def _keras_layers(w: int, rng: np.random.Generator, deconvolution: bool = False) -> dict[str, dict[str, np.ndarray]]:
    widths = [(1, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w), (4 * w, 8 * w), (8 * w, 8 * w),
              (8 * w, 16 * w), (24 * w, 8 * w), (8 * w, 8 * w), (12 * w, 4 * w), (4 * w, 4 * w), (6 * w, 2 * w),
              (2 * w, 2 * w)]
    layers = {}
    for i, (cin, cout) in enumerate(widths):
        layers[f"depth_{i}_conv"] = {
            "kernel": (rng.standard_normal((3, 3, 3, cin, cout)) / np.sqrt(27 * cin)).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(cout)).astype(np.float32),
        }
        layers[f"depth_{i}_bn"] = {
            "gamma": (1 + 0.2 * rng.standard_normal(cout)).astype(np.float32),
            "beta": (0.1 * rng.standard_normal(cout)).astype(np.float32),
            "moving_mean": (0.1 * rng.standard_normal(cout)).astype(np.float32),
            "moving_variance": (0.5 + rng.random(cout)).astype(np.float32),
        }
    if deconvolution:  # Deconvolution3D(filters=channels of its input): (2, 2, 2, out, in)
        for n, c in enumerate((16 * w, 8 * w, 4 * w), start=1):
            layers[f"conv3d_transpose_{n}"] = {
                "kernel": (rng.standard_normal((2, 2, 2, c, c)) / np.sqrt(8 * c)).astype(np.float32),
                "bias": (0.1 * rng.standard_normal(c)).astype(np.float32),
            }
    layers["conv3d_15"] = {
        "kernel": rng.standard_normal((1, 1, 1, 2 * w, 1)).astype(np.float32),
        "bias": np.array([0.05], np.float32),
    }
    return layers


def _write_keras_h5(path, layers, full_model: bool) -> None:
    """The HDF5 layout Keras 2 writes (``model.save`` nests it under ``model_weights``)."""
    order = ["input_1"]
    for i in range(14):
        if i in (8, 10, 12):  # each decoder level starts with its up-convolution and the concatenation
            n = (i - 6) // 2
            order += [f"conv3d_transpose_{n}" if f"conv3d_transpose_{n}" in layers else f"up_sampling3d_{n}",
                      f"concatenate_{n}"]
        order += [f"depth_{i}_conv", f"depth_{i}_bn", f"depth_{i}_relu"]
    order += ["conv3d_15", "activation_1"]
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if full_model else f
        root.attrs["layer_names"] = np.array([n.encode() for n in order])
        root.attrs["backend"] = b"tensorflow"
        for name in order:
            group = root.create_group(name)
            arrays = layers.get(name, {})
            group.attrs["weight_names"] = np.array([f"{name}/{k}:0".encode() for k in arrays], dtype="S")
            for kind, value in arrays.items():
                group.create_dataset(f"{name}/{kind}:0", data=value)
        if full_model:
            config = {"class_name": "Model", "config": {"layers": [
                {"class_name": "BatchNormalization", "config": {"name": f"depth_{i}_bn", "epsilon": 0.001}}
                for i in range(14)]}}
            f.attrs["model_config"] = json.dumps(config).encode()


@pytest.mark.parametrize("full_model, deconvolution", [(True, False), (False, False), (True, True)])
def test_keras_h5_gives_the_same_function_on_our_layout(tmp_path, full_model, deconvolution):
    layers = _keras_layers(W, np.random.default_rng(3), deconvolution)
    path = tmp_path / "Genesis_Chest_CT.h5"
    _write_keras_h5(path, layers, full_model)
    ours = create_model("unet3d", base_width=W, up_mode="transpose" if deconvolution else "upsample").eval()
    report = load_weights(ours, path, strict=True)
    assert report.ok and "keras" in report.converted
    x = torch.rand((1, 1, 16, 8, 8), generator=torch.Generator().manual_seed(4))  # (B, C, x, y, z)
    with torch.no_grad():
        expected = to_ours(_keras_reference(x, layers))
        got = torch.sigmoid(ours(to_ours(x)))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_not_a_genesis_keras_file_is_refused(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(CheckpointError, match="depth_"):
        load_weights(create_model("unet3d", base_width=W, up_mode="upsample"), path)
