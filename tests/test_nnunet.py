"""nnU-Net round trip on CPU: plan and preprocess a tiny synthetic CT dataset with nnU-Net, pretrain
its network with genesis, export, and load the file with nnU-Net's own ``load_pretrained_weights``.

Skipped when the optional extra (``pip install -e ".[nnunet]"``) is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

from genesis.errors import CheckpointError, ConfigError  # noqa: E402

DATASET = "Dataset901_GenesisTiny"

# nnUNetv2_plan_and_preprocess's own entry point, run in a fresh process (nnunetv2 reads its
# folders from the environment at import). Two test-only speed-ups, nothing else changed: its
# "spawn" process pools become thread pools (spawning interpreters that re-import torch costs
# more than the whole job) and the foreground intensity statistics sample 1e5 voxels, not 1e8.
_PLAN = r"""
import multiprocessing, sys
from multiprocessing.pool import ThreadPool
class _Threads:
    def Pool(self, n):
        return ThreadPool(n)
_get_context = multiprocessing.get_context
multiprocessing.get_context = lambda method=None: _Threads() if method == "spawn" else _get_context(method)
from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
_init = DatasetFingerprintExtractor.__init__
def _fewer_samples(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.num_foreground_voxels_for_intensitystats = 1e5
DatasetFingerprintExtractor.__init__ = _fewer_samples
from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry
sys.argv = ["nnUNetv2_plan_and_preprocess", "-d", "901", "-c", "3d_fullres", "-np", "1", "-npfp", "1",
            "--verify_dataset_integrity"]
plan_and_preprocess_entry()
"""


def _write_raw_dataset(raw: Path, n: int = 4) -> Path:
    """A tiny nnU-Net raw dataset: synthetic chest CTs (HU) with their lung masks as labels."""
    import SimpleITK as sitk

    from genesis.data.synthetic import generate_chest_ct

    ds = raw / DATASET
    (ds / "imagesTr").mkdir(parents=True)
    (ds / "labelsTr").mkdir()
    for i in range(n):
        ct = generate_chest_ct(seed=i, shape=(16, 32, 32), spacing=(15.0, 10.0, 10.0))
        image = sitk.GetImageFromArray(ct.volume.array.astype(np.float32))
        image.SetSpacing(tuple(float(s) for s in ct.volume.spacing[::-1]))
        lungs = (ct.masks["lungs"] > 0).astype(np.uint8)
        label = sitk.GetImageFromArray(lungs)
        label.CopyInformation(image)
        sitk.WriteImage(image, str(ds / "imagesTr" / f"case{i:03d}_0000.nii.gz"))
        sitk.WriteImage(label, str(ds / "labelsTr" / f"case{i:03d}.nii.gz"))
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "lung": 1},
                                                 "numTraining": n, "file_ending": ".nii.gz"}))
    return ds


@pytest.fixture(scope="module")
def nnunet_dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Raw dataset, nnU-Net's plans and preprocessed folder (made by nnU-Net itself)."""
    root = tmp_path_factory.mktemp("nnunet")
    raw = _write_raw_dataset(root / "nnUNet_raw")
    env = dict(os.environ, nnUNet_raw=str(root / "nnUNet_raw"), nnUNet_preprocessed=str(root / "nnUNet_preprocessed"),
               nnUNet_results=str(root / "nnUNet_results"), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _PLAN], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    pre = root / "nnUNet_preprocessed" / DATASET
    return {"root": root, "raw": raw, "pre": pre, "plans": pre / "nnUNetPlans.json"}


@pytest.fixture(scope="module")
def pretrained(nnunet_dataset: dict[str, Path]) -> Path:
    """A brief ``genesis-pretrain --model nnunet`` run on nnU-Net's preprocessed folder."""
    from genesis.cli.pretrain import main

    out = nnunet_dataset["root"] / "run"
    code = main(["--model", "nnunet", "--plans", str(nnunet_dataset["plans"]), "--configuration", "3d_fullres",
                 "--data", str(nnunet_dataset["pre"]), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "2", "--optimizer", "adam", "--lr", "1e-3", "--device", "cpu", "--no-progress",
                 "--set", "data.val_cubes=2", "--set", "data.models_genesis_sampler=false", "--set", "log.grids=false"])
    assert code == 0
    return out / "best.pt"


def test_pretrain_builds_nnunets_network_at_its_patch_size(nnunet_dataset: dict[str, Path], pretrained: Path) -> None:
    from genesis.nnunet.plans import build_network, configuration_manager, load_plans
    from genesis.training.checkpoint import load_checkpoint

    plans = load_plans(nnunet_dataset["plans"])
    _, cm = configuration_manager(plans, "3d_fullres")
    ckpt = load_checkpoint(pretrained)
    assert ckpt["model_name"] == "nnunet"
    assert tuple(ckpt["config"]["data"]["crop"]) == tuple(cm.patch_size)  # crop defaults to the patch size
    # the pretrained network has exactly the keys and shapes of the one nnU-Net builds (1 output channel)
    reference = build_network(plans, "3d_fullres", 1, 1, deep_supervision=False).state_dict()
    trained = {k[len("network."):]: v for k, v in ckpt["model"].items() if k.startswith("network.")}
    assert trained.keys() == reference.keys()
    assert all(trained[k].shape == v.shape for k, v in reference.items())
    assert ckpt["scans"]["train"] and all("/" not in s for s in ckpt["scans"]["train"] + ckpt["scans"]["val"])


def _nnunet_trainer(cls, nnunet_dataset: dict[str, Path], plans: dict, results: Path,
                    monkeypatch: pytest.MonkeyPatch):
    """A trainer as nnUNetv2_train constructs it (its get_trainer_from_args), for fold "all" (4 cases
    are too few for nnU-Net's 5-fold split)."""
    monkeypatch.setenv("nnUNet_preprocessed", str(nnunet_dataset["pre"].parent))
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # nnU-Net's data augmentation in this process
    dataset_json = json.loads((nnunet_dataset["pre"] / "dataset.json").read_text())
    return cls(dict(plans, continue_training=False), "3d_fullres", "all", dataset_json, device=torch.device("cpu"))


def test_export_loads_with_nnunets_load_pretrained_weights(nnunet_dataset: dict[str, Path], pretrained: Path,
                                                           capsys: pytest.CaptureFixture, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``nnUNetv2_train ... -pretrained_weights FILE`` does, with nnU-Net's own functions: its
    trainer builds the network (initialize), its maybe_load_checkpoint loads the file with
    load_pretrained_weights. (Importing these pulls neither timm nor torchvision; nnUNetv2_train's
    trainer lookup does, see the README.)"""
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from genesis.cli.weights import main

    out = nnunet_dataset["root"] / "genesis_pretrained.pth"
    assert main(["export", str(pretrained), "--format", "nnunet", "--out", str(out),
                 "--plans", str(nnunet_dataset["plans"]), "--configuration", "3d_fullres"]) == 0
    assert "-pretrained_weights" in capsys.readouterr().out
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    exported = torch.load(out, weights_only=True)["network_weights"]
    plans = json.loads(nnunet_dataset["plans"].read_text())
    trainer = _nnunet_trainer(nnUNetTrainer, nnunet_dataset, plans, tmp_path / "results", monkeypatch)
    trainer.initialize()  # 2 classes, deep supervision on, nnU-Net's initialisation
    fresh = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    maybe_load_checkpoint(trainer, continue_training=False, validation_only=False, pretrained_weights_file=str(out))
    loaded = trainer.network.state_dict()
    non_seg = [k for k in loaded if ".seg_layers." not in k]
    assert sorted(exported) == sorted(non_seg)  # every encoder and decoder tensor, no seg layer
    for key in non_seg:
        assert torch.equal(loaded[key], exported[key]), key
    for key in (k for k in loaded if ".seg_layers." in k):  # left to nnU-Net
        assert torch.equal(loaded[key], fresh[key]), key
    trained = torch.load(pretrained, weights_only=True)["model"]
    assert all(torch.equal(exported[k], trained["network." + k]) for k in non_seg)


def test_export_refuses_other_plans(nnunet_dataset: dict[str, Path], pretrained: Path, tmp_path: Path) -> None:
    from genesis.nnunet.export import export_nnunet

    plans = json.loads(nnunet_dataset["plans"].read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [2 * f for f in arch["features_per_stage"]]
    other = tmp_path / "otherPlans.json"
    other.write_text(json.dumps(plans))
    with pytest.raises(ConfigError, match="features_per_stage"):
        export_nnunet(pretrained, tmp_path / "x.pth", plans=other)
    with pytest.raises(ConfigError, match="configuration 'nope'"):
        export_nnunet(pretrained, tmp_path / "x.pth", configuration="nope")
    assert not (tmp_path / "x.pth").exists()


def test_export_refuses_other_models(tmp_path: Path) -> None:
    from genesis.nnunet.export import export_nnunet
    from genesis.training.checkpoint import save_checkpoint

    path = save_checkpoint({"model": {"w": torch.zeros(1)}, "model_name": "unet3d"}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="--model nnunet"):
        export_nnunet(path, tmp_path / "x.pth")


def test_raw_data_gets_nnunets_normalisation(nnunet_dataset: dict[str, Path]) -> None:
    """Raw CT through the plans' normalisation equals nnU-Net's own preprocessed case, and the
    network's input map turns the [0, 1] volume back into exactly nnU-Net's values."""
    from genesis.data.preprocess import PreprocessConfig
    from genesis.data.sources import volume_source_from_arg
    from genesis.models import create_model
    from genesis.nnunet import data as nd
    from genesis.nnunet.plans import intensity_map, load_plans

    plans = load_plans(nnunet_dataset["plans"])
    pre_source = nd.preprocessed_source(nnunet_dataset["pre"], plans, "3d_fullres")
    pre = nd.plans_preprocess_config(PreprocessConfig(), plans, "3d_fullres", keep_spacing=False)
    raw_source = nd.transposed(volume_source_from_arg(nnunet_dataset["raw"], pre), plans)
    assert len(raw_source) == len(pre_source) == 4  # imagesTr found, labelsTr skipped
    imap = intensity_map(plans, "3d_fullres")
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    assert imap.hu_window == (props["percentile_00_5"], props["percentile_99_5"])
    ours, theirs = raw_source.load(0), pre_source.load(0)
    assert ours.shape == theirs.shape and 0.0 <= ours.min() and ours.max() <= 1.0
    np.testing.assert_allclose(ours, theirs, atol=1e-4)

    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    folder = nd.resolve_preprocessed_folder(nnunet_dataset["pre"], plans, "3d_fullres")
    nnunet_values = np.asarray(infer_dataset_class(str(folder))(str(folder)).load_case("case000")[0][0])
    model = create_model("nnunet", plans=plans, configuration="3d_fullres")
    y = torch.from_numpy(theirs)
    np.testing.assert_allclose((y * model.input_scale + model.input_low).numpy(), nnunet_values, atol=1e-4)


def test_plans_errors(nnunet_dataset: dict[str, Path], tmp_path: Path) -> None:
    from genesis.nnunet.plans import load_plans, resolve_pretrain_config
    from genesis.training.config import DataConfig, PretrainConfig

    with pytest.raises(ConfigError, match="--plans"):
        PretrainConfig(model="nnunet").validate()
    plans = str(nnunet_dataset["plans"])
    with pytest.raises(ConfigError, match="multiple"):
        resolve_pretrain_config(PretrainConfig(model="nnunet", plans=plans, data=DataConfig(crop=(15, 32, 32))))
    with pytest.raises(ConfigError, match="available: 2d, 3d_fullres"):
        resolve_pretrain_config(PretrainConfig(model="nnunet", plans=plans, configuration="3d_huge"))
    with pytest.raises(ConfigError, match="--width"):
        resolve_pretrain_config(PretrainConfig(model="nnunet", plans=plans, width=8))
    explicit = resolve_pretrain_config(PretrainConfig(model="nnunet", plans=plans, data=DataConfig(crop=(8, 16, 16))))
    assert explicit.data.crop == (8, 16, 16)  # --crop wins over the patch size
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(Exception, match="not an nnU-Net plans file"):
        load_plans(tmp_path / "bad.json")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow
def test_genesis_trainer_in_nnunets_training_loop(nnunet_dataset: dict[str, Path], pretrained: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """nnU-Net's own run_training (its data loading, augmentation, deep supervision, validation and
    checkpoints) with the genesis trainer and encoder-only weights for plans with another decoder:
    the encoder stays as pretrained through the frozen epoch, then trains."""
    from genesis.nnunet.export import export_nnunet
    from genesis.nnunet.trainer import nnUNetTrainerGenesisFinetune

    plans = json.loads(nnunet_dataset["plans"].read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["n_conv_per_stage_decoder"] = [1, 1, 1]
    weights = export_nnunet(pretrained, tmp_path / "encoder.pth", plans=plans, part="encoder").path
    monkeypatch.setenv("GENESIS_NNUNET_WEIGHTS", str(weights))

    class Recording(nnUNetTrainerGenesisFinetune):
        def on_epoch_end(self) -> None:
            self.encoder_states.append({k: v.clone() for k, v in self.network.encoder.state_dict().items()})
            super().on_epoch_end()

    trainer = _nnunet_trainer(Recording, nnunet_dataset, plans, tmp_path / "results", monkeypatch)
    trainer.num_epochs, trainer.freeze_epochs, trainer.warmup_epochs = 3, 1, 1
    trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 2, 1
    trainer.encoder_states = []
    trainer.run_training()

    pretrained_encoder = {k[len("encoder."):]: v for k, v in torch.load(weights, weights_only=True)["network_weights"].items()}
    after_frozen, after_all = trainer.encoder_states[0], trainer.encoder_states[-1]
    assert len(trainer.encoder_states) == 3
    assert all(torch.equal(after_frozen[k], v) for k, v in pretrained_encoder.items())  # frozen epoch 0
    assert any(not torch.equal(after_all[k], v) for k, v in pretrained_encoder.items())  # then trained
    # a file this test wrote itself with nnU-Net (it pickles numpy objects): allow those types only
    import numpy as np

    allowed = [np._core.multiarray.scalar, np._core.multiarray._reconstruct, np.ndarray, np.dtype,
               type(np.dtype("float64")), type(np.dtype("float32")), type(np.dtype("int64"))]
    with torch.serialization.safe_globals(allowed):
        final = torch.load(Path(trainer.output_folder) / "checkpoint_final.pth", map_location="cpu", weights_only=True)
    assert final["trainer_name"] == "Recording" and final["current_epoch"] == 3
    assert all(torch.equal(final["network_weights"]["encoder." + k], v) for k, v in after_all.items())
    log = Path(trainer.log_file).read_text()
    assert "encoder tensors loaded" in log and "frozen encoder warm-up from epoch 0" in log
    assert "warm-up from epoch 1 (all layers train)" in log and "decay from epoch 2" in log


def test_quick_preset_and_contrastive_methods_work_with_nnunets_network(nnunet_dataset: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """--preset quick leaves the plans' widths and patch size alone; SimCLR trains nnU-Net's encoder."""
    from genesis.checkpoint import load_checkpoint, pretrained_backbone
    from genesis.cli.pretrain import main
    from genesis.nnunet.plans import configuration_manager, load_plans

    plans = load_plans(nnunet_dataset["plans"])
    _, cm = configuration_manager(plans, "3d_fullres")
    common = ["--model", "nnunet", "--plans", str(nnunet_dataset["plans"]), "--data", str(nnunet_dataset["pre"]),
              "--preset", "quick", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--device", "cpu",
              "--no-progress", "--set", "data.val_cubes=2", "--set", "log.grids=false"]
    assert main([*common, "--out", str(tmp_path / "quick")]) == 0
    ckpt = load_checkpoint(tmp_path / "quick" / "last.pt")
    assert tuple(ckpt["config"]["data"]["crop"]) == tuple(cm.patch_size) and ckpt["model_name"] == "nnunet"
    assert main([*common, "--task", "simclr", "--out", str(tmp_path / "simclr")]) == 0
    name, kwargs, state, left_out = pretrained_backbone(load_checkpoint(tmp_path / "simclr" / "last.pt"))
    assert name == "nnunet" and any(k.startswith("network.encoder.") for k in state) and left_out
