"""DDP through torchrun: two CPU processes with the gloo backend train one model."""

from __future__ import annotations

import pytest

import os
import subprocess
import sys
from pathlib import Path

import torch

from genesis.training.checkpoint import load_checkpoint


@pytest.mark.slow
def test_two_cpu_processes_train_in_sync(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        # --standalone: a local rendezvous on a free port (no port races between test runs)
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "genesis.cli.pretrain",
        "--task", "combined", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--width", "2",
        "--crop", "16", "32", "32", "--device", "cpu", "--no-progress", "--out", str(out),
        "--set", "data.synthetic_shape=[32,64,64]", "--set", "data.synthetic_volumes=2", "--set", "data.val_cubes=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr  # both ranks left the process group cleanly
    assert proc.stderr.count("epoch 1/1  train_loss") == 1  # --no-progress: one line per epoch, rank 0 only
    assert proc.stderr.count("per-scan details:") == 1 and (out / "data.csv").is_file()
    # the engine all-gathers a weight checksum from every rank and refuses to finish if they differ
    assert "2 processes finished with identical weights" in proc.stderr
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"]["batch_size"] == 2
    assert ckpt["global_step"] == 2  # each rank took 2 steps on its own half of the cube keys
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert (out / "log.csv").read_text().count("\n") == 2  # rank 0 alone wrote the log
