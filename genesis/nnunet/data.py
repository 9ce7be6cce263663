"""nnU-Net data as genesis volume sources, with nnU-Net's intensities.

Two kinds of ``--data`` with ``--plans``:

* an nnU-Net **preprocessed** folder of the configuration (``nnUNet_preprocessed/DatasetXXX/
  nnUNetPlans_3d_fullres``, or the dataset folder above it): the cases nnU-Net itself trains on,
  read with nnunetv2's dataset classes (``.b2nd`` or ``.npz``/``.npy``), already resampled,
  transposed and normalised; channel 0 is mapped to [0, 1] by the plan's
  :class:`~genesis.nnunet.plans.IntensityMap`;
* anything else (an nnU-Net **raw** dataset with ``imagesTr``/``imagesTs``, a folder of scans, a
  manifest): read by the usual folder discovery (label folders such as ``labelsTr`` are skipped),
  resampled to the configuration's spacing and normalised like nnU-Net: for CT the HU are clipped to
  the foreground percentiles 0.5 / 99.5 of the plans, which, mapped to [0, 1], is the HU window
  ``[p0.5, p99.5]``; axes are transposed as nnU-Net does (``transpose_forward``).

The network of ``--model nnunet`` maps [0, 1] back to nnU-Net's scale before its first layer, so
it sees the same values nnU-Net feeds it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from genesis.errors import ConfigError, DatasetLayoutError, InputFileError
from genesis.nnunet.plans import configuration_manager, intensity_map, load_plans, require_nnunetv2

_CASE_SUFFIXES = (".b2nd", ".npz")


def _case_folder(path: Path) -> bool:
    names = [p.name for p in path.iterdir() if p.is_file()]
    return any(n.endswith(".pkl") for n in names) and any(n.endswith(_CASE_SUFFIXES) for n in names)


def is_preprocessed_folder(data: str | Path | None) -> bool:
    """True for an nnU-Net preprocessed configuration folder or the dataset folder holding plans."""
    if data is None:
        return False
    path = Path(data).expanduser()
    if not path.is_dir():
        return False
    if _case_folder(path):
        return True
    return any(p.is_file() for p in path.glob("*Plans*.json")) and any(
        p.is_dir() and _case_folder(p) for p in path.iterdir())


def resolve_preprocessed_folder(data: str | Path, plans: dict[str, Any], configuration: str) -> Path:
    """The folder of ``configuration``'s cases: ``data`` itself or ``data/<data_identifier>``.

    Raises:
        DatasetLayoutError: the folder belongs to another configuration or plans.
    """
    _, cm = configuration_manager(plans, configuration)
    path = Path(data).expanduser()
    if not _case_folder(path):
        sub = path / cm.data_identifier
        if not (sub.is_dir() and _case_folder(sub)):
            raise DatasetLayoutError(f"no preprocessed cases of configuration {configuration!r} "
                                     f"(expected folder {cm.data_identifier}); run nnUNetv2_preprocess", path)
        return sub
    plans_name = str(plans.get("plans_name", "nnUNetPlans"))
    if path.name.startswith(plans_name + "_") and path.name != cm.data_identifier:
        raise DatasetLayoutError(f"this folder holds {path.name}, but configuration {configuration!r} of "
                                 f"{plans_name} trains on {cm.data_identifier}", path)
    return path


class PreprocessedSource:
    """Cases of an nnU-Net preprocessed folder as [0, 1] float32 volumes (channel 0).

    Args:
        folder: the configuration's folder (see :func:`resolve_preprocessed_folder`).
        plans: the plans dict.
        configuration: the configuration name.
    Raises:
        DatasetLayoutError: no cases, or files nnU-Net cannot tell apart.
    """

    is_synthetic = False

    def __init__(self, folder: Path, plans: dict[str, Any], configuration: str) -> None:
        require_nnunetv2()
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        self.folder = Path(folder)
        self.map = intensity_map(plans, configuration)
        try:
            dataset_class = infer_dataset_class(str(self.folder))
        except (AssertionError, KeyError) as exc:
            raise DatasetLayoutError(f"not an nnU-Net preprocessed folder ({exc})", self.folder) from None
        self.dataset = dataset_class(str(self.folder))
        self.identifiers = list(self.dataset.identifiers)
        if not self.identifiers:
            raise DatasetLayoutError("nnU-Net preprocessed folder without cases", self.folder)

    def __len__(self) -> int:
        return len(self.identifiers)

    def name(self, i: int) -> str:
        return self.identifiers[i]

    def load(self, i: int) -> np.ndarray:
        """Case ``i``, channel 0, nnU-Net's axis order, mapped to [0, 1]."""
        identifier = self.identifiers[i]
        try:
            data = self.dataset.load_case(identifier)[0]
            array = np.asarray(data[0], dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - blosc2/numpy raise many kinds on damaged files
            raise InputFileError(f"cannot read nnU-Net case {identifier!r}: {exc}", self.folder) from None
        return np.ascontiguousarray(self.map.to_unit(array))


def preprocessed_source(data: str | Path, plans: str | Path | dict, configuration: str) -> PreprocessedSource:
    """A :class:`PreprocessedSource` for ``--data`` (configuration folder or dataset folder)."""
    plans = load_plans(plans)
    return PreprocessedSource(resolve_preprocessed_folder(data, plans, configuration), plans, configuration)


def plans_preprocess_config(pre: Any, plans: str | Path | dict, configuration: str, keep_spacing: bool) -> Any:
    """``pre`` (a :class:`~genesis.data.preprocess.PreprocessConfig`) with the plan's CT
    normalisation as HU window and its spacing (unless ``keep_spacing``).

    Raises:
        ConfigError: the plan does not use CTNormalization (raw non-CT images need a per-image
            normalisation: use the preprocessed folder instead).
    """
    plans = load_plans(plans)
    manager, cm = configuration_manager(plans, configuration)
    imap = intensity_map(plans, configuration)
    if imap.hu_window is None:
        raise ConfigError(f"plans normalise with {imap.scheme}; for raw images genesis applies CTNormalization "
                          "only: pass the nnU-Net preprocessed folder as --data instead")
    spacing = pre.spacing
    if not keep_spacing:
        # the configuration's spacing is in nnU-Net's transposed axis order; ours is the file's (z, y, x)
        transposed = [float(s) for s in cm.spacing]
        spacing = tuple(transposed[a] for a in manager.transpose_backward)
    return replace(pre, window=tuple(imap.hu_window), spacing=spacing)


class TransposedSource:
    """A source whose volumes are transposed like nnU-Net does (``transpose_forward``)."""

    def __init__(self, source: Any, axes: tuple[int, ...]) -> None:
        self.source, self.axes = source, tuple(axes)
        self.is_synthetic = bool(getattr(source, "is_synthetic", False))

    def __len__(self) -> int:
        return len(self.source)

    def name(self, i: int) -> str:
        return self.source.name(i)

    def load(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(np.transpose(self.source.load(i), self.axes))


def transposed(source: Any, plans: str | Path | dict) -> Any:
    """``source`` in nnU-Net's axis order (itself when the plans do not transpose)."""
    axes = tuple(int(a) for a in load_plans(plans).get("transpose_forward", (0, 1, 2)))
    return source if axes == (0, 1, 2) else TransposedSource(source, axes)
