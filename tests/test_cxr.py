"""Chest radiographs: readers, DenseNet-121, Barlow Twins / metadata tasks, the chexpert target.

Everything runs on radiographs written here (DICOM MONOCHROME1/2, PNG, JPEG, a CheXpert-layout CSV
with uncertain labels) at 32 pixels, with one or two optimizer steps.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from genesis.data.synthetic.radiograph import CHEXPERT_OBSERVATIONS
from genesis.errors import RadiographReadError
from genesis.io.radiograph import load_radiograph, resize_square, write_radiograph_dicom
from genesis.models import create_model
from genesis.weights.download import sha256_file


# ------------------------------------------------------------------------------------- readers
def ramp(h: int = 30, w: int = 40) -> np.ndarray:
    return np.tile(np.linspace(0, 4000, w), (h, 1))


def test_dicom_monochrome1_is_inverted_and_window_applied(tmp_path):
    px = ramp()
    m2 = write_radiograph_dicom(tmp_path / "m2.dcm", px, window=(2000, 2000), sex="F", age=45, view="PA",
                                spacing=(0.2, 0.2))
    m1 = write_radiograph_dicom(tmp_path / "m1.dcm", px, window=(2000, 2000), monochrome1=True)
    a, b = load_radiograph(m2, size=None), load_radiograph(m1, size=None)
    # window 1000..3000: below is black, above white, linear between (pydicom's windowing)
    x = px[0]
    expected = np.clip((x - (2000 - 0.5) + 0.5 * (2000 - 1)) / (2000 - 1), 0, 1)
    np.testing.assert_allclose(a.array[0], expected, atol=2e-3)
    np.testing.assert_allclose(b.array, 1.0 - a.array, atol=1e-6)
    assert a.metadata == {"modality": "DX", "photometric": "MONOCHROME2", "view": "PA", "sex": "F", "age": 45.0}
    resized = load_radiograph(m2, size=20)  # pad: 30 x 40 -> 15 x 20 centred in 20 x 20
    assert resized.array.shape == (20, 20) and resized.spacing == pytest.approx((0.4, 0.4))
    assert resized.array[:2].max() == 0.0 and resized.array[-2:].max() == 0.0


def test_dicom_without_window_uses_image_range_and_errors_name_file(tmp_path):
    r = load_radiograph(write_radiograph_dicom(tmp_path / "n.dcm", ramp()), size=None)
    assert r.array.min() == 0.0 and r.array.max() == 1.0
    ct = write_radiograph_dicom(tmp_path / "ct.dcm", ramp(), modality="CT")
    with pytest.raises(RadiographReadError, match="ct.dcm.*not a projection radiograph"):
        load_radiograph(ct)
    data = (tmp_path / "n.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 900])
    with pytest.raises(RadiographReadError, match="cut.dcm"):
        load_radiograph(tmp_path / "cut.dcm")
    with pytest.raises(RadiographReadError, match="constant"):
        load_radiograph(write_radiograph_dicom(tmp_path / "flat.dcm", np.full((8, 8), 7)))


def test_png_8_16_bit_jpeg_and_aspect(tmp_path):
    px = ramp() / 4000
    Image.fromarray(np.round(px * 65535).astype(np.uint16)).save(tmp_path / "a16.png")
    Image.fromarray(np.round(px * 255).astype(np.uint8)).save(tmp_path / "a8.png")
    Image.fromarray(np.round(px * 255).astype(np.uint8)).convert("RGB").save(tmp_path / "c.jpg", quality=95)
    for name, tol in (("a16.png", 1e-4), ("a8.png", 3e-3), ("c.jpg", 0.03)):
        np.testing.assert_allclose(load_radiograph(tmp_path / name, size=None).array, px, atol=tol)
    crop, _ = resize_square(px.astype(np.float32), 20, "crop")  # 30 x 40 -> 20 x 27, centre 20 columns
    stretch, _ = resize_square(px.astype(np.float32), 20, "stretch")
    assert crop.min() > 0.1 and stretch.min() < 0.05  # crop cut the dark left edge, stretch kept it
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 40)
    with pytest.raises(RadiographReadError, match="bad.png"):
        load_radiograph(tmp_path / "bad.png")


# ------------------------------------------------------------------------------------ networks
def torchvision_densenet121_keys() -> dict[str, tuple[int, ...]]:
    """torchvision's densenet121 state_dict names/shapes, written from the architecture."""
    keys: dict[str, tuple[int, ...]] = {"features.conv0.weight": (64, 3, 7, 7)}

    def bn(prefix: str, n: int) -> None:
        for s in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{prefix}.{s}"] = (n,)
        keys[f"{prefix}.num_batches_tracked"] = ()

    bn("features.norm0", 64)
    n = 64
    for b, layers in enumerate((6, 12, 24, 16), start=1):
        for i in range(1, layers + 1):
            p = f"features.denseblock{b}.denselayer{i}"
            bn(f"{p}.norm1", n)
            keys[f"{p}.conv1.weight"] = (128, n, 1, 1)
            bn(f"{p}.norm2", 128)
            keys[f"{p}.conv2.weight"] = (32, 128, 3, 3)
            n += 32
        if b < 4:
            bn(f"features.transition{b}.norm", n)
            keys[f"features.transition{b}.conv.weight"] = (n // 2, n, 1, 1)
            n //= 2
    bn("features.norm5", n)
    keys.update({"classifier.weight": (1000, n), "classifier.bias": (1000,)})
    return keys


def test_densenet121_matches_torchvision_layout(tmp_path):
    from genesis.weights import load_weights

    model = create_model("densenet121")
    expected = torchvision_densenet121_keys()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert len([k for k in got if not k.endswith("num_batches_tracked")]) == 606
    assert sum(p.numel() for p in model.parameters()) == 7_978_856  # torchvision's count
    # the released file uses torchvision's old names (denselayer1.norm.1); strict loading renames them
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): torch.full(s, 0.5) if s else
              torch.tensor(0) for k, s in expected.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "densenet121-legacy.pth")
    report = load_weights(model, tmp_path / "densenet121-legacy.pth", strict=True)
    assert report.ok and float(model.features.denseblock4.denselayer16.conv2.weight.detach().mean()) == 0.5
    x = torch.rand(2, 1, 3, 32, 32)  # a window of slices: one 2D pass per slice, as the 2D ResNets
    assert model.forward_features(x).shape == (2, 1024, 3, 1, 1)
    assert model.replace_head(14)(x[:, :, 0]).shape == (2, 14)
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        assert create_model("resnet152").layer3[35].conv3.weight.shape == (1024, 256, 1, 1)


