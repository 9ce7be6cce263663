"""A failed atomic write (a full disk...) names the file being written, keeps the previous one, and
stays an OSError for the callers that catch one."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from genesis.cli._common import user_errors_exit
from genesis.errors import CheckpointError, FileWriteError, GenesisError
from genesis.fileio import atomic_path, atomic_write_json, atomic_write_text


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _only_target(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("where", ["writer", "fsync"])
def test_disk_full_names_the_destination_and_keeps_the_old_file(tmp_path, monkeypatch, where) -> None:
    target = tmp_path / "report.json"
    atomic_write_text(target, "old")
    if where == "fsync":  # delayed allocation: the write succeeds, the flush to disk fails
        monkeypatch.setattr(os, "fsync", _enospc)
        write = lambda: atomic_write_json(target, {"a": 1})  # noqa: E731
    else:
        def write() -> None:
            with atomic_path(target) as tmp, open(tmp, "w") as handle:
                handle.write("half")
                _enospc()
    with pytest.raises(FileWriteError) as info:
        write()
    error = info.value
    assert isinstance(error, GenesisError) and isinstance(error, OSError) and error.errno == errno.ENOSPC
    assert error.path == target and error.filename == str(target)
    assert str(error) == f"{target}: cannot write the file (No space left on device); the previous report.json is kept"
    assert target.read_text() == "old" and _only_target(tmp_path) == ["report.json"]  # no temporary left


def test_unwritable_folder_and_other_files_are_named(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FileWriteError, match=r"file/out.txt: cannot write the file .*nothing was written"):
        atomic_write_text(blocker / "out.txt", "y")  # its folder is a file
    source = tmp_path / "missing.bin"
    with pytest.raises(FileWriteError, match=f"out.txt: cannot write the file .*: {source}"):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_bytes(source.read_bytes())  # the writer's own input is missing: say which


def test_disk_full_is_one_line_at_the_cli(tmp_path, monkeypatch, capsys) -> None:
    target = tmp_path / "runs" / "metrics.json"
    monkeypatch.setattr(os, "fsync", _enospc)

    @user_errors_exit
    def main() -> None:
        atomic_write_json(target, {"dice": 0.5})

    assert main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {target}: cannot write the file (No space left on device); nothing was written"]


def test_checkpoint_write_errors_keep_their_type_and_message(tmp_path, monkeypatch) -> None:
    from genesis.training.checkpoint import save_checkpoint

    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", _enospc)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({"epoch": 2}, path)
    assert str(info.value) == f"{path}: cannot write checkpoint (No space left on device); the previous last.pt is kept"
