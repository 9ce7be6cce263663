"""A researcher's first hour (issue 16): what data a run used, results to trust, nothing silently lost,
fast and clear feedback. Everything here runs without training (a few seconds in all)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from genesis.config import save_config
from genesis.data.discovery import discover_scans, inspect_records
from genesis.data.public.folder import VolumeRecord, find_volumes
from genesis.errors import CheckpointError, ConfigError, DatasetLayoutError
from genesis.io import Volume, save_volume, write_dicom_series
from genesis.training import rundir
from genesis.training.collapse import baseline_sums, collapse_note, final_warning
from genesis.training.config import PretrainConfig

ROOT = Path(__file__).resolve().parents[1]


def _ct(shape=(16, 32, 32), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(-400, 300, shape).astype(np.float32)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_volume(Volume(array=array, spacing=(1.0, 1.0, 1.0)), path)
    return path


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    """A folder as a user has it: real scans behind symlinks (with a loop), a suffix-less DICOM series,
    a label map named like a scan, an 8-bit image, a tiny scan and a damaged file."""
    store = tmp_path / "store"
    _save(store / "a" / "ct1.nii.gz", _ct(seed=1))
    _save(store / "a" / "ct2.nrrd", _ct(seed=2))
    labels = np.zeros((16, 32, 32), np.float32)
    labels[4:12, 8:24, 8:24] = 1
    labels[6:10, 12:20, 12:20] = 3
    _save(store / "a" / "lungs.nii.gz", labels)  # a label map by content, not by name
    _save(store / "a" / "photo.nii.gz", np.random.default_rng(3).integers(0, 256, (16, 32, 32)).astype(np.float32))
    _save(store / "a" / "tiny.nii.gz", _ct((4, 8, 8), seed=4))
    (store / "a" / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    files = write_dicom_series(Volume(array=_ct((6, 32, 32), seed=5), spacing=(2.0, 1.0, 1.0)), store / "dicom")
    for f in files:  # DICOM without a suffix: recognised by content
        f.rename(f.with_suffix(""))
    _save(store / "masks" / "ct1.nii.gz", labels)  # a label folder
    data = tmp_path / "data"
    data.mkdir()
    (data / "linked").symlink_to(store / "a", target_is_directory=True)
    (data / "series").symlink_to(store / "dicom", target_is_directory=True)
    (data / "masks").symlink_to(store / "masks", target_is_directory=True)
    (store / "a" / "loop").symlink_to(data, target_is_directory=True)  # a link loop
    return data


def test_discovery_follows_symlinks_finds_dicom_by_content_and_says_why_it_skips(scans: Path, tmp_path: Path) -> None:
    report = discover_scans(scans, crop=(8, 32, 32))
    by_name = {Path(s.record.path).name: s for s in report.scans}
    used = sorted(Path(s.record.path).name for s in report.used)
    assert used == ["ct1.nii.gz", "ct2.nrrd", "series"]  # through links; the DICOM folder by content
    assert by_name["lungs.nii.gz"].reason.startswith("label map (3 integer values)")
    assert by_name["photo.nii.gz"].reason.startswith("not HU")
    assert by_name["tiny.nii.gz"].reason.startswith("too small")
    assert by_name["broken.nii.gz"].reason.startswith("unreadable")
    masks = [s for s in report.scans if "masks" in str(s.record.path)]
    assert masks and all(s.reason == "label map (folder name)" and not s.used for s in masks)
    # the loop was visited once: each real file appears once
    assert len(report.scans) == len({os.path.realpath(s.record.path) for s in report.scans})
    counts = report.skipped_counts()
    assert counts == {"label map": 2, "not HU": 1, "too small": 1, "unreadable": 1}
    # the flags keep what they name, with the reason kept as a note
    kept = discover_scans(scans, crop=(8, 32, 32), keep_labels=True, keep_non_hu=True)
    kept_names = {Path(s.record.path).name for s in kept.used}
    assert {"lungs.nii.gz", "photo.nii.gz"} <= kept_names
    # find_volumes shares the walk: links followed, label folders left out
    assert sorted(r.path.name for r in find_volumes(scans))[:3] == ["broken.nii.gz", "ct1.nii.gz", "ct2.nrrd"]


def test_data_table_and_csv(scans: Path, tmp_path: Path) -> None:
    report = discover_scans(scans, crop=(8, 32, 32))
    report.set_split([0, 1], [2])
    path = report.write_csv(tmp_path / "out" / "data.csv")
    rows = list(csv.DictReader(path.open()))
    assert {r["status"] for r in rows} == {"used", "skipped"} and len(rows) == len(report.scans)
    ct1 = next(r for r in rows if r["path"].endswith("ct1.nii.gz") and "masks" not in r["path"])
    assert ct1["shape"] == "16x32x32" and ct1["spacing"] == "1x1x1" and ct1["split"] == "train"
    assert float(ct1["hu_min"]) < -1000 < 0 < float(ct1["hu_max"])
    assert sorted(r["split"] for r in rows if r["status"] == "used") == ["train", "train", "val"]
    table = report.table(path)
    assert "found" in table and "split: 2 train, 1 validation scans" in table and str(path) in table
    lines = table.splitlines()
    assert lines[2].split()[:3] == [str(len(report.scans)), "3", str(len(report.scans) - 3)]


def test_nothing_usable_is_one_clear_error(tmp_path: Path) -> None:
    labels = np.zeros((16, 32, 32), np.float32)
    labels[4:8, 4:8, 4:8] = 1
    _save(tmp_path / "only" / "x.nii.gz", labels)
    with pytest.raises(DatasetLayoutError, match="1 label map.*--keep-labels"):
        discover_scans(tmp_path / "only")


def test_manifest_scans_are_kept_but_flagged(tmp_path: Path) -> None:
    path = _save(tmp_path / "x.nii.gz", np.random.default_rng(0).integers(0, 256, (16, 32, 32)).astype(np.float32))
    report = inspect_records([VolumeRecord(path)], "manifest")
    assert report.scans[0].used and report.scans[0].reason.startswith("not HU")
    assert "kept although flagged: 1 not HU" in report.table()


class _Pair:
    def __init__(self, x, y, mask=None):
        self.input, self.target, self.mask = x, y, mask


def test_collapse_is_detected_and_explained() -> None:
    target = torch.rand(4, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    flat = torch.full_like(target, 0.5)
    sums = baseline_sums(flat, _Pair(target + 0.1, target), "all")
    record = {k: v / 4 for k, v in sums.items()}
    assert record["val_output_std"] == pytest.approx(0.0) and record["val_target_std"] > 0.2
    assert record["val_identity_mse"] == pytest.approx(0.01, rel=1e-4)
    assert record["val_mean_mse"] == pytest.approx(float(target.var(dim=(1, 2, 3, 4), unbiased=False).mean()), rel=1e-4)
    record.update(epoch=5, val_mse=float(((flat - target) ** 2).mean()))
    note = collapse_note(record)
    assert "output nearly constant" in note and "predicting each cube's mean" in note and "input unchanged" in note
    warning = final_warning([record])
    assert warning.startswith("warning: the restoration may have collapsed") and "learning rate" in warning
    # a model that beats both baselines with a lively output is not flagged
    good = dict(record, val_mse=0.001, val_output_std=record["val_target_std"])
    assert collapse_note(good) == "" and final_warning([good]) == ""
    # baselines are not judged in the first epochs (a fresh network is about the mean predictor)
    assert collapse_note(dict(record, epoch=1, val_output_std=0.3)) == ""


def test_out_dir_holding_a_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    rundir.check_out_dir(out, False, False)  # nothing there yet
    (out / "stage2").mkdir(parents=True)
    (out / "stage2" / "last.pt").write_bytes(b"x")
    (out / "log.csv").write_text("epoch\n")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        rundir.check_out_dir(out, False, False)
    rundir.check_out_dir(out, True, False)  # resume: fine, nothing removed
    assert (out / "log.csv").exists()
    rundir.check_out_dir(out, False, True)
    assert not (out / "log.csv").exists() and not (out / "stage2").exists() and (out / "notes.txt").exists()


def test_resume_settings_mismatch_names_the_settings() -> None:
    saved = {"width": 2, "epochs": 3, "data": {"crop": [16, 32, 32], "workers": 0}, "optim": {"name": "adam"}}
    now = {"width": 4, "epochs": 9, "data": {"crop": (16, 32, 32), "workers": 2}, "optim": {"name": "auto"}}
    assert rundir.settings_mismatch(saved, now) == ["width (run: 2, now: 4)"]


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_settings_are_checked_before_monai_is_imported(tmp_path: Path) -> None:
    """MONAI takes seconds to import: neither the network registry nor the fine-tuning CLI's
    setting checks need it (an invalid target/model pair is refused without it)."""
    code = f"""
