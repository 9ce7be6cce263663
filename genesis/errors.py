"""Exception and warning types for every failure a user can cause.

Every error a user can trigger (a bad file, a bad config, a bad checkpoint, a bad download) is a
:class:`GenesisError`; its message names the file (when there is one) and the problem, so the
command-line tools can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class GenesisError(Exception):
    """Base class of all errors a user of genesis can cause."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        super().__init__(f"{path}: {message}" if path is not None else message)


class InputFileError(GenesisError):
    """A file or directory given by the user is missing, unreadable or not what it should be."""


class VolumeReadError(InputFileError):
    """A volume could not be read (corrupt, truncated, wrong format, not 3D, NaN/inf, empty...)."""


class DicomSeriesError(VolumeReadError):
    """A DICOM series is broken: missing/corrupt slices, inconsistent spacing, several series."""


class DatasetLayoutError(InputFileError):
    """A dataset directory does not follow the layout its loader expects."""


class ConfigError(GenesisError):
    """A configuration file or a command-line override is invalid."""


class UnknownNameError(GenesisError, KeyError):
    """A registry (models, proxy tasks, targets, weights) has no entry of the requested name."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return Exception.__str__(self)


class FileWriteError(GenesisError, OSError):
    """A file could not be written (disk full, read-only or forbidden folder, I/O error); the
    message names the destination, not the temporary file.

    Also an :class:`OSError` with the original ``errno`` and ``strerror``, so code that catches
    ``OSError`` around a write keeps working.
    """

    def __str__(self) -> str:  # OSError would format errno and strerror instead of the message
        return Exception.__str__(self)


class CheckpointError(GenesisError):
    """A checkpoint is missing, corrupt, unsafe to load or does not fit the model."""


class WeightsError(GenesisError):
    """Released weights could not be found, downloaded or loaded."""


class ChecksumError(WeightsError):
    """A downloaded or cached file does not have the expected sha256."""


class TrainingDivergedError(GenesisError):
    """The loss, the weights or a validation metric became NaN or infinite (usually a learning
    rate too high), in pretraining or fine-tuning.

    Raised before anything is written, so the last good checkpoint stays as it was.

    Attributes:
        step: global optimizer step at which it was seen (1-based).
        loss: the offending loss value (NaN/inf), or the last loss when the weights diverged.
    """

    def __init__(self, message: str, step: int, loss: float, path: str | Path | None = None) -> None:
        self.step, self.loss = int(step), float(loss)
        super().__init__(message, path)


class GenesisWarning(UserWarning):
    """Something looks wrong but work can go on (e.g. a volume that does not look like HU)."""


class RadiographReadError(VolumeReadError):
    """A radiograph (DICOM CR/DX, PNG, JPEG) could not be read or is not a usable 2D image."""
