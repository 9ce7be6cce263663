"""2D slice-based and 2.5D orthogonal NCS (finetune.slicewise): planes, stacking, the CLI run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune.data import SegCase
from finetune.slicewise import SliceInput
from genesis.cli.finetune import build_parser, config_from_args, main


def test_training_planes_match_their_masks_along_every_axis():
    rng = np.random.default_rng(0)
    volume = rng.random((12, 20, 24)).astype(np.float32)
    # the mask is the image itself, so the middle input channel must equal the target mask
    case = SegCase(image=volume, mask=volume, name="c", centers=[(6, 10, 12)])
    sl = SliceInput("orthogonal", 3, volume_crop=(8, 16, 16), plane=(16, 16))
    images, masks = sl.sample([case], 12, np.random.default_rng(1))
    assert images.shape == (12, 3, 16, 16) and masks.shape == (12, 1, 16, 16)
    assert torch.equal(images[:, 1], masks[:, 0])


@pytest.mark.parametrize("view,context", [("axial", 1), ("axial", 3), ("orthogonal", 3)])
def test_stacked_prediction_is_aligned_with_the_volume(view, context):
    volume = np.random.default_rng(2).random((6, 9, 11)).astype(np.float32)
    sl = SliceInput(view, context, volume_crop=(8, 8, 8), plane=(8, 8))
    seen = []

    def middle_channel(planes: np.ndarray) -> np.ndarray:  # a "network" echoing its plane
        seen.append(planes.shape)
        return planes[:, context // 2]

    assert np.allclose(sl.predict(volume, middle_channel), volume)
    assert [s[0] for s in seen] == [6, 9, 11][: len(sl.axes)] and all(s[1] == context for s in seen)


def _run(tmp_path, name, *flags):
    out = tmp_path / name
    code = main(["--target", "ncs", "--preset", "quick", "--crop", "16", "16", "--epochs", "1",
                 "--steps-per-epoch", "1", "--device", "cpu", "--out", str(out), *flags,
                 "--set", "synthetic.n_train=1", "--set", "synthetic.n_val=1", "--set", "synthetic.n_test=1",
                 "--set", "synthetic.shape=[48, 64, 64]", "--set", "precise_bn_batches=1",
                 "--set", "evaluation.bootstrap_resamples=20", "--set", "evaluation.region_scale=1"])
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("flags,view,channels", [
    (("--dims", "2"), "axial", 1),
    (("--view", "orthogonal", "--channels", "neighbors"), "orthogonal", 3),
])
def test_ncs_2d_and_2_5d_through_the_cli(tmp_path, flags, view, channels):
    if view == "axial":  # a genesis-pretrain --dims 2 checkpoint (unet2d, one channel) loads as it is
        from genesis.models import create_model
        from genesis.training.checkpoint import save_checkpoint

        weights = tmp_path / "best.pt"
        save_checkpoint({"model": create_model("unet2d", base_width=2).state_dict(), "model_name": "unet2d",
                         "model_kwargs": {"base_width": 2}, "epoch": 1}, weights)
        flags = (*flags, "--weights", str(weights))
    out, metrics = _run(tmp_path, view, *flags)
    if view == "axial":
        report = json.loads((out / "load_report.json").read_text())
        assert report["loaded"] and not report["missing"] and not report["inflated_2d_to_3d"]
    assert metrics["model"] == "unet2d" and metrics["spatial_dims"] == 2
    assert metrics["model_kwargs"]["in_channels"] == channels
    assert ("2D slice-based" if view == "axial" else "2.5D orthogonal") in metrics["evaluation"]
    dice = metrics["label_fractions"][0]["aggregate"]["dice"]["mean"]
    assert 0.0 <= dice <= 1.0
    state = torch.load(out / "fraction-1" / "seed-0" / "best.pt", weights_only=True)["model"]
    assert all(v.dim() == 4 for k, v in state.items() if k.endswith("conv1.weight"))  # a 2D network
    # the test units are the same 3D regions as the 3D model's (one per test nodule)
    result = json.loads((out / "fraction-1" / "seed-0" / "result.json").read_text())
    assert all("/nodule-" in n for n in result["test_units"]["names"])


def test_view_options_are_checked(tmp_path):
    args = build_parser().parse_args(["--target", "ncs", "--dims", "2", "--preset", "quick"])
    assert tuple(config_from_args(args).crop) == (32, 32)  # the quick crop's plane
    base = ["--target", "ncs", "--device", "cpu", "--preset", "quick"]  # checked before any data or training
    assert main([*base, "--view", "axial", "--dims", "3", "--out", str(tmp_path / "a")]) == 2
    assert main([*base, "--view", "axial", "--channels", "windows", "--out", str(tmp_path / "b")]) == 2
    assert main([*base, "--channels", "neighbors", "--out", str(tmp_path / "c")]) == 2  # the 3D U-Net: no
