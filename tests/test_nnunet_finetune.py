"""nnU-Net networks from tiny hand-written plans (2-4 channels): the plans check before building,
encoder-only export with the first convolution adapted, the fine-tuning schedule, the genesis
trainer with nnU-Net's own classes, and nnU-Net's trainer lookup finding it.

Skipped when the optional extra (``pip install -e ".[nnunet]"``) is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("nnunetv2")

from genesis.errors import CheckpointError, ConfigError  # noqa: E402
from genesis.nnunet.finetune import FinetuneSchedule, load_pretrained  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("PlainConvUNet", "ResidualEncoderUNet")


def tiny_plans(arch: str = "PlainConvUNet", channels: int = 1, decoder: int = 1, features=(2, 4, 4)) -> dict:
    """nnU-Net plans (the fields nnUNetPlans.json has) for a 3-stage network 2-4 channels wide."""
    stages = len(features)
    blocks = "n_conv_per_stage" if arch == "PlainConvUNet" else "n_blocks_per_stage"
    kwargs = {"n_stages": stages, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
              "kernel_sizes": [[3, 3, 3]] * stages, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
              blocks: [1] * stages, "n_conv_per_stage_decoder": [decoder] * (stages - 1), "conv_bias": True,
              "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
              "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
              "nonlin_kwargs": {"inplace": True}}
    props = {"mean": -500.0, "std": 300.0, "percentile_00_5": -1000.0, "percentile_99_5": 500.0,
             "min": -1024.0, "max": 1500.0, "median": -600.0}
    conf = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": [8, 16, 16], "median_image_size_in_voxels": [8, 16, 16], "spacing": [1.0, 1.0, 1.0],
            "normalization_schemes": ["CTNormalization"] * channels, "use_mask_for_norm": [False] * channels,
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet." + arch,
                             "arch_kwargs": kwargs, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
            "batch_dice": False}
    return {"dataset_name": "Dataset902_Tiny", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [8, 16, 16],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": conf}, "experiment_planner_used": "ExperimentPlanner",
            "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {str(c): dict(props) for c in range(channels)}}


def _arch_kwargs(plans: dict) -> dict:
    return plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]


def _pretrained(tmp_path: Path, arch: str) -> Path:
    """A ``--model nnunet`` checkpoint as genesis-pretrain writes it (weights, model name and kwargs)."""
    from genesis.models import create_model
    from genesis.training.checkpoint import save_checkpoint

    plans = tiny_plans(arch)
    torch.manual_seed(0)
    model = create_model("nnunet", plans=plans, configuration="3d_fullres")
    with torch.no_grad():  # a trained-looking state: nothing equal to a fresh initialisation by chance
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return save_checkpoint({"model": model.state_dict(), "model_name": "nnunet", "epoch": 3, "task": "combined",
                            "model_kwargs": {"plans": plans, "configuration": "3d_fullres", "in_channels": 1,
                                             "out_channels": 1}}, tmp_path / f"{arch}.pt")


def _nnunet_network(plans: dict, channels: int):
    """The network nnUNetTrainer builds: its own static builder, 2 classes, deep supervision on."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    return nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("3d_fullres"), channels, 2, True)


# -- plans with an impossible architecture ---------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("field, value, message", [
    ("features_per_stage", [2, 4], r"features_per_stage has 2 entries; it needs 3"),
    ("features_per_stage", [2, 0, 4], r"features_per_stage\[1\] = 0: must be a positive integer"),
    ("features_per_stage", [2, -4, 4], r"features_per_stage\[1\] = -4"),
    ("features_per_stage", None, r"features_per_stage is None"),
    ("n_stages", 1, r"n_stages must be an integer >= 2"),
    ("strides", [[1, 1, 1], [2, 2], [2, 2, 2]], r"strides\[1\] = \[2, 2\] has 2 sizes; Conv3d needs 3"),
    ("kernel_sizes", [[3, 3, 3]] * 2, r"kernel_sizes has 2 entries"),
    ("n_conv_per_stage_decoder", [1, 1, 1], r"n_conv_per_stage_decoder has 3 entries; it needs 2"),
    ("conv_op", "torch.nn.NoSuchConv", r"conv_op = 'torch.nn.NoSuchConv' is not an importable class"),
    ("no_such_setting", 1, r"does not take: no_such_setting"),
])
def test_impossible_plans_are_refused_naming_the_field(arch: str, field: str, value, message: str) -> None:
    """Today's builder fails with an AssertionError (or a torch error) for each of these."""
    from genesis.models import create_model

    plans = tiny_plans(arch)
    _arch_kwargs(plans)[field] = value
    with pytest.raises(ConfigError, match=r"configuration '3d_fullres': architecture\.arch_kwargs.*" + message):
        create_model("nnunet", plans=plans, configuration="3d_fullres")