import sys
import genesis.models
networks = "monai" in sys.modules
from genesis.cli.finetune import main
print(networks, main(["--target", "lcs", "--model", "resnet18", "--out", {str(tmp_path / 'lcs')!r}]), "monai" in sys.modules)
"""
    proc = _run_python(code, tmp_path)
    assert proc.stdout.strip() == "False 2 False", proc.stdout + proc.stderr
    assert "segmentation targets (ncs, lcs, bms) fine-tune the 3D U-Net" in proc.stderr


def test_typos_fail_before_torch_is_imported(tmp_path: Path) -> None:
    """Argument, path, name and run-folder checks happen before the heavy imports."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    save_config(PretrainConfig(width=2), out / "config.yaml")
    code = f"""
import sys
from genesis.cli.pretrain import main as pretrain
from genesis.cli.finetune import main as finetune
results = [
    pretrain(["--task", "combnied"]),
    pretrain(["--data", {str(tmp_path / 'missing')!r}]),
    pretrain(["--config", {str(tmp_path / 'none.yaml')!r}]),
    pretrain(["--out", {str(out)!r}]),
    pretrain(["--out", {str(out)!r}, "--resume", "--width", "4"]),
    finetune(["--target", "ncx"]),
    finetune(["--target", "ncs", "--seed", str(2**70), "--out", {str(tmp_path / 'ft')!r}]),
    finetune(["--target", "ncs", "--set", "optim=null", "--out", {str(tmp_path / 'ft')!r}]),
]
print(results, "torch" in sys.modules)
"""
    proc = _run_python(code, tmp_path)
    assert proc.stdout.strip() == "[2, 2, 2, 2, 2, 2, 2, 2] False", proc.stdout + proc.stderr
    err = proc.stderr
    assert "unknown proxy task 'combnied'; did you mean 'combined'?" in err
    assert "--data does not exist" in err and "--config file does not exist" in err
    assert "already holds a run" in err and "add --resume" in err
    assert "settings differ from the run being resumed: width (run: 2, now: 4)" in err
    assert "unknown fine-tuning target 'ncx'; did you mean" in err
    assert "Traceback" not in err


