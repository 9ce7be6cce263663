"""Fine-tuning that cannot be silently wrong: divergence stops the run, writes name their file,
settings are checked before any network is built, and the time estimate is measured."""

from __future__ import annotations

import contextlib
import errno
import json
from pathlib import Path

import pytest
import torch

from finetune import run_finetune
from finetune.config import FinetuneConfig
from genesis.cli.finetune import main
from genesis.errors import TrainingDivergedError

SYNTHETIC = ["--set", "synthetic.n_train=1", "--set", "synthetic.n_val=1", "--set", "synthetic.n_test=1",
             "--set", "synthetic.shape=[48, 64, 64]", "--set", "evaluation.bootstrap_resamples=20"]
TINY = ["--target", "ncs", "--width", "2", "--crop", "8", "16", "16", "--epochs", "1", "--steps-per-epoch", "2",
        "--batch-size", "1", "--device", "cpu", *SYNTHETIC]


def tiny(out: Path, **kw) -> FinetuneConfig:
    settings = {"target": "ncs", "out": str(out), "width": 2, "crop": (8, 16, 16), "epochs": 1, "steps_per_epoch": 2,
                "batch_size": 1, "device": "cpu", **kw}
    cfg = FinetuneConfig(**settings)
    cfg.synthetic.n_train, cfg.synthetic.n_val, cfg.synthetic.n_test = 1, 1, 1
    cfg.synthetic.shape = (48, 64, 64)
    cfg.evaluation.bootstrap_resamples = 20
    return cfg


