"""``genesis-pretrain --evaluate``: restoration and label metrics on held-out cubes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from genesis.cli.pretrain import main
from genesis.training.evaluate import evaluate_checkpoint, roc_auc_ovr

TINY = [
    "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--width", "2", "--crop", "16", "32", "32",
    "--device", "cpu", "--no-progress", "--set", "data.synthetic_shape=[32,64,64]",
    "--set", "data.synthetic_volumes=3", "--set", "data.val_cubes=2", "--set", "log.grids=false",
]


def test_restoration_evaluation_reports_each_genesis_transform(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([*TINY, "--task", "combined", "--out", str(run)]) == 0
    assert main(["--evaluate", str(run / "best.pt"), "--out", str(tmp_path / "eval"), "--eval-cubes", "4",
                 "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (tmp_path / "eval" / "eval.png").stat().st_size > 0
    assert report["synthetic"] is True and report["n_cubes"] == 4
    results = report["results"]
    assert {"combined", "nonlinear", "local_shuffle", "inner_cutout", "outer_cutout"} <= set(results)
    for name, metrics in results.items():
        assert 0.0 <= metrics["mse"] < 1.0 and -1.0 <= metrics["ssim"] <= 1.0, name
    assert "changed_mse" in results["inner_cutout"]  # cutout changes a region
    assert "changed_mse" not in results.get("identity", {})  # identity changes nothing


def test_label_evaluation_reports_cross_entropy_and_auroc(tmp_path: Path) -> None:
    run = tmp_path / "flip"
    assert main([*TINY, "--task", "flip", "--dims", "2", "--optimizer", "adam", "--lr", "1e-3",
                 "--out", str(run)]) == 0
    report = evaluate_checkpoint(run / "best.pt", out_dir=tmp_path / "eval", device="cpu", n_cubes=6)
    metrics = report["results"]["flip"]
    assert report["kind"] == "classification"
    assert metrics["cross_entropy"] > 0 and 0 <= metrics["accuracy"] <= 1
    assert np.isnan(metrics["auroc"]) or 0.0 <= metrics["auroc"] <= 1.0
    assert (tmp_path / "eval" / "eval.json").is_file()


def test_rank_auroc_matches_sklearn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    probs = rng.random((200, 3)) + np.eye(3)[labels] * 0.3
    probs[:5] = probs[5]  # ties
    probs /= probs.sum(1, keepdims=True)
    expected = sklearn_metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    assert roc_auc_ovr(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert roc_auc_ovr(np.eye(2)[[0, 1, 1]], np.array([0, 1, 1])) == 1.0


def test_evaluate_refuses_foreign_checkpoint(tmp_path: Path, capsys) -> None:
    import torch

    path = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(1)}, path)
    assert main(["--evaluate", str(path), "--device", "cpu"]) == 2
    assert "not a genesis-pretrain checkpoint" in capsys.readouterr().err
