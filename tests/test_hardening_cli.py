"""No false success: impossible settings, diverged training, full disks and worker errors end in
one line on stderr and exit code 2, and never replace a good checkpoint."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
import torch

from genesis.cli._common import one_line, user_errors_exit
from genesis.cli.pretrain import main
from genesis.config import load_config
from genesis.errors import ConfigError, VolumeReadError
from genesis import checkpoint as checkpoint_module
from genesis.training.config import PretrainConfig
from genesis.training.engine import nonfinite_tensors

TINY = [
    "--steps-per-epoch", "1", "--batch-size", "2", "--width", "2", "--crop", "8", "16", "16", "--device", "cpu",
    "--no-progress", "--task", "masked_region", "--set", "data.synthetic_shape=[16,32,32]",
    "--set", "data.synthetic_volumes=2", "--set", "data.val_cubes=2", "--set", "log.grids=false",
    "--set", "log.tensorboard=false",
]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    # the run's progress lines (precision, cache, data table) may come first; the error is the last
    # line, on its own, with no traceback
    assert err and err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    assert sum(line.startswith("error: ") for line in err) == 1, err
    return err[-1]


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--seed", "-1"], "seed"),
        (["--workers", "-1"], "data.workers"),
        (["--lr", "nan"], "optim.lr"),
        (["--lr", "inf"], "optim.lr"),
        (["--set", "optim.momentum=-1"], "optim.momentum"),
        (["--set", "early_stop.patience=-1"], "early_stop.patience"),
        (["--set", "early_stop.patience=0"], "early_stop.patience"),
        (["--set", "data.window=[1000, -1000]"], "data.window"),
        (["--crop", "512", "512", "512", "--batch-size", "64", "--width", "64"], "needs at least"),
    ],
)
def test_impossible_settings_are_one_line_errors(tmp_path, capsys, flags, fragment) -> None:
    assert main([*TINY, "--out", str(tmp_path / "run"), *flags]) == 2
    assert fragment in error_line(capsys)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_config_file_errors(tmp_path, capsys) -> None:
    assert main(["--config", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    assert "is a directory" in error_line(capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: six\n")
    assert main(["--config", str(bad), "--preset", "quick", "--out", str(tmp_path / "run")]) == 2
    assert "bad.yaml" in error_line(capsys)  # the preset's batch_size does not hide it
    laughs = tmp_path / "laughs.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    lines += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    laughs.write_text("\n".join(lines) + "\ntask_params: {k: *i}\n")
    with pytest.raises(ConfigError, match="aliases"):
        load_config(PretrainConfig, laughs)
    (tmp_path / "file").write_text("x")
    assert main([*TINY, "--out", str(tmp_path / "file")]) == 2
    assert "existing file" in error_line(capsys)


def test_worker_errors_unwrap_to_the_original_line(capsys) -> None:
    from torch._utils import ExceptionWrapper

    try:
        raise VolumeReadError("cannot read the pixel data, truncated or corrupt?", "/data/a.nii.gz")
    except VolumeReadError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")

    @user_errors_exit
    def cli() -> int:
        wrapped.reraise()  # what the DataLoader does in the main process
        return 0

    assert cli() == 2
    assert error_line(capsys) == "error: /data/a.nii.gz: cannot read the pixel data, truncated or corrupt?"

    @user_errors_exit
    def full_disk() -> int:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/log.csv")

    assert full_disk() == 2
    assert "No space left on device" in error_line(capsys)
    assert one_line(ConfigError("line one\n  line two")) == "line one line two"


def test_divergence_full_disk_and_stale_temporaries_keep_the_good_checkpoint(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out), "--epochs", "1"]) == 0
    good = {name: (out / name).read_bytes() for name in ("best.pt", "last.pt")}
    assert "sampler: the Models Genesis rule accepts" in capsys.readouterr().err  # the run log reports it
    assert "mean" in torch.load(out / "last.pt", weights_only=True)["sampler_acceptance"]

    # a huge learning rate: non-finite loss or weights -> exit 2, no checkpoint of diverged weights
    # (a fresh --out: --resume refuses changed settings, and a finished run needs --resume/--overwrite)
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    (diverged / ".last.pt.k1ll3d.tmp").write_bytes(b"left by a killed write")
    assert main([*TINY, "--out", str(diverged), "--epochs", "2", "--optimizer", "sgd", "--lr", "1e30"]) == 2
    line = error_line(capsys)
    assert "diverged" in line and "step" in line
    assert not (diverged / "best.pt").exists() and not (diverged / "last.pt").exists()
    assert not list(diverged.glob(".*.tmp"))  # removed at the start of the run

    # disk full while writing the next checkpoint -> one line, the previous one kept
    def no_space(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", no_space)
    assert main([*TINY, "--out", str(out), "--epochs", "2", "--resume"]) == 2
    assert "No space left on device" in error_line(capsys)
    monkeypatch.undo()
    assert {name: (out / name).read_bytes() for name in good} == good
    assert not list(out.glob(".*.tmp"))

    # --resume where only best.pt is left says so
    only_best = tmp_path / "only_best"
    only_best.mkdir()
    shutil.copy(out / "best.pt", only_best / "best.pt")
    assert main([*TINY, "--out", str(only_best), "--resume"]) == 2
    assert "only best.pt" in error_line(capsys)


def test_nonfinite_weights_are_counted() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    assert nonfinite_tensors(net)[0] == 0
    with torch.no_grad():
        net[0].weight[0, 1] = float("inf")
        net[1].running_var[0] = float("nan")
    bad, total, names = nonfinite_tensors(net)
    assert bad == 2 and names == ["0.weight", "1.running_var"] and total == 16  # int num_batches_tracked not counted