def test_imagenet_manifests():
    from genesis.weights.manifest import WeightsSettings

    reg = WeightsSettings.from_env({}).registry()
    d = reg.get("densenet121.imagenet1k_v1")
    assert d.urls == ["https://download.pytorch.org/models/densenet121-a639ec97.pth"] and d.sha256_prefix == "a639ec97"
    assert d.architecture["name"] == "densenet121"
    assert reg.get("resnet152.imagenet1k_v1").sha256_prefix == "394f9c45"


# ------------------------------------------------------------------------------------ tasks
def test_barlow_twins_loss_matches_formula():
    from proxy_tasks.barlow_twins import barlow_twins_loss

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    n, d, lambd = 6, 4, 5e-3
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + 1e-5)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + 1e-5)
    total = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[k, i] * b[k, j]) for k in range(n)) / n
            total += (1 - c) ** 2 if i == j else lambd * c**2
    assert float(barlow_twins_loss(z1, z2, lambd)) == pytest.approx(total, rel=1e-5)
    assert float(barlow_twins_loss(z1, z1 * 3 + 1, lambd)) < float(barlow_twins_loss(z1, z2, lambd))


def test_barlow_twins_views_and_metadata_roundtrip():
    import proxy_tasks
    from genesis.data.radiographs import RadiographItem, decode_metadata, encode_metadata

    bt = proxy_tasks.build("barlow_twins", dim=8)
    batch = torch.rand(3, 1, 16, 16)
    pair = bt(batch, torch.Generator().manual_seed(1))
    assert pair.input.shape == (6, 1, 16, 16) and 0 <= float(pair.input.min()) <= float(pair.input.max()) <= 1
    assert not torch.equal(pair.input[:3], pair.input[3:])
    stack = encode_metadata(np.random.rand(16, 16).astype(np.float32), RadiographItem(None, 1.0, 64.0, None))
    images, labels = decode_metadata(torch.from_numpy(stack)[None, None])
    assert images.shape == (1, 1, 16, 16) and labels.tolist() == [[1.0, 64.0, -1.0]]
    task = proxy_tasks.build("metadata", augment=False)
    logits = torch.zeros(2, task.output_size(2), requires_grad=True)
    label = torch.tensor([[1.0, 60.0, -1.0], [-1.0, -1.0, 1.0]])  # unknowns leave their loss out
    loss = task.loss(logits, label)
    expected = float(torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(1), torch.ones(1))) + \
        float(torch.nn.functional.smooth_l1_loss(torch.zeros(1), torch.tensor([6.0]))) + float(np.log(2))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="metadata"):
        task(torch.rand(2, 1, 2, 16, 16))