def test_static_names_match_the_registries() -> None:
    import finetune
    import proxy_tasks

    from genesis.cli._preflight import static_names

    assert static_names("proxy_tasks", "register_task") == proxy_tasks.list_tasks()
    assert static_names("finetune.targets", "register_target") == finetune.TARGETS.names()


def test_help_shows_every_default() -> None:
    from genesis.cli import finetune as finetune_cli
    from genesis.cli import pretrain as pretrain_cli

    from genesis.cli import demo

    for parser in (pretrain_cli.build_parser(), finetune_cli.build_parser(), demo.build_parser()):
        for action in parser._actions:
            if action.dest != "help":
                assert action.help and "default" in action.help.lower(), (parser.prog, action.dest)
    text = pretrain_cli.build_parser().format_help()
    assert "--width WIDTH" in text and "(default: 32)" in text and "--threads N" in text


def test_load_report_lists_loaded_missing_and_mismatched(tmp_path: Path) -> None:
    from finetune.config import FinetuneConfig
    from finetune.load_report import write_load_report

    from genesis.models import create_model
    from genesis.training.checkpoint import save_checkpoint

    net = create_model("unet3d", in_channels=1, out_channels=1, base_width=2)
    state = net.state_dict()
    state["extra.weight"] = torch.zeros(3)
    weights = save_checkpoint({"model": state}, tmp_path / "w.pt")
    lines: list[str] = []
    details = write_load_report(FinetuneConfig(weights=str(weights), width=2), "segmentation", tmp_path, lines.append)
    saved = json.loads((tmp_path / "load_report.json").read_text())
    # everything but the output layer, which segmentation replaces, and the tensor the network lacks
    assert saved == details and len(saved["loaded"]) == len(state) - 3
    assert saved["skipped_unexpected"] == ["extra.weight"] and saved["shape_mismatches"] == []
    assert {e["name"] for e in saved["left_out"]} == {"extra.weight", "out_tr.final_conv.weight", "out_tr.final_conv.bias"}
    assert lines[0].startswith("weights: loaded") and str(tmp_path / "load_report.json") in lines[-1]
    # encoder only (a classifier): the rest is reported missing-free, the decoder keys are skipped
    enc = write_load_report(FinetuneConfig(weights=str(weights), width=2), "classification", tmp_path / "c", lambda s: None)
    assert 0 < len(enc["loaded"]) < len(state) - 1 and enc["part"] == "encoder"
    # a model of another width: one error, and the report says which tensors did not fit
    tmp = tmp_path / "wide"
    tmp.mkdir()
    narrow = save_checkpoint({"model": net.state_dict()}, tmp_path / "narrow.pt")
    with pytest.raises(CheckpointError, match="do not fit the network.*load_report.json"):
        write_load_report(FinetuneConfig(weights=str(narrow), width=4), "segmentation", tmp, lambda s: None)
    mismatches = json.loads((tmp / "load_report.json").read_text())["shape_mismatches"]
    assert mismatches and {"name", "weights", "network"} <= set(mismatches[0])


