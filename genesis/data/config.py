"""Where pretraining data come from and how sub-volumes are cut (the ``data`` section of a run).

Lives with the data layer so that the data kinds (:mod:`genesis.data.kinds`) resolve their part
of a run from it without importing the training package above them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Where the scans come from and how sub-volumes are cut.

    Attributes:
        data: a folder of scans, a CSV/YAML manifest or one file; None = the embedded synthetic
            chest CT default (outputs are then marked synthetic).
        cache_dir: cache of preprocessed volumes, read as memory maps (None: the per-user default,
            ``$GENESIS_CACHE/volumes`` or ``~/.cache/genesis/volumes``).
        cache: False turns the cache off (every volume is then preprocessed in memory, again in
            every loader worker and epoch; only for read-only machines).
        window: HU window mapped to [0, 1] (Models Genesis: [-1000, 1000]).
        spacing: resample to this (z, y, x) spacing in mm; None keeps the native spacing.
        crop_body: crop to the body's bounding box before sampling.
        crop: sub-volume size (D, H, W); the Models Genesis cube 64x64x32 is (32, 64, 64).
        models_genesis_sampler: use the reference cropper rules (edge margins, reject cubes that
            are not mostly lung); False samples uniformly inside the volume.
        cubes_per_volume: cubes drawn per training scan and epoch when ``steps_per_epoch`` is
            not set (reference: about 32).
        val_fraction: fraction of the scans held out for validation and evaluation.
        val_cubes: number of fixed validation cubes (None: ``cubes_per_volume`` per held-out scan,
            at most 512; they stay in memory).
        synthetic_volumes: number of synthetic scans when ``data`` is None.
        synthetic_shape: (z, y, x) voxels of each synthetic scan; None = the generator's default.
        modality: ``ct``, ``xray`` (chest radiographs, :mod:`genesis.data.radiographs`) or ``auto``
            (radiographs for a folder of PNG/JPEG, a CSV with a ``Path`` column of images, or the
            ``metadata`` task; synthetic radiographs when ``data`` is None).
        image_size: radiographs are resized to this square side (224; CheXpert also used 320).
        workers: DataLoader worker processes (they only read and crop cubes; proxy transforms
            run in the training process, on the GPU when there is one).
        assume_spacing: mm used where a scan's spacing is missing, zero, negative or NaN (an
            explicit opt-in, with a warning); None (default) makes such a scan an error.
        keep_labels: use label maps found in a ``data`` folder (skipped by default).
        keep_non_hu: use images without Hounsfield units found in a ``data`` folder (skipped by default).
        max_image_pixels: radiographs whose header claims more pixels are refused before decoding
            (default 8192 x 8192; None: no limit beyond the free memory).
        resident_mb: megabytes of cached volumes each process keeps memory-mapped (the first it
            reads that fit); the cubes of the others are read with ``pread``, which maps nothing,
            so the RSS does not grow with the number of scans. None: every volume stays mapped.
        group_size: arrays files without ``groups``: each run of this many consecutive samples is
            one patient (the train/validation split never cuts a patient).
    """

    data: str | None = None
    cache_dir: str | None = None
    cache: bool = True
    window: tuple[float, float] = (-1000.0, 1000.0)
    spacing: tuple[float, float, float] | None = None
    crop_body: bool = False
    crop: tuple[int, int, int] = (32, 64, 64)
    models_genesis_sampler: bool = True
    cubes_per_volume: int = 32
    val_fraction: float = 0.2
    val_cubes: int | None = None
    synthetic_volumes: int = 8
    synthetic_shape: tuple[int, int, int] | None = None
    workers: int = 0
    assume_spacing: float | None = None
    keep_labels: bool = False
    keep_non_hu: bool = False
    modality: str = "auto"
    image_size: int = 224
    max_image_pixels: int | None = 8192 * 8192  # genesis.io.radiograph.MAX_RADIOGRAPH_PIXELS
    resident_mb: float | None = 64.0  # genesis.data.datasets.DEFAULT_RESIDENT_MB
    group_size: int | None = None
