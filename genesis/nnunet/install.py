"""Make ``nnUNetv2_train -tr nnUNetTrainerGenesisFinetune`` find the genesis trainer.

nnU-Net 2.8 looks trainers up by class name (``nnunetv2.utilities.find_objects``): it imports the
modules of its ``nnunetv2/training/nnUNetTrainer`` folder, first the plain modules of the folder
itself (in name order), then its sub-packages, and only when none has the class, the folders of
the environment variable ``nnUNet_extTrainer``. :func:`install_trainer` writes one small module
into the first of these places (or into any folder, for ``nnUNet_extTrainer``); the module only
imports :class:`genesis.nnunet.trainer.nnUNetTrainerGenesisFinetune`, so the code stays in genesis
and updates with it.

Where it sits matters on a CPU machine with a CPU build of torch next to a CUDA build of
torchvision (what a plain ``pip install`` gives): nnU-Net's ``primus`` sub-package imports timm,
which imports torchvision, which fails to load there. A module at the top of the trainer folder
is found before the search reaches that sub-package; one in ``nnUNet_extTrainer`` only after it,
so that route needs a torchvision that loads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from genesis.errors import ConfigError
from genesis.fileio import atomic_write_text
from genesis.nnunet.plans import INSTALL_HINT

#: File name of the module written into nnU-Net's trainer folder.
MODULE_NAME = "nnUNetTrainerGenesis.py"
#: First line of that module: marks files genesis may overwrite or remove.
MARKER = "# Written by `genesis-weights install-nnunet-trainer`"
#: Trainer class names the module exposes.
TRAINERS = ("nnUNetTrainerGenesisFinetune",)

_MODULE_TEXT = f'''{MARKER}; remove it with
# `genesis-weights install-nnunet-trainer --uninstall`. nnU-Net finds trainers by class name among
# the modules of this folder (nnUNetv2_train -tr NAME); the code lives in genesis.nnunet.trainer.
try:
    from genesis.nnunet.trainer import {", ".join(TRAINERS)}  # noqa: F401
except ImportError:  # genesis uninstalled: define nothing, so nnU-Net's lookup of other trainers goes on
    pass
'''


def nnunet_trainer_folder() -> Path:
    """nnU-Net's ``nnunetv2/training/nnUNetTrainer`` folder (found without importing nnunetv2).

    Raises:
        ConfigError: nnunetv2 is not installed.
    """
    spec = importlib.util.find_spec("nnunetv2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"nnU-Net is not installed: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "training" / "nnUNetTrainer"


def _target(folder: str | Path | None) -> Path:
    folder = Path(folder).expanduser() if folder is not None else nnunet_trainer_folder()
    if not folder.is_dir():
        raise ConfigError("not a folder (give an existing folder for nnUNet_extTrainer)", folder)
    target = folder / MODULE_NAME
    if target.exists() and not target.read_text(errors="replace").startswith(MARKER):
        raise ConfigError("exists and was not written by genesis; not touching it", target)
    return target


def install_trainer(folder: str | Path | None = None) -> Path:
    """Write the trainer module into ``folder`` (default: nnU-Net's trainer folder); returns its path.

    Raises:
        ConfigError: nnunetv2 missing, ``folder`` not a folder, or a file of that name that genesis
            did not write.
    """
    target = _target(folder)
    try:
        atomic_write_text(target, _MODULE_TEXT)
    except PermissionError:
        raise ConfigError("cannot write here (run with the rights of the Python environment, or use "
                          "--dir FOLDER with nnUNet_extTrainer=FOLDER)", target) from None
    return target


def uninstall_trainer(folder: str | Path | None = None) -> Path | None:
    """Remove the module :func:`install_trainer` wrote; returns its path, or None if there was none."""
    target = _target(folder)
    if not target.exists():
        return None
    target.unlink()
    return target
