"""``genesis-pretrain --prepare-only``: fills the volume cache in parallel, resumably, then exits."""

from __future__ import annotations

from pathlib import Path

from genesis.cli.pretrain import main

SMALL = ["--no-progress", "--crop", "16", "32", "32", "--set", "data.synthetic_shape=[32,64,64]",
         "--set", "data.synthetic_volumes=3"]


def test_prepare_only_builds_then_skips_valid_entries(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    assert main([*SMALL, "--prepare-only", "--workers", "2", "--cache-dir", str(cache)]) == 0
    err = capsys.readouterr().err
    assert f"volume cache: {cache}" in err and "3 volumes ready (3 built, 0 already valid)" in err
    entries = sorted(cache.glob("arrays/*/*.npy"))
    assert len(entries) == 3 and all(e.with_suffix(".json").is_file() for e in entries)
    maps = sorted(cache.glob("acceptance/*/*.npy"))  # the sampler's acceptance maps: meta + map per volume
    assert len(maps) == 6 and all(m.with_suffix(".json").is_file() for m in maps)
    entries[0].write_bytes(entries[0].read_bytes()[:-64])  # an interrupted copy: truncated
    assert main([*SMALL, "--prepare-only", "--workers", "0", "--cache-dir", str(cache)]) == 0
    assert "3 volumes ready (1 built, 2 already valid)" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained


def test_prepare_only_needs_the_cache(tmp_path: Path, capsys) -> None:
    assert main([*SMALL, "--prepare-only", "--no-cache"]) == 2
    assert "cannot be combined with --no-cache" in capsys.readouterr().err
