"""Masked image modelling (MAE, SimMIM, SparK) through the method contract, on tiny networks.

Losses are checked against the papers' formulas written out here (patches cut with ``unfold``,
masks upsampled with ``repeat_interleave``), not against the methods' own helpers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch.overrides import TorchFunctionMode

from _method_steps import build, train_steps, validate
from genesis.errors import ConfigError
from genesis.methods import METHODS
from genesis.methods._masking import masked_count, random_patch_mask
from genesis.methods.base import NetworkRequest
from genesis.models import create_model
from genesis.models.sparse import SparseContext, sparse_norm, sparsify

TINY_VIT = {"hidden_size": 24, "num_layers": 1, "num_heads": 2, "mlp_dim": 48}
TINY_DECODER = {"decoder_width": 24, "decoder_depth": 1, "decoder_heads": 2}
CROP3 = (16, 16, 16)
CROP2 = (4, 32, 32)  # 2D views are axial slices of these cubes


def tiny_plans(arch: str) -> dict:
    """A minimal nnU-Net plans dict: 3 stages (4, 8, 8 features), total stride 4, instance norm."""
    blocks = "n_blocks_per_stage" if arch == "ResidualEncoderUNet" else "n_conv_per_stage"
    arch_kwargs = {
        "n_stages": 3, "features_per_stage": [4, 8, 8], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]], blocks: [1, 1, 1],
        "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True}}
    config = {
        "data_identifier": "tiny", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(CROP3), "median_image_size_in_voxels": list(CROP3), "spacing": [1.0, 1.0, 1.0],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False], "batch_dice": False,
        "architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{arch}",
                         "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    return {"plans_name": "tiny", "dataset_name": "Dataset999_Tiny", "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
            "foreground_intensity_properties_per_channel": {
                "0": {"mean": -300.0, "std": 400.0, "percentile_00_5": -1000.0, "percentile_99_5": 600.0}}}


def nnunet_request(arch: str) -> NetworkRequest:
    return NetworkRequest("nnunet", 3, 2, crop=CROP3,
                          model_kwargs={"plans": tiny_plans(arch), "configuration": "3d_fullres"})


#: id -> (method, parameters, request, dims)
CASES = {
    "mae-vit-3d": ("mae", {"patch_size": 8, **TINY_DECODER}, NetworkRequest("vit", 3, 2, crop=CROP3, model_kwargs=TINY_VIT), 3),
    "mae-vit-2d": ("mae", {"patch_size": 8, **TINY_DECODER}, NetworkRequest("vit", 2, 2, crop=CROP2, model_kwargs=TINY_VIT), 2),
    "mae-unet3d": ("mae", {"patch_size": 8}, NetworkRequest("unet3d", 3, 2, crop=CROP3), 3),
    "simmim-vit-3d": ("simmim", {"mask_ratio": 0.5, "mask_patch_size": 8, "model_patch_size": 4},
                      NetworkRequest("auto", 3, 2, crop=CROP3, model_kwargs=TINY_VIT), 3),
    "simmim-unet2d": ("simmim", {"mask_ratio": 0.5, "mask_patch_size": 8}, NetworkRequest("unet2d", 2, 2, crop=CROP2), 2),
    "spark-unet3d": ("spark", {"mask_ratio": 0.5}, NetworkRequest("auto", 3, 2, crop=CROP3), 3),
    "spark-unet2d": ("spark", {}, NetworkRequest("auto", 2, 2, crop=CROP2), 2),
    "spark-plainconv": ("spark", {}, nnunet_request("PlainConvUNet"), 3),
    "spark-resenc": ("spark", {}, nnunet_request("ResidualEncoderUNet"), 3),
}


def smooth_cubes(batch: int, crop: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """Smooth random cubes in [0, 1] (structure a network can learn to fill in)."""
    gen = torch.Generator().manual_seed(seed)
    vol = gaussian_filter(torch.rand((batch, 1, *crop), generator=gen).numpy(), sigma=(0, 0, 1.5, 1.5, 1.5))
    vol = (vol - vol.min()) / (vol.max() - vol.min())
    return torch.from_numpy(vol.astype("float32"))


def setup(case: str, seed: int = 0):
    name, params, request, dims = CASES[case]
    method = METHODS.get(name)(**params)
    model, spec = build(method, request, seed=seed)
    return method, model, spec, smooth_cubes(2, tuple(request.crop)), dims


def one_batch(method, model, cubes, dims, seed: int = 3):
    views = method.views(cubes, torch.Generator().manual_seed(seed), dims)
    return views, method.forward(model, views)


# ------------------------------------------------------------------------- the papers' formulas
def unfold_patches(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, C, *sides) -> (B, L, C * prod(patch)), grid in raster order (torch's unfold)."""
    for axis, p in enumerate(patch):
        x = x.unfold(2 + axis, p, p)
    d = len(patch)
    b, c = x.shape[:2]
    perm = [0] + list(range(2, 2 + d)) + [1] + list(range(2 + d, 2 + 2 * d))
    return x.permute(perm).reshape(b, -1, c * math.prod(patch))