def test_single_fraction_metrics_png_shows_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import genesis.viz
    from finetune.report import plot

    calls = {}
    real = genesis.viz.save_points

    def spy(groups, path, **kw):
        calls.update(groups)
        return real(groups, path, **kw)

    monkeypatch.setattr(genesis.viz, "save_points", spy)
    agg = {"dice": {"mean": 0.5, "values": [0.4, 0.6], "ci_low": 0.3, "ci_high": 0.7}}
    metrics = {"primary_metric": "dice", "configuration": "ours", "target": "ncs", "synthetic": True,
               "label_fractions": [{"fraction": 1.0, "aggregate": agg}]}
    path = plot(metrics, tmp_path / "metrics.png", dict(metrics, configuration="scratch"))
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert calls["ours"] == ([0.4, 0.6], 0.5, 0.3, 0.7) and "scratch (compared)" in calls


def test_grid_columns_are_labelled_per_task() -> None:
    from genesis.training.logging import stage_name
    from genesis.training.engine import StageSpec
    from genesis.viz import restoration_columns
    from proxy_tasks.masked_region import MaskedRegion

    assert restoration_columns(None, "next_slice") == ("slice", "predicted next", "true next")
    assert restoration_columns(None, "combined") == ("transformed input", "restoration", "target")
    assert stage_name(StageSpec(1, MaskedRegion(fraction=0.1), Path("."), n_stages=4)) == "stage 2/4, mask 10%"


def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path: Path) -> None:
    from genesis.training.checkpoint import load_checkpoint

    volume = _save(tmp_path / "scan.nii", _ct((4, 8, 8)))
    (tmp_path / "page.pt").write_text("<!DOCTYPE html><html>sign in</html>")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint: this file looks like a NIfTI image"):
        load_checkpoint(volume)
    with pytest.raises(CheckpointError, match="looks like an HTML page"):
        load_checkpoint(tmp_path / "page.pt")


def test_finetune_out_with_results_needs_resume_or_overwrite(tmp_path: Path) -> None:
    from genesis.cli.finetune import _check_finetune_out, build_parser

    out = tmp_path / "ft"
    (out / "fraction-1" / "seed-0").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds fine-tuning results"):
        _check_finetune_out(build_parser().parse_args(["--out", str(out)]))
    _check_finetune_out(build_parser().parse_args(["--out", str(out), "--resume"]))
    assert (out / "metrics.json").exists()
    _check_finetune_out(build_parser().parse_args(["--out", str(out), "--overwrite"]))
    assert not (out / "metrics.json").exists() and not (out / "fraction-1").exists()


def test_demo_says_plainly_whether_it_shows_a_difference() -> None:
    from genesis.cli.demo import ttest_lines, verdict

    def result(p, a, b):
        c = {"mean_a": a, "mean_b": b, "t_student": 1.0, "p_student": p, "p_welch": p, "p_paired": p,
             "bootstrap": {"p": p}}
        return {"primary_metric": "dice", "metrics": ["dice"], "comparison": {"fractions": [{"fraction": 1.0, "dice": c}]}}

    assert verdict(result(0.3, 0.5, 0.4)).startswith("Result: no difference shown (paired p = 0.3)")
    assert verdict(result(0.01, 0.6, 0.4)).startswith("Result: the pretrained network is better on dice")
    table = ttest_lines(result(0.3, 0.5, 0.4))
    assert "p (paired)" in table[0] and table[1].split() == ["dice", "0.500", "0.400", "0.300", "0.300", "0.300"]


def test_threads_default_to_the_cores_of_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from genesis.cli._preflight import apply_threads, default_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert default_threads() == len(os.sched_getaffinity(0))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * len(os.sched_getaffinity(0))))
        assert default_threads() == 1  # never zero, shared among torchrun processes
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert default_threads() == 3  # an explicit setting wins
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ConfigError):
            apply_threads(0)
    finally:
        torch.set_num_threads(before)