# ------------------------------------------------------------------------------ CheXpert CSV
@pytest.fixture(scope="module")
def chexpert_csv(tmp_path_factory):
    """A CheXpert-layout CSV of 24 PNGs (32 px) with uncertain (-1) and blank labels."""
    from genesis.data.synthetic.radiograph import generate_radiograph

    root = tmp_path_factory.mktemp("chexpert")
    rows = []
    for i in range(24):
        r = generate_radiograph(i, size=32, ct_shape=(24, 40, 40))
        rel = f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view1_{r.view.lower()}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(r.image * 255).astype(np.uint8)).save(root / rel)
        cells = ["" if r.labels[o] is None else f"{r.labels[o]:.1f}" for o in CHEXPERT_OBSERVATIONS]
        rows.append([rel, r.sex, r.age, r.view, r.projection, *cells])
    csv_path = root / "CheXpert-v1.0-small" / "train.csv"
    with open(csv_path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS])
        w.writerows(rows)
    return csv_path


def test_chexpert_uncertainty_policies(chexpert_csv):
    from finetune.targets.chexpert import parse_label, read_chexpert_csv

    assert [parse_label(x, "ignore") for x in ("1.0", "0.0", "")] == [1.0, 0.0, 0.0]
    assert np.isnan(parse_label("-1.0", "ignore"))
    assert parse_label("-1.0", "ones") == 1.0 and parse_label("-1.0", "zeros") == 0.0
    rows, _ = read_chexpert_csv(chexpert_csv)
    assert any(r["Lung Lesion"] == "-1.0" for r in rows) and any(r["Cardiomegaly"] == "" for r in rows)


def _finetune(out, csv_path, **kw):
    from finetune.config import FinetuneConfig
    from finetune.engine import run_finetune

    weight_decay = kw.pop("weight_decay", 0.0)
    cfg = FinetuneConfig(target="chexpert", data=str(csv_path), out=str(out), crop=(1, 32, 32), epochs=1,
                         steps_per_epoch=1, batch_size=4, device="cpu", **kw)
    cfg.optim.weight_decay = weight_decay
    cfg.evaluation.bootstrap_resamples = 20
    return run_finetune(cfg, log=lambda *_: None)


@pytest.mark.slow
def test_pretrain_then_finetune_chexpert(chexpert_csv, tmp_path, monkeypatch):
    from genesis.training.config import PretrainConfig
    from genesis.training.pretrain import run_pretraining

    def pretrain(task, out):
        cfg = PretrainConfig(task=task, model="densenet121", out=str(out), epochs=1, steps_per_epoch=1,
                             batch_size=4, device="cpu", task_params={"dim": 16} if task == "barlow_twins" else {})
        cfg.data.data, cfg.data.image_size, cfg.data.val_cubes = str(chexpert_csv), 32, 4
        cfg.log.progress = cfg.log.tensorboard = cfg.log.grids = False
        return run_pretraining(cfg)

    bt = pretrain("barlow_twins", tmp_path / "bt")
    ckpt = torch.load(bt.best_path, weights_only=True)
    assert ckpt["model_kwargs"]["encoder"] == "densenet121" and ckpt["dims"] == 2 and not ckpt["synthetic"]
    md = pretrain("metadata", tmp_path / "md")
    assert torch.load(md.last_path, weights_only=True)["model_kwargs"]["num_classes"] == 4  # sex 1 + age 1 + view 2

    scratch = _finetune(tmp_path / "scratch", chexpert_csv, init="scratch", weight_decay=1e-4)
    m = _finetune(tmp_path / "bt-ft", chexpert_csv, weights=str(bt.best_path), uncertain="ones",
                  compare=str(tmp_path / "scratch"))
    for metrics in (scratch, m):
        assert metrics["primary_metric"] == "mean_auc_competition" and metrics["model"] == "densenet121"
        agg = metrics["label_fractions"][0]["aggregate"]
        assert {"mean_auc_competition", "auc_pleural_effusion", "auc_cardiomegaly"} <= set(agg)
    assert m["comparison"] is not None and (tmp_path / "bt-ft" / "metrics.png").is_file()
    result = json.loads(next((tmp_path / "bt-ft").rglob("result.json")).read_text())
    assert result["transfer"]["loaded"] > 600 and len(result["test_units"]["columns"]) == 14

    # --weights densenet121.imagenet1k_v1 through a local manifest (file://), never the network
    state = {k: v + 0.1 if v.is_floating_point() else v for k, v in create_model("densenet121").state_dict().items()}
    path = tmp_path / "densenet121-local.pth"
    torch.save(state, path)
    entry = {"name": "densenet121.imagenet1k_v1", "urls": [path.as_uri()], "sha256": sha256_file(path),
             "format": "torchvision", "architecture": {"name": "densenet121", "args": {"num_classes": 1000}}}
    (tmp_path / "local.yaml").write_text(yaml.safe_dump(entry))
    monkeypatch.setenv("GENESIS_WEIGHTS_REGISTRY", str(tmp_path / "local.yaml"))
    monkeypatch.setenv("GENESIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GENESIS_OFFLINE", raising=False)
    imagenet = _finetune(tmp_path / "in-ft", chexpert_csv, weights="densenet121.imagenet1k_v1", study_max=True)
    assert imagenet["weights_source"].startswith("densenet121.imagenet1k_v1")


