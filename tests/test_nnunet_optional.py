"""The nnU-Net extra stays optional: the core never imports nnunetv2, and asking for the nnU-Net
model without it says how to install it (these tests run with and without the extra)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genesis.errors import ConfigError


def test_core_does_not_import_nnunetv2() -> None:
    code = ("import sys, genesis.models, genesis.cli.pretrain, genesis.training.pretrain, genesis.weights.export, "
            "genesis.cli.weights; sys.exit('nnunetv2' in sys.modules or 'dynamic_network_architectures' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_extra_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from genesis.models import create_model

    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # import nnunetv2 -> ImportError
    plans = tmp_path / "nnUNetPlans.json"
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    with pytest.raises(ConfigError, match=r"pip install .*genesis-ssl\[nnunet\]"):
        create_model("nnunet", plans=str(plans), configuration="3d_fullres")


def test_nnunet_export_needs_an_output_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from genesis.cli.weights import main

    assert main(["export", str(tmp_path / "best.pt"), "--format", "nnunet"]) == 2
    assert "--out FILE" in capsys.readouterr().err