def test_per_stage_counts_of_each_class_are_checked() -> None:
    from genesis.nnunet.plans import check_architecture

    plans = tiny_plans("ResidualEncoderUNet")
    _arch_kwargs(plans)["n_blocks_per_stage"] = [1, 1]
    with pytest.raises(ConfigError, match="n_blocks_per_stage has 2 entries"):
        check_architecture(plans, "3d_fullres")
    plans = tiny_plans("PlainConvUNet")
    del _arch_kwargs(plans)["n_conv_per_stage"]
    with pytest.raises(ConfigError, match="lacks n_conv_per_stage"):
        check_architecture(plans, "3d_fullres")
    check_architecture(tiny_plans("ResidualEncoderUNet"), "3d_fullres")  # valid plans pass


def test_export_cli_refuses_impossible_target_plans_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from genesis.cli.weights import main

    plans = tiny_plans()
    _arch_kwargs(plans)["features_per_stage"] = [2, 4]
    (tmp_path / "bad.json").write_text(json.dumps(plans))
    code = main(["export", str(_pretrained(tmp_path, "PlainConvUNet")), "--format", "nnunet", "--out",
                 str(tmp_path / "x.pth"), "--plans", str(tmp_path / "bad.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "features_per_stage has 2 entries" in err
    assert "Traceback" not in err and not (tmp_path / "x.pth").exists()


# -- export for nnU-Net: whole network through nnU-Net's loader; encoder only ---------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_whole_export_loads_with_nnunets_loader(tmp_path: Path, arch: str) -> None:
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from genesis.nnunet.export import export_nnunet

    checkpoint = _pretrained(tmp_path, arch)
    result = export_nnunet(checkpoint, tmp_path / "all.pth")
    network = _nnunet_network(tiny_plans(arch), 1)
    load_pretrained_weights(network, str(result.path))
    exported = torch.load(result.path, weights_only=True)["network_weights"]
    loaded = network.state_dict()
    assert sorted(exported) == sorted(k for k in loaded if ".seg_layers." not in k)
    assert all(torch.equal(loaded[k], v) for k, v in exported.items())
    trained = torch.load(checkpoint, weights_only=True)["model"]
    assert all(torch.equal(v, trained["network." + k]) for k, v in exported.items())


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_export_for_other_decoder_and_channels(tmp_path: Path, arch: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    from genesis.cli.weights import main

    checkpoint = _pretrained(tmp_path, arch)
    target = tiny_plans(arch, channels=3, decoder=2)  # another decoder, 3 input channels
    (tmp_path / "target.json").write_text(json.dumps(target))
    out = tmp_path / "encoder.pth"
    assert main(["export", str(checkpoint), "--format", "nnunet", "--part", "encoder", "--out", str(out),
                 "--plans", str(tmp_path / "target.json")]) == 0
    printed = capsys.readouterr().out
    payload = torch.load(out, weights_only=True)
    weights, meta = payload["network_weights"], payload["genesis"]
    trained = {k[len("network."):]: v for k, v in torch.load(checkpoint, weights_only=True)["model"].items()
               if k.startswith("network.")}

    network = _nnunet_network(target, 3)
    assert sorted(weights) == sorted(k for k in network.state_dict() if k.startswith("encoder."))
    assert meta["part"] == "encoder" and meta["in_channels"] == {"pretrained": 1, "target": 3}
    # every pretrained tensor not written is listed, in the file and printed; none is silently dropped
    assert sorted(meta["skipped"]) == sorted(k for k in trained if k not in weights and not k.startswith("decoder.encoder."))
    assert meta["skipped"] and all(k.startswith("decoder.") for k in meta["skipped"])
    assert all(f"skipped  {k}" in printed for k in meta["skipped"])
    # the first convolution (both of nnU-Net's names for it) is the one adapted tensor, listed with its rule
    first = {k + ".weight" for k in network.keys_to_in_proj}
    assert {a["key"] for a in meta["adapted"]} == first
    assert all(f"adapted  {k}: (2, 1, 3, 3, 3) -> (2, 3, 3, 3, 3)" in printed for k in first)
    assert all(torch.equal(weights[k], trained[k]) for k in weights if k not in first)

    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    report = load_pretrained(network, out)
    assert report.part == "encoder" and report.tensors == len(network.encoder.state_dict())
    state = network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    decoder_own = [k for k in state if k.startswith("decoder.") and not k.startswith("decoder.encoder.")]
    assert decoder_own and all(torch.equal(state[k], fresh[k]) for k in decoder_own)  # left as nnU-Net made it
    # averaged, not repeated: an image given in every channel gives the pretrained first-layer response
    key = sorted(first)[0]
    x = torch.rand(1, 1, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    bias = trained[key.replace(".weight", ".bias")]
    expected = F.conv3d(x, trained[key], bias, padding=1)
    assert torch.allclose(F.conv3d(x.repeat(1, 3, 1, 1, 1), state[key], bias, padding=1), expected, atol=1e-6)
    with pytest.raises(AssertionError, match="missing in the pretrained model weights"):
        load_pretrained_weights(_nnunet_network(target, 3), str(out))  # why nnU-Net's -pretrained_weights cannot


def test_encoder_export_refuses_another_encoder(tmp_path: Path) -> None:
    from genesis.nnunet.export import export_nnunet

    checkpoint = _pretrained(tmp_path, "PlainConvUNet")
    with pytest.raises(ConfigError, match=r"encoder of the network.*features_per_stage: pretrained \[2, 4, 4\], "
                                          r"target \[2, 8, 8\]"):
        export_nnunet(checkpoint, tmp_path / "x.pth", plans=tiny_plans(features=(2, 8, 8)), part="encoder")
    with pytest.raises(ConfigError, match=r"input channels: pretrained 1, target 3.*--part encoder"):
        export_nnunet(checkpoint, tmp_path / "x.pth", plans=tiny_plans(channels=3))
    assert not (tmp_path / "x.pth").exists()


def test_loader_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    from genesis.nnunet.export import export_nnunet

    out = export_nnunet(_pretrained(tmp_path, "PlainConvUNet"), tmp_path / "enc.pth", part="encoder").path
    with pytest.raises(CheckpointError, match=r"encoder weights do not fit this network \(0 missing, \d+ of another shape.*"
                                             r"file \(4, 2, 3, 3, 3\), network \(8, 2, 3, 3, 3\)"):
        load_pretrained(_nnunet_network(tiny_plans(features=(2, 8, 8)), 1), out)
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no 'network_weights'"):
        load_pretrained(_nnunet_network(tiny_plans(), 1), tmp_path / "other.pth")


def test_part_encoder_is_for_the_nnunet_format(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from genesis.cli.weights import main

    assert main(["export", str(tmp_path / "c.pt"), "--name", "unet3d.x", "--license", "MIT", "--part", "encoder"]) == 2
    assert "--format nnunet" in capsys.readouterr().err


# -- the fine-tuning schedule and trainer -----------------------------------------------------------

def test_schedule_freezes_then_warms_up_then_decays() -> None:
    s = FinetuneSchedule(num_epochs=20, initial_lr=1e-3, freeze_epochs=3, warmup_epochs=4)
    lrs = [s.lr(e) for e in range(20)]
    assert [s.encoder_frozen(e) for e in range(5)] == [True, True, True, False, False]
    assert [s.group_lrs(e)[1] for e in range(3)] == [0.0, 0.0, 0.0] and s.group_lrs(3) == (lrs[3], lrs[3])
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1e-3)  # decoder warm-up, encoder frozen
    assert lrs[3] < lrs[4] < lrs[5] < lrs[6] == pytest.approx(1e-3)  # all layers warm up again
    assert lrs[3] == pytest.approx(1e-3 / 4)
    assert lrs[7] == pytest.approx(1e-3) and all(a > b for a, b in zip(lrs[7:], lrs[8:]))  # nnU-Net's poly decay
    assert lrs[-1] < 1e-3 / 10
    assert [s.phase(e) for e in (0, 3, 7)] == ["frozen encoder warm-up", "warm-up", "decay"]
    with pytest.raises(ConfigError, match="must exceed"):
        FinetuneSchedule(num_epochs=7, initial_lr=1e-3, freeze_epochs=3, warmup_epochs=4)


def _trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plans: dict, weights: Path | None):
    """The genesis trainer as nnUNetv2_train constructs it (plans, configuration, fold, dataset.json)."""
    from genesis.nnunet.trainer import nnUNetTrainerGenesisFinetune

    channels = len(plans["foreground_intensity_properties_per_channel"])
    data = tmp_path / "pre" / plans["dataset_name"] / "nnUNetPlans_3d_fullres"
    data.mkdir(parents=True, exist_ok=True)
    (data / "case.b2nd").touch()  # lets nnU-Net infer its dataset class; no case is read here
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    if weights is None:
        monkeypatch.delenv("GENESIS_NNUNET_WEIGHTS", raising=False)
    else:
        monkeypatch.setenv("GENESIS_NNUNET_WEIGHTS", str(weights))
    dataset = {"channel_names": {str(c): "CT" for c in range(channels)}, "labels": {"background": 0, "lesion": 1},
               "numTraining": 2, "file_ending": ".nii.gz"}
    trainer = nnUNetTrainerGenesisFinetune(dict(plans, continue_training=False), "3d_fullres", 0, dataset,
                                           device=torch.device("cpu"))
    trainer.num_epochs, trainer.freeze_epochs, trainer.warmup_epochs = 6, 2, 2
    trainer.initialize()
    return trainer


def test_trainer_loads_the_encoder_and_freezes_it_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genesis.nnunet.export import export_nnunet

    target = tiny_plans(channels=2, decoder=2)
    weights = export_nnunet(_pretrained(tmp_path, "PlainConvUNet"), tmp_path / "enc.pth", plans=target,
                            part="encoder").path
    trainer = _trainer(tmp_path, monkeypatch, target, weights)
    file_weights = torch.load(weights, weights_only=True)["network_weights"]
    assert all(torch.equal(trainer.network.state_dict()[k], v) for k, v in file_weights.items())
    assert f"{len(trainer.network.encoder.state_dict())} encoder tensors loaded" in open(trainer.log_file).read()

    g = torch.Generator().manual_seed(0)
    seg = (torch.rand(2, 1, 8, 16, 16, generator=g) > 0.5).float()
    batch = {"data": torch.rand(2, 2, 8, 16, 16, generator=g),
             "target": [seg, F.interpolate(seg, scale_factor=0.5, mode="nearest")]}  # deep supervision scales

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in trainer.network.state_dict().items()}

    encoder = [k for k in trainer.network.state_dict() if k.startswith("encoder.")]
    decoder = [k for k in trainer.network.state_dict() if k.startswith("decoder.stages.")]
    for epoch in range(4):
        trainer.current_epoch = epoch
        trainer.on_train_epoch_start()  # what nnU-Net's run_training calls each epoch
        rest_lr, encoder_lr = (g["lr"] for g in trainer.optimizer.param_groups)
        assert (rest_lr, encoder_lr) == trainer.schedule.group_lrs(epoch)
        before = snapshot()
        assert torch.isfinite(torch.as_tensor(trainer.train_step(batch)["loss"]))  # nnU-Net's own step and loss
        after = snapshot()
        frozen = epoch < 2
        assert all(torch.equal(after[k], before[k]) for k in encoder) == frozen, epoch
        assert any(not torch.equal(after[k], before[k]) for k in decoder)
        if frozen:  # the clip and the optimizer see no encoder gradient
            assert all(p.grad is None or not p.grad.any() for p in trainer.network.encoder.parameters())
    log = open(trainer.log_file).read()
    assert "frozen encoder warm-up from epoch 0 (encoder frozen)" in log and "warm-up from epoch 2 (all layers" in log

    # nnUNetv2_train --c: nnU-Net's checkpoint holds both parameter groups; the schedule follows the epoch
    trainer.current_epoch = 1
    trainer.save_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    resumed = _trainer(tmp_path, monkeypatch, target, weights)
    resumed.load_checkpoint(str(tmp_path / "checkpoint_latest.pth"))
    assert resumed.current_epoch == 2 and len(resumed.optimizer.state) == len(trainer.optimizer.state) > 0
    resumed.lr_scheduler.step(resumed.current_epoch)  # as on_train_epoch_start does
    assert [g["lr"] for g in resumed.optimizer.param_groups] == list(resumed.schedule.group_lrs(2))


def test_trainer_without_weights_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _trainer(tmp_path, monkeypatch, tiny_plans(), None)
    assert "GENESIS_NNUNET_WEIGHTS is not set" in open(trainer.log_file).read()
    assert [len(g["params"]) for g in trainer.optimizer.param_groups] == [
        len(list(trainer.network.parameters())) - len(list(trainer.network.encoder.parameters())),
        len(list(trainer.network.encoder.parameters()))]


def test_trainer_refuses_weights_for_other_plans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genesis.nnunet.export import export_nnunet

    weights = export_nnunet(_pretrained(tmp_path, "PlainConvUNet"), tmp_path / "enc.pth", part="encoder").path
    with pytest.raises(CheckpointError, match="encoder weights do not fit"):
        _trainer(tmp_path, monkeypatch, tiny_plans(features=(4, 4, 4)), weights)


# -- installing the trainer where nnU-Net looks ---------------------------------------------------

_LOOKUP = r"""
import sys
from genesis.cli.weights import main
assert main(["install-nnunet-trainer"]) == 0
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
cls = recursive_find_trainer_class_by_name("nnUNetTrainerGenesisFinetune")
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
assert issubclass(cls, nnUNetTrainer) and cls.__module__ == "genesis.nnunet.trainer", cls
# found before the lookup reaches the primus trainers (timm -> torchvision)
assert "timm" not in sys.modules and "torchvision" not in sys.modules, "imported timm/torchvision"
assert main(["install-nnunet-trainer", "--uninstall"]) == 0
print("FOUND", cls.__name__)
"""


@pytest.mark.slow
def test_installed_trainer_is_found_by_nnunets_lookup(tmp_path: Path) -> None:
    """Installs into a copy of the nnunetv2 package (never into the environment's own)."""
    import nnunetv2

    site = tmp_path / "site"
    shutil.copytree(Path(nnunetv2.__file__).parent, site / "nnunetv2", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _LOOKUP], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "FOUND nnUNetTrainerGenesisFinetune" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert "nnUNetTrainerGenesis.py" in proc.stdout  # the command printed where it wrote
    assert not (site / "nnunetv2" / "training" / "nnUNetTrainer" / "nnUNetTrainerGenesis.py").exists()  # uninstalled
    assert not (Path(nnunetv2.__file__).parent / "training" / "nnUNetTrainer" / "nnUNetTrainerGenesis.py").exists()


def test_install_into_a_folder_and_never_over_a_foreign_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from genesis.cli.weights import main
    from genesis.nnunet.trainer import nnUNetTrainerGenesisFinetune

    assert main(["install-nnunet-trainer", "--dir", str(tmp_path)]) == 0
    assert f"nnUNet_extTrainer={tmp_path}" in capsys.readouterr().out
    # the function nnU-Net searches nnUNet_extTrainer folders with
    found = recursive_find_python_class(str(tmp_path), "nnUNetTrainerGenesisFinetune", None,
                                        cleanup_imports_from_base_folder=True)
    assert found is nnUNetTrainerGenesisFinetune
    foreign = tmp_path / "other"
    foreign.mkdir()
    (foreign / "nnUNetTrainerGenesis.py").write_text("# someone else's trainer\n")
    assert main(["install-nnunet-trainer", "--dir", str(foreign)]) == 2
    assert "not written by genesis" in capsys.readouterr().err
    assert (foreign / "nnUNetTrainerGenesis.py").read_text() == "# someone else's trainer\n"