_DDP_SCRIPT = r'''
import sys, torch, torch.distributed as dist
from proxy_tasks.barlow_twins import barlow_twins_loss
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
x1, x2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
w = torch.nn.Parameter(torch.randn(5, 3, generator=g))
half = slice(rank * 4, rank * 4 + 4)
loss = barlow_twins_loss(x1[half] @ w, x2[half] @ w)
loss.backward()
dist.all_reduce(w.grad)
w.grad /= world  # what DDP does with parameter gradients
if rank == 0:
    torch.save({"loss": loss.detach(), "grad": w.grad}, sys.argv[1])
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_barlow_twins_ddp_uses_the_global_batch(tmp_path):
    """Two gloo ranks with half the batch each give the loss and gradient of the whole batch."""
    import os
    import subprocess
    import sys

    from proxy_tasks.barlow_twins import barlow_twins_loss

    script = tmp_path / "bt_ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path / "out.pt")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    w = torch.nn.Parameter(torch.randn(5, 3, generator=g))
    loss = barlow_twins_loss(x1 @ w, x2 @ w)
    loss.backward()
    assert float(got["loss"]) == pytest.approx(float(loss.detach()), rel=1e-5)
    torch.testing.assert_close(got["grad"], w.grad, rtol=1e-4, atol=1e-6)


def test_cli_flags_reach_the_configs():
    from genesis.cli.finetune import build_parser, config_from_args
    from genesis.cli.pretrain import build_parser as pretrain_parser
    from genesis.cli.pretrain import overrides_from_args

    args = build_parser().parse_args(["--target", "chexpert", "--uncertain", "ones", "--weight-decay", "1e-4",
                                      "--study-max", "--crop", "1", "320", "320"])
    cfg = config_from_args(args)
    assert (cfg.uncertain, cfg.optim.weight_decay, cfg.study_max, tuple(cfg.crop)) == ("ones", 1e-4, True, (1, 320, 320))
    o = overrides_from_args(pretrain_parser().parse_args(["--modality", "xray", "--image-size", "320"]))
    assert o["data.modality"] == "xray" and o["data.image_size"] == 320


def test_radiograph_sources(tmp_path):
    from genesis.data.radiographs import RadiographSource, decode_metadata, find_radiographs, is_radiograph_data

    write_radiograph_dicom(tmp_path / "dx" / "a.dcm", ramp(), window=(2000, 2000), sex="M", age=70, view="LL")
    assert not is_radiograph_data(tmp_path / "dx")  # DICOM may be CT: radiographs need --modality xray
    source = RadiographSource(find_radiographs(tmp_path / "dx"), image_size=32, with_metadata=True)
    images, labels = decode_metadata(torch.from_numpy(source.load(0))[None, None])
    assert images.shape == (1, 1, 32, 32) and labels.tolist() == [[1.0, 70.0, 1.0]]  # from the header
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "dx" / "b.png")
    assert is_radiograph_data(tmp_path / "dx")
    (tmp_path / "dx" / "scan.nii.gz").write_bytes(b"")  # a CT folder with PNG montages stays CT
    assert not is_radiograph_data(tmp_path / "dx")