def voxel_mask(mask: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """(B, *grid) -> (B, 1, *sides) float, as nnssl upsamples its masks."""
    m = mask.float().unsqueeze(1)
    for axis, p in enumerate(patch):
        m = m.repeat_interleave(p, dim=2 + axis)
    return m


def norm_pix_mse(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor, patch) -> torch.Tensor:
    """MAE's / SparK's loss: per-patch normalised target, MSE per patch, mean over masked patches."""
    target = unfold_patches(image, patch)
    mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = ((unfold_patches(pred, patch) - target) ** 2).mean(dim=-1)
    m = mask.flatten(1).float()
    return (per_patch * m).sum() / m.sum()


def paper_loss(method, views, outputs) -> torch.Tensor:
    pred, image, patch = outputs.prediction.float(), views.image.float(), views.patch
    if method.name == "simmim":  # SimMIM: (|x - x_rec| * mask).sum() / (mask.sum() + 1e-5) / in_chans
        m = voxel_mask(views.mask, patch)
        return (torch.abs(image - pred) * m).sum() / (m.sum() + 1e-5) / image.shape[1]
    if method.norm_pix:
        return norm_pix_mse(pred, image, views.mask, patch)
    m = voxel_mask(views.mask, patch)  # nnssl's MAEMSELoss, with mask = 1 on hidden voxels
    return (((pred - image) ** 2) * m).sum() / m.sum()


@pytest.mark.parametrize("case", list(CASES))
def test_steps_finite_falling_and_the_papers_loss(case: str) -> None:
    method, model, spec, cubes, dims = setup(case)
    losses = train_steps(method, model, cubes, steps=6, dims=dims, lr=3e-3)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    views, outputs = one_batch(method, model, cubes, dims)
    loss, _ = method.loss(outputs, views)
    assert torch.allclose(loss, paper_loss(method, views, outputs), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("case", list(CASES))
def test_prediction_ignores_the_hidden_content(case: str) -> None:
    """Whatever lies under the mask, the network's prediction is the same: the encoder never sees it
    (ViT MAE drops the tokens, SparK runs sparsely, the image forms replace the voxels)."""
    method, model, spec, cubes, dims = setup(case)
    model.train()  # batch statistics in use: SparK's sparse batch norm must ignore hidden voxels too
    views, outputs = one_batch(method, model, cubes, dims)
    noise = torch.rand(views.image.shape, generator=torch.Generator().manual_seed(9))
    views.image = torch.where(views.voxel_mask, noise, views.image)
    again = method.forward(model, views).prediction
    assert torch.allclose(again, outputs.prediction, atol=1e-5)
    changed_visible = views.image.clone()
    changed_visible[~views.voxel_mask.expand_as(changed_visible)] += 0.5
    views.image = changed_visible
    assert not torch.allclose(method.forward(model, views).prediction, outputs.prediction, atol=1e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_backbone_exports_into_the_named_network(case: str) -> None:
    method, model, spec, _, _ = setup(case)
    parts = method.parts(spec)
    state = model.state_dict()
    backbone = {k[len(parts.backbone):]: v for k, v in state.items() if k.startswith(parts.backbone)}
    rest = [k for k in state if not k.startswith(parts.backbone)]
    assert all(any(k.startswith(h) for h in parts.heads) for k in rest), rest
    fresh = create_model(parts.network.name, **dict(parts.network.kwargs))
    fresh.load_state_dict(backbone, strict=True)
    assert parts.to_dict()["model_name"] == spec.name
    if spec.name == "vit":  # MONAI's own ViT class takes the weights too
        from monai.networks.nets import ViT

        kw = dict(spec.kwargs)
        ViT(kw["in_channels"], kw["img_size"], kw["patch_size"], TINY_VIT["hidden_size"], TINY_VIT["mlp_dim"],
            TINY_VIT["num_layers"], TINY_VIT["num_heads"], pos_embed_type="sincos", qkv_bias=True,
            spatial_dims=kw["spatial_dims"]).load_state_dict(backbone, strict=True)


# ------------------------------------------------------------------------- masks and views
def test_masks_are_seeded_exact_and_batch_independent() -> None:
    a = random_patch_mask(4, (2, 4, 4), 0.75, torch.Generator().manual_seed(1))
    b = random_patch_mask(4, (2, 4, 4), 0.75, torch.Generator().manual_seed(1))
    c = random_patch_mask(4, (2, 4, 4), 0.75, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.flatten(1).sum(1).tolist() == [24] * 4
    assert len({tuple(m.flatten().tolist()) for m in a}) == 4  # samples differ
    for num, ratio in ((10, 0.6), (64, 0.75), (7, 0.5), (256, 0.6)):
        counts = random_patch_mask(3, (num,), ratio, torch.Generator().manual_seed(0)).sum(1)
        assert counts.tolist() == [round(ratio * num)] * 3 == [masked_count(num, ratio)] * 3
    with pytest.raises(ConfigError, match="more patches"):
        masked_count(2, 0.1)


@pytest.mark.parametrize("case", ["mae-vit-2d", "simmim-vit-3d", "spark-unet3d"])
def test_views_are_seeded(case: str) -> None:
    method, _, _, _, dims = setup(case)
    cubes = smooth_cubes(6, tuple(CASES[case][2].crop))
    v1, v2, v3 = (method.views(cubes, torch.Generator().manual_seed(s), dims) for s in (5, 5, 6))
    assert torch.equal(v1.mask, v2.mask) and torch.equal(v1.image, v2.image)
    assert not torch.equal(v1.mask, v3.mask)
    ratio = method.mask_ratio
    assert v1.mask.flatten(1).sum(1).tolist() == [round(ratio * v1.mask[0].numel())] * 6


class _CountTorchCalls(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("case", ["mae-vit-2d", "mae-unet3d", "simmim-unet2d", "spark-unet3d"])
def test_views_are_vectorised_over_the_batch(case: str) -> None:
    """The same number of torch calls for 2 and 16 samples: no per-sample Python loop."""
    method, _, _, _, dims = setup(case)
    counts = []
    for batch in (2, 16):
        cubes = smooth_cubes(batch, tuple(CASES[case][2].crop))
        with _CountTorchCalls() as mode:
            views = method.views(cubes, torch.Generator().manual_seed(0), dims)
            views.voxel_mask, views.input  # noqa: B018 - the lazily built masks count too
        counts.append(mode.calls)
    assert counts[0] == counts[1] > 0


# ------------------------------------------------------------------------- what each form feeds
def test_image_forms_replace_the_hidden_voxels() -> None:
    seen = []
    for case in ("mae-unet3d", "simmim-unet2d"):
        method, model, _, cubes, dims = setup(case)
        handle = model.backbone.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
        views, _ = one_batch(method, model, cubes, dims)
        handle.remove()
        m = views.voxel_mask.expand_as(views.image)
        fed = seen[-1]
        assert torch.equal(fed[~m], views.image[~m])
        expected = 0.0 if method.name == "mae" else float(model.mask_token.detach().flatten()[0])
        assert torch.all(fed[m] == expected)


def test_mae_vit_encodes_the_visible_tokens_only() -> None:
    method, model, _, cubes, dims = setup("mae-vit-3d")
    shapes = []
    handle = model.backbone.blocks[0].register_forward_pre_hook(lambda mod, args: shapes.append(args[0].shape))
    views, _ = one_batch(method, model, cubes, dims)
    handle.remove()
    assert shapes == [torch.Size([2, 8 - 6, TINY_VIT["hidden_size"]])]  # 8 patches, 6 hidden


# ------------------------------------------------------------------------- SparK
def _leaf_outputs(modules):
    outputs, handles = [], []
    for root in modules:
        for name, layer in root.named_modules():
            if not any(True for _ in layer.children()):
                handles.append(layer.register_forward_hook(lambda mod, i, o, name=name: outputs.append((name, o))))
    return outputs, handles


@pytest.mark.parametrize("case", ["spark-unet3d", "spark-unet2d", "spark-plainconv", "spark-resenc"])
def test_spark_masked_positions_are_zero_after_every_layer(case: str) -> None:
    method, model, _, cubes, dims = setup(case)
    views = method.views(cubes, torch.Generator().manual_seed(0), dims)
    outputs, handles = _leaf_outputs(model._view.encoder_modules)
    features = model.encode_sparse(views.image, views.mask)
    for h in handles:
        h.remove()
    assert len(outputs) > 6 and len(features) == len(model.mask_tokens)
    norms = [m for root in model._view.encoder_modules for m in root.modules()
             if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.instancenorm._InstanceNorm))]
    assert norms and all(type(m).__name__.startswith("Sparse") for m in norms)  # statistics over visible voxels
    for name, out in outputs + [(f"stage {i}", f) for i, f in enumerate(features)]:
        hidden = voxel_mask(views.mask, tuple(s // g for s, g in zip(out.shape[2:], views.mask.shape[1:])))
        assert torch.all(out.masked_select(hidden.bool().expand_as(out)) == 0), name
        assert out.masked_select(~hidden.bool().expand_as(out)).abs().sum() > 0, name


def test_spark_backbone_is_dense_without_a_mask() -> None:
    """Made sparse in place, the backbone still computes exactly what the plain network does."""
    for case in ("spark-unet3d", "spark-resenc"):
        method, model, spec, cubes, _ = setup(case)
        fresh = create_model(spec.name, **dict(spec.kwargs))
        fresh.load_state_dict(model.backbone.state_dict())
        model.eval(), fresh.eval()
        assert torch.equal(model.backbone(cubes), fresh(cubes))


def test_sparse_norms_use_the_visible_voxels_only() -> None:
    ctx = SparseContext()
    x = torch.randn(3, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 + 1
    keep = random_patch_mask(3, (2, 2, 2), 0.5, torch.Generator().manual_seed(1)).logical_not()
    vis = voxel_mask(keep, (2, 2, 2)).bool().expand_as(x)
    bn = sparse_norm(torch.nn.BatchNorm3d(4), ctx)
    inorm = sparse_norm(torch.nn.InstanceNorm3d(4, affine=True), ctx)
    with ctx.active(keep):
        out_bn, out_in = bn(x), inorm(x)
    rows = x.movedim(1, -1)[vis.movedim(1, -1)[..., 0]]  # (N, C) visible voxels
    mean, var = rows.mean(0), rows.var(0, unbiased=False)
    expected = ((x - mean.view(1, 4, 1, 1, 1)) / torch.sqrt(var.view(1, 4, 1, 1, 1) + bn.eps))
    assert torch.allclose(out_bn[vis], expected[vis], atol=1e-5) and torch.all(out_bn[~vis] == 0)
    assert torch.allclose(bn.running_mean, 0.1 * mean, atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * rows.var(0, unbiased=True), atol=1e-5)
    for b in range(3):
        v = x[b][vis[b]].view(4, -1)
        exp = (v - v.mean(1, keepdim=True)) / torch.sqrt(v.var(1, unbiased=False, keepdim=True) + 1e-5)
        assert torch.allclose(out_in[b][vis[b]].view(4, -1), exp, atol=1e-5)
    assert torch.equal(bn(x), F.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias,
                                           True, 0.0, bn.eps))  # no mask: the dense layer


def test_sparsify_refuses_layers_without_a_sparse_form() -> None:
    encoder = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.GroupNorm(2, 4))
    with pytest.raises(ConfigError, match="GroupNorm"):
        sparsify([encoder], SparseContext())
    with pytest.raises(ConfigError, match="Sigmoid"):
        sparsify([torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.Sigmoid())], SparseContext())


# ------------------------------------------------------------------------- metrics and grid
@pytest.mark.parametrize("case", ["mae-vit-3d", "mae-unet3d", "simmim-unet2d", "spark-unet2d"])
def test_validation_reports_the_visible_mean_baseline(case: str) -> None:
    method, model, _, cubes, dims = setup(case)
    metrics = validate(method, model, cubes, dims, seed=1)
    assert method.monitor_key in metrics and "val_mask_mean_mse" in metrics
    views = method.views(cubes, torch.Generator().manual_seed(1), dims)
    image, m = views.image.float(), voxel_mask(views.mask, views.patch).bool()
    expected = []
    for i in range(image.shape[0]):  # written per sample on purpose: the direct definition
        const = torch.full_like(image[i], float(image[i][~m[i]].mean()))
        if method.norm_pix:
            pred = unfold_patches(const[None], views.patch)
            target = unfold_patches(image[i][None], views.patch)
            mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
            err = (((pred - mean) / std - (target - mean) / std) ** 2)[0]
            hidden = views.mask[i].flatten()
            expected.append(float(err[hidden].mean()))
        else:
            expected.append(float(((const - image[i])[m[i]] ** 2).mean()))
    assert metrics["val_mask_mean_mse"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    if method.loss_kind == "l1":
        assert metrics["val_loss"] == pytest.approx(metrics["val_masked_l1"], rel=1e-5)
    else:
        assert metrics["val_loss"] == pytest.approx(metrics["val_masked_mse"], rel=1e-5)
    if method.norm_pix:  # the best constant per patch in normalised space (~1) is reported too
        assert 0.9 < metrics["val_patch_mean_mse"] < metrics["val_mask_mean_mse"]
    model.eval()
    with torch.no_grad():
        per_sample = method.per_sample(method.forward(model, views), views)  # the loop's collapse check
    key = "val_masked_l1" if method.loss_kind == "l1" else "val_masked_mse"
    assert float(per_sample["model"].mean()) == pytest.approx(metrics[key], rel=1e-5)
    if method.loss_kind == "mse":
        assert float(per_sample["fill"].mean()) == pytest.approx(metrics["val_mask_mean_mse"], rel=1e-5)


@pytest.mark.parametrize("case", ["mae-vit-2d", "simmim-vit-3d", "spark-unet3d"])
def test_grid_png(case: str, tmp_path: Path) -> None:
    method, model, _, cubes, dims = setup(case)
    views, outputs = one_batch(method, model, cubes, dims)
    path = tmp_path / "grid.png"
    method.grid(views, outputs, path, case, 2)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------- configuration
def test_describe_and_registration() -> None:
    for name, family_paper in (("mae", "He et al."), ("simmim", "Xie et al."), ("spark", "Tian et al.")):
        cls = METHODS.get(name)
        assert cls.family == "masked image modelling" and family_paper in cls.paper and cls.dims == (2, 3)
    assert METHODS.get("mae")().describe()["mask_ratio"] == 0.75
    assert METHODS.get("simmim")().describe()["mask_ratio"] == 0.6
    assert METHODS.get("spark")().describe()["mask_ratio"] == 0.6


def test_configuration_errors() -> None:
    with pytest.raises(ConfigError, match="spark pretrains CNN"):
        METHODS.get("spark")().network(NetworkRequest("vit", 3, 2, crop=CROP3))
    with pytest.raises(ConfigError, match="must divide"):
        METHODS.get("mae")(patch_size=5).network(NetworkRequest("vit", 3, 2, crop=CROP3))
    with pytest.raises(ConfigError, match="2D network"):
        METHODS.get("mae")(patch_size=8).network(NetworkRequest("unet2d", 3, 2, crop=CROP3))
    with pytest.raises(ConfigError, match="multiple of the ViT"):
        METHODS.get("simmim")(mask_patch_size=8, model_patch_size=3).network(NetworkRequest("vit", 3, 2, crop=CROP3))
    with pytest.raises(ConfigError, match="task parameter patch_size"):
        METHODS.get("mae")(patch_size=8).network(
            NetworkRequest("vit", 3, 2, crop=CROP3, model_kwargs={**TINY_VIT, "patch_size": 4}))
    with pytest.raises(ValueError, match="mask_ratio"):
        METHODS.get("mae")(mask_ratio=1.0)
    from genesis.methods.spark import SparKModel

    with pytest.raises(ConfigError, match="bn_batch_stats_in_eval"):
        SparKModel(create_model("unet3d", base_width=2, bn_batch_stats_in_eval=True))
    with pytest.raises(ConfigError, match="no encoder it can run sparsely"):
        SparKModel(create_model("vit", img_size=CROP3, patch_size=8, **TINY_VIT))


def test_primus_says_why_it_cannot_be_built() -> None:
    try:
        from dynamic_network_architectures.architectures.primus import Primus  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - the failure this environment has (timm -> torchvision)
        reason = f"{type(exc).__name__}: {exc}"
        with pytest.raises(ConfigError) as info:
            create_model("primus", input_shape=(32, 32, 32), size="S")
        message = str(info.value)
        assert reason in message and f"torch {torch.__version__}" in message
        assert "timm" in message and "torchvision" in message and "--model vit" in message
        method = METHODS.get("mae")(patch_size=8)
        spec = method.network(NetworkRequest("primus", 3, 2, crop=(32, 32, 32)))
        assert spec.kwargs["input_shape"] == (32, 32, 32) and method.form == "cnn"
        with pytest.raises(ConfigError, match="needs Primus"):
            method.build_model(spec)
    else:  # a matching torch/torchvision: Primus builds
        net = create_model("primus", input_shape=(32, 32, 32), patch_embed_size=(8, 8, 8), size="S")
        assert net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
