"""Data pipeline: HU volume -> [0, 1] volume -> cubes -> batches.

Submodules: :mod:`~genesis.data.preprocess` (window, resample, body crop),
:mod:`~genesis.data.sampler` (cubes, Models Genesis rejection rule), :mod:`~genesis.data.cache`
(preprocessed .npy cache), :mod:`~genesis.data.sources` (files, manifests, synthetic),
:mod:`~genesis.data.datasets` (deterministic cube dataset and loader), ``public`` (dataset
layouts) and ``synthetic`` (synthetic chest CT, imported on demand).
"""

from genesis.data.cache import VolumeCache
from genesis.data.datasets import CubeDataset, collate_cubes, epoch_keys, make_loader
from genesis.data.preprocess import PreprocessConfig, crop_foreground, preprocess, resample, window_hu
from genesis.data.sampler import SamplerConfig, SubVolumeSampler
from genesis.data.sources import FileVolumeSource, SyntheticVolumeSource, VolumeSource, volume_source_from_arg

__all__ = [
    "CubeDataset",
    "FileVolumeSource",
    "PreprocessConfig",
    "SamplerConfig",
    "SubVolumeSampler",
    "SyntheticVolumeSource",
    "VolumeCache",
    "VolumeSource",
    "collate_cubes",
    "crop_foreground",
    "epoch_keys",
    "make_loader",
    "preprocess",
    "resample",
    "volume_source_from_arg",
    "window_hu",
]