def test_a_huge_learning_rate_stops_with_the_step_and_exit_2(tmp_path, capsys):
    assert main([*TINY, "--lr", "1e30", "--out", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err
    assert "fine-tuning diverged: loss nan at step 2 (epoch 1, step 2 of the epoch)" in err and "--lr" in err
    run = tmp_path / "cli" / "fraction-1" / "seed-0"
    assert not list(run.glob("*.pt")) and not (run / "result.json").exists()  # nothing diverged is written
    assert not (tmp_path / "cli" / "metrics.json").exists()


def test_weights_that_diverge_on_the_last_step_keep_the_earlier_checkpoints(tmp_path, monkeypatch):
    calls = {"n": 0}
    step = torch.optim.Adam.step

    def poisoning_step(self, *args, **kwargs):  # a finite loss, then weights that are not
        out = step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoning_step)
    cfg = tiny(tmp_path / "w", epochs=2, steps_per_epoch=1)
    with pytest.raises(TrainingDivergedError, match=r"weight values are NaN/inf .* at step 2 \(epoch 2") as info:
        run_finetune(cfg, log=lambda s: None)
    assert info.value.step == 2
    from genesis.training.checkpoint import load_checkpoint

    last = load_checkpoint(tmp_path / "w" / "fraction-1" / "seed-0" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_nonfinite_validation_metric_is_divergence(tmp_path, monkeypatch):
    from finetune import engine

    monkeypatch.setattr(engine, "metric_values", lambda task, values, metrics: {m: float("inf") for m in metrics})
    with pytest.raises(TrainingDivergedError, match=r"validation dice inf at step 1 \(epoch 1"):
        run_finetune(tiny(tmp_path / "v", steps_per_epoch=1), log=lambda s: None)
    assert not (tmp_path / "v" / "fraction-1" / "seed-0" / "best.pt").exists()


def test_a_learning_rate_search_drops_a_rate_that_diverges(tmp_path):
    lines: list[str] = []
    cfg = tiny(tmp_path / "lr", steps_per_epoch=2, lr_search=True, lr_grid=(1e30, 1e-3), lr_search_fraction=1.0)
    metrics = run_finetune(cfg, log=lines.append)
    record = metrics["lr_search"]
    assert record["diverged"] == [1e30] and record["chosen"] == 1e-3 and record["scores"]["1e+30"] is None
    assert any(line.startswith("lr search: rate 1e+30 diverged at step 2") for line in lines)


@pytest.mark.parametrize("name", ["config.yaml", "result.json", "metrics.json", "metrics.png", "last.pt"])
def test_a_full_disk_names_the_file_being_written(tmp_path, monkeypatch, capsys, name):
    import genesis.fileio
    import genesis.viz

    real = genesis.fileio.atomic_path

    @contextlib.contextmanager
    def full_disk(path):
        with real(path) as tmp:
            yield tmp
            if Path(path).name == name:  # like a write through an open file: no file name in the error
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(genesis.fileio, "atomic_path", full_disk)
    monkeypatch.setattr(genesis.viz, "atomic_path", full_disk)
    assert main([*TINY, "--steps-per-epoch", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and name in err
    assert "No space left on device" in err


def test_an_invalid_target_model_pair_fails_before_any_network_is_built(tmp_path, monkeypatch, capsys):
    def no_network(self, *args, **kwargs):
        raise AssertionError("a network was built before the settings were checked")

    monkeypatch.setattr(torch.nn.Module, "__init__", no_network)
    assert main(["--target", "lcs", "--model", "resnet18", "--out", str(tmp_path / "lcs")]) == 2
    err = capsys.readouterr().err
    assert "segmentation targets (ncs, lcs, bms) fine-tune the 3D U-Net" in err and "resnet18" in err


def test_the_cpu_estimate_comes_from_measured_steps(tmp_path, monkeypatch):
    from finetune import eta

    lines: list[str] = []
    monkeypatch.setattr(eta, "WARN_SECONDS", 0.0)  # a tiny run is long enough to warn about
    cfg = tiny(tmp_path / "e", steps_per_epoch=5, repeats=2)
    timer = eta.StepTimer(eta.total_steps(cfg), "cpu", lines.append, warn_seconds=0.0)
    times = [5.0, 1.0, 2.0, 3.0, 9.0]  # a slow warm-up step, three timed steps, then no more timing
    for t in times:
        timer.record(t)
    assert timer.seconds_per_step == pytest.approx(2.0)
    assert lines == [f"warning: fine-tuning with these settings on a CPU: 10 steps at about 2.00 s each (measured "
                     f"over 3 steps), up to {10 * 2.0 / 3600:.1f} h plus validation (early stopping may end sooner); "
                     "--preset quick runs in about a minute"]
    quiet = eta.StepTimer(10, "cuda", lines.append, warn_seconds=0.0)
    for t in times:
        quiet.record(t)
    assert len(lines) == 1 and quiet.seconds_per_step == pytest.approx(2.0)
    # in a real run: printed once, after the first steps of the first run, not again for the second
    logged: list[str] = []
    run_finetune(cfg, log=logged.append)
    warnings = [i for i, line in enumerate(logged) if line.startswith("warning: fine-tuning with these settings")]
    first_epoch = next(i for i, line in enumerate(logged) if line.startswith("  epoch 1/1"))
    assert len(warnings) == 1 and warnings[0] < first_epoch and "10 steps" in logged[warnings[0]]


def test_set_that_removes_a_section_or_contradicts_a_flag_is_an_error(tmp_path, capsys):
    out = ["--out", str(tmp_path / "s")]
    for args, fragment in (
        (["--set", "optim=null"], "'optim' is a section of settings"),
        (["--set", "evaluation=3"], "'evaluation' is a section of settings"),
        (["--data", str(tmp_path), "--set", "data=null"], "--set data=null and --data both set 'data'"),
        (["--set", "weights=null"], "cannot be set to null"),
        (["--seed", str(2**70)], r"seed must be in [0, 4294967295]"),
    ):
        assert main([*TINY, *args, *out]) == 2, args
        assert fragment in capsys.readouterr().err, args
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_segmentation_from_a_restoration_checkpoint_gets_a_new_output_layer(tmp_path):
    from finetune.load_report import write_load_report
    from finetune.transfer import build_model
    from genesis.models import create_model
    from genesis.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    restoration = create_model("unet3d", base_width=2)
    state = restoration.state_dict()
    weights = save_checkpoint({"model": state, "model_name": "unet3d", "model_kwargs": {"base_width": 2}},
                              tmp_path / "best.pt")
    cfg = FinetuneConfig(weights=str(weights), width=2, init="scratch")
    details = write_load_report(cfg, "segmentation", tmp_path, lambda s: None)
    saved = json.loads((tmp_path / "load_report.json").read_text())
    output = ["out_tr.final_conv.weight", "out_tr.final_conv.bias"]
    assert saved == details and not set(output) & set(saved["loaded"])
    assert [e["name"] for e in saved["left_out"]] == output
    assert all("new 1x1x1 output layer" in e["reason"] for e in saved["left_out"])
    assert saved["new_layers"] == output and "output layer new" in saved["summary"]
    assert len(saved["loaded"]) == len([k for k in state if not k.startswith("out_tr.")])
    # the network agrees with its report: decoder loaded, output layer not; a 3-class target too
    for classes in (1, 3):
        model, *_ = build_model("segmentation", cfg, out_channels=classes)
        own = model.state_dict()
        assert torch.equal(own["up_tr64.ops.0.conv1.weight"], state["up_tr64.ops.0.conv1.weight"])
        assert own["out_tr.final_conv.weight"].shape[0] == classes
        if classes == 1:
            assert not torch.equal(own["out_tr.final_conv.weight"], state["out_tr.final_conv.weight"])
