"""genesis-demo runs pretrain -> fine-tune (scratch and pretrained) -> comparison and reports it."""

from __future__ import annotations

import pytest

from genesis.cli import demo


@pytest.mark.slow
def test_demo_end_to_end_with_tiny_settings(tmp_path, monkeypatch, capsys):
    # The real demo's settings take minutes; the same code path with the smallest run.
    monkeypatch.setattr(demo, "PRETRAIN_FLAGS", [
        "--preset", "quick", "--task", "combined", "--epochs", "1", "--steps-per-epoch", "2",
        "--set", "data.synthetic_volumes=2", "--set", "data.synthetic_shape=[32, 64, 64]",
    ])
    monkeypatch.setattr(demo, "FINETUNE_FLAGS", [
        "--preset", "quick", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--repeats", "2",
        "--set", "evaluation.bootstrap_resamples=20", "--set", "synthetic.shape=[48, 64, 64]",
    ])
    assert demo.main(["--out", str(tmp_path), "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out
    assert "from scratch:" in out and "from Models Genesis pretraining:" in out
    assert "dice" in out and "95% CI" in out
    assert (tmp_path / "pretrain" / "best.pt").is_file()
    assert "p (paired)" in out and out.count("\n   ") >= 4  # the comparison table it computed
    result_line = next(line for line in out.splitlines() if line.startswith("Result: "))
    assert "no difference shown" in result_line or "better on dice" in result_line
    metrics = (tmp_path / "ncs-genesis" / "metrics.md").read_text()
    assert "Comparison with" in metrics and "SYNTHETIC" in metrics


def test_demo_reports_a_failed_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "PRETRAIN_FLAGS", ["--task", "no_such_task"])
    assert demo.main(["--out", str(tmp_path), "--device", "cpu"]) == 2
    assert "no_such_task" in capsys.readouterr().err
