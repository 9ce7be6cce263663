"""End-to-end pretraining through ``genesis-pretrain`` on tiny synthetic settings (CPU)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from genesis.cli.pretrain import main
from genesis.fileio import atomic_write
from genesis.models import create_model
from genesis.training import engine
from genesis.training.checkpoint import load_checkpoint

TINY = [
    "--steps-per-epoch", "3", "--batch-size", "2", "--width", "2", "--crop", "16", "32", "32",
    "--device", "cpu", "--no-progress",
    "--set", "data.synthetic_shape=[32,64,64]", "--set", "data.synthetic_volumes=3", "--set", "data.val_cubes=4",
    "--set", "log.grid_samples=2",
]


def run_cli(out: Path, *extra: str) -> None:
    assert main([*TINY, "--out", str(out), *extra]) == 0


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "full"
    run_cli(out, "--task", "combined", "--epochs", "2")
    return out


def test_run_writes_checkpoints_config_log_and_grids(two_epochs: Path) -> None:
    out = two_epochs
    for name in ("last.pt", "best.pt", "config.yaml", "log.csv", "grids/epoch_0001.png", "grids/epoch_0002.png"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "epoch", "rng", "config", "task", "model_name", "model_kwargs",
                "synthetic", "metrics"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 2 and ckpt["task"] == "combined" and ckpt["synthetic"] is True
    assert ckpt["model_name"] == "unet3d"
    assert ckpt["config"]["optim"]["momentum"] == 0.9  # the paper's SGD unless overridden
    # usable by fine-tuning: the network rebuilds from the checkpoint alone
    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_mse", "lr", "samples_per_s"} <= set(rows[0])
    assert all(float(r["train_loss"]) > 0 for r in rows)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["task"] == "combined" and saved["data"]["crop"] == [16, 32, 32] and saved["width"] == 2
    assert (out / "SYNTHETIC.txt").is_file()


def test_resume_reproduces_uninterrupted_weights(two_epochs: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    run_cli(out, "--task", "combined", "--epochs", "1")
    first = weights(out / "last.pt")
    run_cli(out, "--task", "combined", "--epochs", "2", "--resume")
    resumed, full = weights(out / "last.pt"), weights(two_epochs / "last.pt")
    assert resumed.keys() == full.keys()
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    assert not all(torch.equal(first[k], full[k]) for k in full)  # epoch 2 did train
    log = list(csv.DictReader((out / "log.csv").open()))
    assert [int(r["epoch"]) for r in log] == [1, 2]


def test_loader_workers_do_not_change_the_result(two_epochs: Path, tmp_path: Path) -> None:
    out = tmp_path / "workers"
    run_cli(out, "--task", "combined", "--epochs", "2", "--workers", "2")
    with_workers, full = weights(out / "last.pt"), weights(two_epochs / "last.pt")
    assert all(torch.equal(with_workers[k], full[k]) for k in full)


def test_failed_checkpoint_write_keeps_previous_file(tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    run_cli(out, "--task", "masked_region", "--epochs", "1")
    before = weights(out / "last.pt")

    def broken_save(state, path):  # dies halfway through writing, like a full disk or a kill
        def write(tmp: Path) -> None:
            tmp.write_bytes(b"PK\x03\x04 partial")
            raise OSError("disk full")

        atomic_write(path, write)

    monkeypatch.setattr(engine, "save_checkpoint", broken_save)
    # even an OSError without errno is one line naming the checkpoint, exit 2 (issue 12)
    assert main([*TINY, "--out", str(out), "--task", "masked_region", "--epochs", "2", "--resume"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "disk full" in line and ".pt" in line and "is kept" in line
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.equal(ckpt["model"][k], before[k]) for k in before)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_sigkill_leaves_loadable_last_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "genesis.cli.pretrain", *TINY, "--out", str(out), "--task", "masked_region",
           "--epochs", "1000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "last.pt").is_file():
            time.sleep(0.05)
        assert (out / "last.pt").is_file(), "no checkpoint within 60 s"
        time.sleep(0.3)  # likely mid-way through a later epoch or checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] >= 1 and "model" in ckpt


def test_masked_curriculum_trains_stages_in_turn(tmp_path: Path) -> None:
    out = tmp_path / "curriculum"
    run_cli(out, "--task", "masked_curriculum", "--dims", "2", "--epochs", "1",
            "--set", "task_params.fractions=[0.05,0.2]")
    for stage in ("stage1", "stage2"):
        assert (out / stage / "best.pt").is_file()
    top = load_checkpoint(out / "best.pt")
    assert top["task"] == "masked_curriculum" and top["model_name"] == "unet2d" and top["stage"] == 1
    s1, s2 = weights(out / "stage1" / "best.pt"), weights(out / "stage2" / "best.pt")
    assert all(torch.equal(top["model"][k], s2[k]) for k in s2)
    assert not all(torch.equal(s1[k], s2[k]) for k in s1)
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [r["stage"] for r in rows] == ["1", "2"]


def test_masked_curriculum_resume_matches_uninterrupted(tmp_path: Path) -> None:
    args = ["--task", "masked_curriculum", "--dims", "2", "--set", "task_params.fractions=[0.05,0.2]"]
    run_cli(tmp_path / "full", *args, "--epochs", "2")
    run_cli(tmp_path / "resumed", *args, "--epochs", "1")
    # stage 1 trains a second epoch, so stage 2 must start over from stage 1's new weights
    run_cli(tmp_path / "resumed", *args, "--epochs", "2", "--resume")
    full, resumed = weights(tmp_path / "full" / "best.pt"), weights(tmp_path / "resumed" / "best.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_label_task_trains_encoder_classifier(tmp_path: Path) -> None:
    out = tmp_path / "rotation"
    run_cli(out, "--task", "rotation", "--dims", "2", "--epochs", "1", "--optimizer", "adam", "--lr", "1e-3")
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["model_name"] == "encoder_classifier" and ckpt["model_kwargs"]["num_classes"] == 4
    assert "val_ce" in ckpt["metrics"] and 0.0 <= ckpt["metrics"]["val_acc"] <= 1.0


def test_deepcluster_hook_gets_features_each_epoch(tmp_path: Path) -> None:
    out = tmp_path / "deepcluster"
    run_cli(out, "--task", "deepcluster", "--epochs", "2", "--optimizer", "adam", "--lr", "1e-3",
            "--set", "task_params.k=3")
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["model_kwargs"]["num_classes"] == 3 and ckpt["epoch"] == 2
    # too few samples for k clusters is a user error with a clear message, not a traceback
    assert main([*TINY, "--out", str(tmp_path / "bad"), "--task", "deepcluster", "--epochs", "1"]) == 2


def test_vqvae_on_tariq_task_uses_composite_loss(tmp_path: Path) -> None:
    out = tmp_path / "vq"
    run_cli(out, "--task", "denoise_sp", "--dims", "2", "--model", "vqvae", "--epochs", "1",
            "--set", "model_kwargs.num_embeddings=16", "--set", "model_kwargs.embedding_dim=8")
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["loss"] == "composite" and ckpt["model_name"] == "vqvae"
    model = create_model("vqvae", **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])


def test_user_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main([*TINY, "--out", str(tmp_path / "x"), "--task", "no_such_task"]) == 2
    assert "no_such_task" in capsys.readouterr().err
    assert main([*TINY, "--out", str(tmp_path / "y"), "--data", str(tmp_path / "missing")]) == 2
    assert main([*TINY, "--out", str(tmp_path / "z"), "--resume"]) == 2


def test_resume_of_a_finished_run_says_so_and_collapse_columns_are_logged(two_epochs: Path, capsys) -> None:
    before = (two_epochs / "last.pt").stat().st_mtime_ns
    assert main([*TINY, "--out", str(two_epochs), "--task", "combined", "--epochs", "2", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "already at epoch 2 of 2" in err and "done" in err
    assert (two_epochs / "last.pt").stat().st_mtime_ns == before  # nothing retrained or rewritten
    rows = list(csv.DictReader((two_epochs / "log.csv").open()))
    assert all(float(r["val_mean_mse"]) > 0 and float(r["val_output_std"]) >= 0 for r in rows)
    assert "collapse" in rows[0]
    # a second run into the same folder without --resume/--overwrite is refused in one line
    assert main([*TINY, "--out", str(two_epochs), "--task", "combined", "--epochs", "2"]) == 2
    assert "already holds a run" in capsys.readouterr().err
