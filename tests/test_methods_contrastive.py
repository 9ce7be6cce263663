"""SimCLR, VoCo, BYOL and the SwinUNETR backbone: the papers' formulas written out, seeded vectorised
views, the EMA teacher, DDP equals one process, weights that MONAI's own classes load."""

from __future__ import annotations

import math
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp
from torch.nn import functional as F

from _method_steps import build, train_steps, validate
from genesis.errors import ConfigError
from genesis.methods.base import METHODS, NetworkRequest
from genesis.methods.byol import BYOL
from genesis.methods.simclr import SimCLR
from genesis.methods.voco import VoCo
from genesis.models import create_model

TINY_HEADS = {"hidden": 32, "dim": 16}
TINY_SWIN = {"depths": (1, 1, 1, 1), "window_size": 4, "feature_size": 12}


def smooth_cubes(b: int, sides: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Distinct smooth samples in [0.1, 0.9]: a random plane wave each (B, 1, *sides)."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in sides], indexing="ij")
    freq, phase = torch.randn(b, len(sides), generator=g) * 3, torch.randn(b, generator=g)
    wave = sum(freq[:, a].view(b, *[1] * len(sides)) * axes[a] for a in range(len(sides)))
    return (0.5 + 0.4 * torch.sin(wave + phase.view(b, *[1] * len(sides))))[:, None]


@torch.no_grad()
def loss_on_fixed_views(method, model, cubes, dims) -> float:
    views = method.views(cubes, torch.Generator().manual_seed(123), dims)
    return float(method.loss(method.forward(model, views), views)[0])


def learns(method, crop, dims, steps=20, model="auto", model_kwargs=None) -> tuple[float, float, list[float]]:
    request = NetworkRequest(model=model, dims=dims, width=4, crop=method.sample_crop(crop), model_kwargs=model_kwargs or {})
    net, _ = build(method, request)
    cubes = smooth_cubes(4 if not isinstance(method, VoCo) else 3, method.sample_crop(crop))
    before = loss_on_fixed_views(method, net, cubes, dims)
    losses = train_steps(method, net, cubes, steps, dims, lr=1e-3)
    return before, loss_on_fixed_views(method, net, cubes, dims), losses


# ------------------------------------------------------------------------------------ SimCLR
def test_methods_are_registered_with_family_and_paper():
    got = {n: (METHODS.get(n).family, METHODS.get(n).paper.split()[0]) for n in ("simclr", "voco", "byol")}
    assert got == {"simclr": ("contrastive", "Chen"), "voco": ("contrastive", "Wu"), "byol": ("teacher-student", "Grill")}
    with pytest.raises(ConfigError):
        SimCLR(temperature=0)
    with pytest.raises(ConfigError):
        SimCLR(scale=(0.5, 0.2))
    with pytest.raises(ConfigError):
        VoCo(grid=(1, 1, 1))
    with pytest.raises(ConfigError):
        BYOL(schedule="cosine")


def test_nt_xent_is_the_papers_formula():
    g = torch.Generator().manual_seed(0)
    n, tau = 3, 0.3
    z1, z2 = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    z = [v for k in range(n) for v in (z1[k].tolist(), z2[k].tolist())]  # the paper's order: 2k-1, 2k

    def sim(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    def l(i, j):
        denominator = sum(math.exp(sim(z[i], z[k]) / tau) for k in range(2 * n) if k != i)
        return -math.log(math.exp(sim(z[i], z[j]) / tau) / denominator)

    expected = sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)
    loss, _ = SimCLR(temperature=tau).loss(torch.cat([z1, z2]), None)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_simclr_views_are_seeded_vectorised_and_exact(monkeypatch):
    method = SimCLR()
    cubes = smooth_cubes(1, (8, 16, 16)).repeat(3, 1, 1, 1, 1)  # three identical samples
    v1 = method.views(cubes, torch.Generator().manual_seed(5), 3)
    v2 = method.views(cubes, torch.Generator().manual_seed(5), 3)
    v3 = method.views(cubes, torch.Generator().manual_seed(6), 3)
    assert v1.input.shape == (6, 1, 8, 16, 16)
    assert torch.equal(v1.input, v2.input) and not torch.allclose(v1.input, v3.input)
    assert not torch.allclose(v1.input[0], v1.input[1])  # each sample draws its own view
    # no crop, no intensity change: the identity; flips of every axis: the flipped cube
    still = SimCLR(scale=(1.0, 1.0), flip_prob=0.0, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)
    torch.testing.assert_close(still.views(cubes, torch.Generator(), 3).input[:3], cubes, atol=1e-5, rtol=0)
    flipped = SimCLR(scale=(1.0, 1.0), flip_prob=1.0, intensity_scale=0.0, intensity_shift=0.0, noise_std=0.0)
    torch.testing.assert_close(flipped.views(cubes, torch.Generator(), 3).input[:3], cubes.flip(2, 3, 4),
                               atol=1e-5, rtol=0)
    assert method.views(cubes, torch.Generator().manual_seed(5), 2).input.shape == (6, 1, 16, 16)
    # one batched product per axis, whatever the batch size: no loop over samples
    calls = []
    for name in ("bmm", "matmul"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    for b in (2, 7):
        calls.clear()
        method.views(smooth_cubes(b, (8, 16, 16)), torch.Generator(), 3)
        assert len(calls) == 3


@pytest.mark.parametrize("sides", [(6, 10, 12), (10, 12)])
def test_axis_aligned_resampling_is_grid_sample(sides):
    from genesis.methods._views import axis_aligned_resample

    g = torch.Generator().manual_seed(len(sides))
    n, dims = 4, len(sides)
    x = torch.rand(n, 2, *sides, generator=g)
    scale = (0.2 + 0.8 * torch.rand(n, dims, generator=g)) * torch.where(torch.rand(n, dims, generator=g) < 0.5, -1.0, 1.0)
    offset = (2 * torch.rand(n, dims, generator=g) - 1) * (1.2 - scale.abs())  # partly outside: zero padding
    theta = torch.cat([torch.diag_embed(scale), offset[..., None]], dim=2)
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                             padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(axis_aligned_resample(x, scale, offset), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dims,crop", [(3, (16, 16, 16)), (2, (1, 32, 32))])
def test_simclr_learns_on_a_fixed_batch(dims, crop):
    before, after, losses = learns(SimCLR(scale=(0.5, 1.0), **TINY_HEADS), crop, dims)
    assert all(math.isfinite(v) for v in losses)
    assert after < before - 0.2, (before, after)


def test_simclr_validation_reports_chance():
    g = torch.Generator().manual_seed(0)
    z1 = torch.eye(4)[:, :] * 3
    z2 = z1 + 0.01 * torch.randn(4, 4, generator=g)  # every positive is the nearest
    sums = SimCLR().validation(torch.cat([z1, z2]), None)
    assert sums["val_top1"] / 8 == 1.0 and sums["val_chance"] / 8 == pytest.approx(1 / 7)
    swapped = SimCLR().validation(torch.cat([z1, z2.roll(1, 0)]), None)
    assert swapped["val_top1"] == 0.0  # each view's nearest is another sample's other view


def test_simclr_ddp_loss_and_gradient_equal_one_process(tmp_path):
    """Two gloo ranks with half the batch each give the loss and gradient of the whole batch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the ranks inherit the imported modules (spawn re-imports genesis in each, ~20 s on 2 busy cores)
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path / "out.pt")), nprocs=2, join=True, start_method="fork")
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    x1, x2, w = _ddp_inputs()
    loss, _ = SimCLR(temperature=0.5).loss(torch.cat([x1 @ w, x2 @ w]), None)
    loss.backward()
    assert float(got["loss"]) == pytest.approx(float(loss.detach()), rel=1e-5)
    torch.testing.assert_close(got["grad"], w.grad, rtol=1e-4, atol=1e-6)
    # without gradients (validation: rank 0 alone) the loss is its own batch's, with no collective to hang on
    alone, _ = SimCLR(temperature=0.5).loss(torch.cat([x1[:4] @ w, x2[:4] @ w]), None)
    assert float(got["validation_loss"]) == pytest.approx(float(alone.detach()), rel=1e-5)


def _ddp_inputs():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    return x1, x2, torch.nn.Parameter(torch.randn(5, 3, generator=g))


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    x1, x2, w = _ddp_inputs()
    half = slice(rank * 4, rank * 4 + 4)
    loss, _ = SimCLR(temperature=0.5).loss(torch.cat([x1[half] @ w, x2[half] @ w]), None)
    loss.backward()
    dist.all_reduce(w.grad)
    w.grad /= world  # what DDP does with parameter gradients
    if rank == 0:
        with torch.no_grad():
            alone, _ = SimCLR(temperature=0.5).loss(torch.cat([x1[half] @ w, x2[half] @ w]), None)
        torch.save({"loss": loss.detach(), "grad": w.grad, "validation_loss": alone}, out)
    dist.barrier()
    dist.destroy_process_group()


# -------------------------------------------------------------------------------------- VoCo
def test_voco_crops_and_overlaps_are_the_regions():
    method = VoCo(grid=(1, 2, 3), n_random=3, noise_std=0.0, intensity_scale=0.0, intensity_shift=0.0)
    crop = (4, 6, 5)
    assert method.sample_crop(crop) == (4, 12, 15)
    region = torch.arange(2 * 4 * 12 * 15, dtype=torch.float32).view(2, 1, 4, 12, 15)  # every voxel its own value
    views = method.views(region, torch.Generator().manual_seed(3), 3)
    again = method.views(region, torch.Generator().manual_seed(3), 3)
    assert torch.equal(views.input, again.input) and torch.equal(views.overlaps, again.overlaps)
    b, n, k = 2, 6, 3
    assert views.input.shape == (b * n + b * k, 1, *crop) and views.overlaps.shape == (b, k, n)
    bases, randoms = views.input[: b * n].view(b, n, 1, *crop), views.input[b * n:].view(b, k, 1, *crop)
    for s in range(b):
        cells = [(i, j) for i in range(2) for j in range(3)]
        for c, (i, j) in enumerate(cells):
            assert torch.equal(bases[s, c], region[s, :, :, 6 * i: 6 * i + 6, 5 * j: 5 * j + 5])
        for r in range(k):
            oz, oy, ox = views.offsets[s, r].tolist()
            assert oz == 0
            assert torch.equal(randoms[s, r], region[s, :, :, oy: oy + 6, ox: ox + 5])
            for c, (i, j) in enumerate(cells):
                share_y = max(0, min(oy + 6, 6 * i + 6) - max(oy, 6 * i)) / 6
                share_x = max(0, min(ox + 5, 5 * j + 5) - max(ox, 5 * j)) / 5
                assert float(views.overlaps[s, r, c]) == pytest.approx(share_y * share_x)
    torch.testing.assert_close(views.overlaps.sum(-1), torch.ones(b, k))
    flat = method.views(region, torch.Generator().manual_seed(3), 2)  # 2D: a slice, the in-plane grid
    assert flat.input.shape == (b * n + b * k, 1, 6, 5)


def test_voco_loss_is_the_papers_formula():
    g = torch.Generator().manual_seed(1)
    b, n, k, d = 2, 4, 3, 6
    out = torch.randn(b * n + b * k, d, generator=g)
    y = torch.rand(b, k, n, generator=g)
    y = y / y.sum(-1, keepdim=True)
    views = type("V", (), {"overlaps": y, "n_bases": n, "n_random": k})()
    loss, parts = VoCo(reg_weight=0.7).loss(out, views)
    bases, randoms = out[: b * n].view(b, n, d).tolist(), out[b * n:].view(b, k, d).tolist()

    def cos(u, v):
        return sum(a * c for a, c in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(c * c for c in v))

    pred = -sum(math.log(1 - abs(float(y[s, j, i]) - max(0.0, cos(randoms[s][j], bases[s][i]))))
                for s in range(b) for j in range(k) for i in range(n)) / (b * k * n)
    reg = sum(2 / (n * (n - 1)) * sum(max(0.0, cos(bases[s][i], bases[s][m])) for i in range(n) for m in range(i + 1, n))
              for s in range(b)) / b
    assert parts["prediction"] == pytest.approx(pred, rel=1e-5) and parts["regularisation"] == pytest.approx(reg, rel=1e-5)
    assert float(loss) == pytest.approx(pred + 0.7 * reg, rel=1e-5)


@pytest.mark.parametrize("dims,crop", [(3, (8, 16, 16)), (2, (1, 16, 16))])
def test_voco_learns_and_reports_the_mean_overlap_baseline(dims, crop):
    method = VoCo(grid=(1, 2, 2), n_random=4, **TINY_HEADS)
    before, after, losses = learns(method, crop, dims, steps=30)
    assert all(math.isfinite(v) for v in losses) and after < before - 0.1, (before, after)
    request = NetworkRequest(model="auto", dims=dims, width=4, crop=crop)
    net, _ = build(method, request)
    cubes = smooth_cubes(3, method.sample_crop(crop))
    metrics = validate(method, net, cubes, dims)
    views = method.views(cubes, torch.Generator().manual_seed(1), dims)  # validate's seed
    y = views.overlaps
    assert metrics["val_mean_overlap_mae"] == pytest.approx(float((y - 1 / 4).abs().mean()), rel=1e-5)
    assert metrics["val_chance"] == pytest.approx(1 / 4) and 0 <= metrics["val_top1"] <= 1


# -------------------------------------------------------------------------------------- BYOL
def test_byol_teacher_is_an_ema_of_the_student_and_never_trained():
    method = BYOL(momentum=0.9, **TINY_HEADS)
    model, spec = build(method, NetworkRequest(model="auto", dims=2, width=2, crop=(1, 16, 16)))
    parts = method.parts(spec)
    state = model.state_dict()
    teacher_keys = [key for key in state if key.startswith(parts.teacher)]
    student = {key: v for key, v in state.items() if key.startswith(("backbone.", "projector."))}
    assert sorted(key[len(parts.teacher):] for key in teacher_keys) == sorted(student)
    assert all(torch.equal(state[parts.teacher + key], v) for key, v in student.items())  # starts as the student
    assert all(not p.requires_grad for p in model.teacher.parameters())
    before = {k: v.clone() for k, v in model.teacher.named_parameters()}
    train_steps(method, model, smooth_cubes(4, (1, 16, 16)), 1, 2)
    assert all(p.grad is None for p in model.teacher.parameters())
    students = dict(model.backbone.named_parameters(prefix="backbone")) | dict(model.projector.named_parameters(prefix="projector"))
    for name, p in model.teacher.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * students[name], rtol=0, atol=1e-7)
    assert any(not torch.equal(p, before[name]) for name, p in model.teacher.named_parameters())


def test_byol_loss_is_the_papers_formula_and_the_cosine_schedule():
    g = torch.Generator().manual_seed(2)
    n, d = 3, 4
    p, t = torch.randn(2 * n, d, generator=g), torch.randn(2 * n, d, generator=g)
    loss, _ = BYOL().loss((p, t, p), None)

    def mse_of_unit(u, v):
        nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
        return sum((a / nu - b / nv) ** 2 for a, b in zip(u, v))

    P, T = p.tolist(), t.tolist()
    expected = sum(mse_of_unit(P[i], T[n + i]) for i in range(n)) / n + sum(mse_of_unit(P[n + i], T[i]) for i in range(n)) / n
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    cosine = BYOL(momentum=0.99, schedule="cosine", total_steps=100)
    assert [cosine.momentum_at(s) for s in (0, 50, 100, 200)] == pytest.approx([0.99, 0.995, 1.0, 1.0])
    assert BYOL(momentum=0.99).momentum_at(70) == 0.99


def test_byol_learns_on_a_fixed_batch():
    before, after, losses = learns(BYOL(momentum=0.9, scale=(0.5, 1.0), **TINY_HEADS), (1, 32, 32), 2)
    assert all(math.isfinite(v) for v in losses) and after < before - 0.5, (before, after)


# ------------------------------------------------------------------------- backbones and grids
def test_backbone_keys_rebuild_the_network_alone():
    for method, dims, crop in ((SimCLR(**TINY_HEADS), 3, (16, 16, 16)), (BYOL(**TINY_HEADS), 2, (1, 16, 16)),
                               (VoCo(**TINY_HEADS), 2, (1, 16, 16))):
        request = NetworkRequest(model="auto", dims=dims, width=2, crop=crop)
        model, spec = build(method, request)
        parts = method.parts(spec)
        keys = list(model.state_dict())
        prefixes = (parts.backbone, *parts.heads) + ((parts.teacher,) if parts.teacher else ())
        assert all(k.startswith(prefixes) for k in keys)
        backbone = {k[len(parts.backbone):]: v for k, v in model.state_dict().items() if k.startswith(parts.backbone)}
        alone = create_model(parts.network.name, **dict(parts.network.kwargs)).encoder_only()
        alone.load_state_dict(backbone, strict=True)  # the decoder was never trained: not in the backbone


def test_swinunetr_weights_load_into_monais_own_classes():
    from monai.networks.nets import SwinUNETR as Monai

    from genesis.models.swinunetr import to_swin_ssl_checkpoint

    method = SimCLR(**TINY_HEADS)
    request = NetworkRequest(model="swinunetr", dims=3, width=4, crop=(32, 32, 32), model_kwargs=TINY_SWIN)
    model, spec = build(method, request)
    kwargs = dict(method.parts(spec).network.kwargs)
    assert kwargs["spatial_dims"] == 3 and kwargs["feature_size"] == 12
    full = create_model("swinunetr", **kwargs)
    Monai(**kwargs).load_state_dict(full.state_dict(), strict=True)  # the whole network: restoration
    encoder = {k[len("backbone."):]: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    theirs = Monai(**kwargs)
    theirs.swinViT.load_state_dict({k[len("swinViT."):]: v for k, v in encoder.items()}, strict=True)
    missing = theirs.load_state_dict(encoder, strict=False).missing_keys
    assert missing and all(k.split(".")[0] in ("encoder1", "encoder2", "encoder3", "encoder4", "encoder10", "decoder5",
                                                "decoder4", "decoder3", "decoder2", "decoder1", "out") for k in missing)
    x = smooth_cubes(2, (32, 32, 32))
    theirs.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.backbone.forward_features(x), theirs.swinViT(x, True)[-1])
    loaded = Monai(**kwargs)
    loaded.load_from(to_swin_ssl_checkpoint(encoder))  # the Swin SSL checkpoint layout
    for key, value in loaded.swinViT.state_dict().items():
        assert torch.equal(value, encoder["swinViT." + key]), key
    with pytest.raises(ConfigError, match="multiples of 32"):
        SimCLR().network(NetworkRequest(model="swinunetr", dims=3, width=4, crop=(32, 48, 48)))
    # VoCo's request names the region the sampler cuts; its network sees the cells of the grid
    assert VoCo().network(NetworkRequest(model="swinunetr", dims=3, width=4, crop=(32, 128, 128))).name == "swinunetr"
    with pytest.raises(ConfigError, match="multiples of 32"):
        VoCo().network(NetworkRequest(model="swinunetr", dims=3, width=4, crop=(32, 192, 192)))


def test_swinunetr_backbone_trains_with_simclr():
    before, after, losses = learns(SimCLR(scale=(0.5, 1.0), **TINY_HEADS), (1, 32, 32), 2, steps=10,
                                   model="swinunetr", model_kwargs=TINY_SWIN)
    assert all(math.isfinite(v) for v in losses) and after < before, (before, after)


def test_grids_show_the_views(tmp_path):
    for method, crop in ((SimCLR(**TINY_HEADS), (1, 16, 16)), (BYOL(**TINY_HEADS), (1, 16, 16)),
                         (VoCo(grid=(1, 2, 2), n_random=2, **TINY_HEADS), (1, 16, 16))):
        model, _ = build(method, NetworkRequest(model="auto", dims=2, width=2, crop=crop))
        views = method.views(smooth_cubes(3, method.sample_crop(crop)), torch.Generator().manual_seed(0), 2)
        with torch.no_grad():
            out = method.forward(model, views)
        path = tmp_path / f"{method.name}.png"
        method.grid(views, out, path, method.name, 2)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
