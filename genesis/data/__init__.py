"""Data pipeline: HU volume -> [0, 1] volume -> cubes -> batches.

Submodules: :mod:`~genesis.data.preprocess` (window, resample, body crop),
:mod:`~genesis.data.sampler` (cubes, Models Genesis rejection rule), :mod:`~genesis.data.cache`
(preprocessed .npy cache), :mod:`~genesis.data.sources` (files, manifests, synthetic),
:mod:`~genesis.data.datasets` (deterministic cube dataset and loader), :mod:`~genesis.data.kinds`
(what a ``--data`` input is), :mod:`~genesis.data.groups` (which patient each volume is),
:mod:`~genesis.data.config` (the ``data`` settings), ``public`` (dataset layouts) and
``synthetic`` (synthetic chest CT).

The names below are imported on first use, so that ``genesis.data.config`` (read by the CLIs'
argument checks) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "VolumeCache": "cache",
    "CubeDataset": "datasets", "collate_cubes": "datasets", "epoch_keys": "datasets", "make_loader": "datasets",
    "PreprocessConfig": "preprocess", "crop_foreground": "preprocess", "preprocess": "preprocess",
    "resample": "preprocess", "window_hu": "preprocess",
    "SamplerConfig": "sampler", "SubVolumeSampler": "sampler",
    "FileVolumeSource": "sources", "SyntheticVolumeSource": "sources", "VolumeSource": "sources",
    "volume_source_from_arg": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'genesis.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"genesis.data.{module}"), name)
