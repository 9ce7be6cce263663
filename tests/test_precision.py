"""--precision: the rules of ``auto``, and bf16 training that runs, stays finite and restores as fp32."""

from __future__ import annotations

import pytest
import torch

import genesis.device as device_module
from genesis.device import autocast, needs_grad_scaler, resolve_precision
from genesis.errors import ConfigError
from genesis.models import create_model, unpack_output

CPU = torch.device("cpu")


def test_auto_rules_and_impossible_choices(monkeypatch) -> None:
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "fp32"  # bf16 on a CPU only when asked for
    assert "NaN" in device_module.describe_precision("bf16", CPU)
    assert resolve_precision("auto", CPU, amp=False) == "fp32"  # --no-amp
    monkeypatch.setattr(device_module, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU, amp=False) == "bf16"  # an explicit choice wins
    assert "15x slower" in device_module.describe_precision("bf16", CPU)  # with the measured reason
    assert device_module.describe_precision("fp32", CPU) == "precision: fp32 on cpu"
    assert not needs_grad_scaler(CPU, True, "bf16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="precision must be"):
        resolve_precision("fp8", CPU)
    with autocast(CPU, True, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")


def _restoration_mse_after_training(precision: str) -> tuple[float, list[float]]:
    """A width-2 U-Net trained 6 Adam steps to restore noisy cubes; MSE on held-out cubes in fp32."""
    gen = torch.Generator().manual_seed(0)
    clean = torch.rand((4, 1, 16, 16, 16), generator=gen)
    noisy = (clean + 0.2 * torch.randn(clean.shape, generator=gen)).clamp(0, 1)
    torch.manual_seed(0)
    model = create_model("unet3d", in_channels=1, out_channels=1, base_width=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        with autocast(CPU, True, precision):
            logits = unpack_output(model(noisy[:2])).output
        loss = torch.mean((torch.sigmoid(logits.float()) - clean[:2]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        restored = torch.sigmoid(unpack_output(model(noisy[2:])).output.float())
    return float(torch.mean((restored - clean[2:]) ** 2)), losses


def test_bf16_training_is_finite_and_restores_like_fp32() -> None:
    fp32, fp32_losses = _restoration_mse_after_training("fp32")
    bf16, bf16_losses = _restoration_mse_after_training("bf16")
    finite = all(torch.isfinite(torch.tensor([*bf16_losses, bf16])))
    if not finite and device_module.cpu_supports_bf16():
        # the measured torch 2.13 defect on native-bf16 CPUs (AVX512-BF16): batch norm goes NaN,
        # in the losses (7 of 20 runs here) or only in the running statistics, so that the
        # held-out MSE is NaN while every loss was finite (1 of 20); it is why --precision auto
        # keeps fp32 on every CPU and bf16 on a CPU warns
        pytest.xfail("torch 2.13 bf16 batch norm gives NaN on this native-bf16 CPU")
    assert finite
    assert bf16_losses[-1] < bf16_losses[0]  # it learns
    assert abs(bf16 - fp32) / fp32 < 0.03, (bf16, fp32)


def test_pretrain_cli_runs_in_bf16(tmp_path, capsys) -> None:
    from genesis.cli.pretrain import main

    out = tmp_path / "bf16"
    code = main(["--precision", "bf16", "--steps-per-epoch", "2", "--batch-size", "2", "--width", "2",
                 "--crop", "16", "32", "32", "--device", "cpu", "--no-progress", "--epochs", "1",
                 "--set", "data.synthetic_shape=[32,64,64]", "--set", "data.synthetic_volumes=2",
                 "--set", "data.val_cubes=2", "--set", "log.grids=false", "--out", str(out)])
    err = capsys.readouterr().err
    assert "precision: bf16 autocast on cpu" in err and "warning: " in err  # said, with the measured reason
    if code == 2 and "diverged" in err and device_module.cpu_supports_bf16():
        # the measured torch 2.13 defect on native-bf16 CPUs: stopped as divergence, nothing written
        assert not (out / "last.pt").exists()
        pytest.xfail("torch 2.13 bf16 batch norm gave NaN on this native-bf16 CPU (stopped as divergence)")
    assert code == 0
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["config"]["precision"] == "bf16"
