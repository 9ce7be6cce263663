"""Reading CT: files and DICOM series -> :class:`Volume` (float32 HU, (z, y, x), spacing in mm).

Geometry follows the ITK/LPS physical convention; see :mod:`genesis.io.volume`.
"""

from genesis.io.dicom import SeriesInfo, is_dicom_file, list_dicom_series, read_dicom_series, write_dicom_series
from genesis.io.readers import FILE_FORMATS, assumed_spacing, check_volume, load_volume, save_volume, volume_suffix
from genesis.io.volume import Volume

__all__ = [
    "FILE_FORMATS",
    "SeriesInfo",
    "Volume",
    "assumed_spacing",
    "check_volume",
    "is_dicom_file",
    "list_dicom_series",
    "load_volume",
    "read_dicom_series",
    "save_volume",
    "volume_suffix",
    "write_dicom_series",
]
