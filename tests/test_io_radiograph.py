"""Radiograph headers refused before decoding (claimed sizes, Pillow's bomb limit) and DICOM windows
the standard does not allow, each a clear error or an explicit warning, never a library traceback."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest

from genesis.cli._common import user_errors_exit
from genesis.errors import GenesisWarning, RadiographReadError
from genesis.io.radiograph import MAX_RADIOGRAPH_PIXELS, load_radiograph, write_radiograph_dicom


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width`` x ``height`` 8-bit grey pixels, with a few bytes of IDAT
    (nothing is decoded, so the data need not be complete): a few hundred bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(width + 1)))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height, fragment", [
    (100_000, 100_000, "decompression-bomb limit"),  # 10 gigapixels: beyond Pillow's hard limit
    (30_000, 30_000, "decompression-bomb limit"),  # 900 megapixels
    (10_000, 10_000, "100.0 megapixels, more than the limit of 67.1"),  # Pillow 13 only warns here
    (12_000, 6_000, "72.0 megapixels"),  # below Pillow's limits, above ours
])
def test_png_claiming_too_many_pixels_is_refused_before_decoding(tmp_path, width, height, fragment) -> None:
    path = _png_claiming(tmp_path / "claims.png", width, height)
    assert path.stat().st_size < 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape either
        with pytest.raises(RadiographReadError, match=fragment) as info:
            load_radiograph(path)
    assert "claims.png" in str(info.value) and "refused before decoding" in str(info.value).lower()


def test_max_pixels_is_a_setting(tmp_path) -> None:
    from PIL import Image

    path = tmp_path / "small.png"
    Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (30, 1))).save(path)
    assert load_radiograph(path, size=None).original_shape == (30, 40)
    with pytest.raises(RadiographReadError, match=r"30 x 40 = 0.0 megapixels.*limit of 0.001 \(max_pixels\)"):
        load_radiograph(path, max_pixels=1000)
    assert load_radiograph(path, size=None, max_pixels=None).original_shape == (30, 40)
    assert MAX_RADIOGRAPH_PIXELS == 8192 * 8192


def test_dicom_claiming_too_many_pixels_is_refused_before_decoding(tmp_path) -> None:
    import pydicom

    path = write_radiograph_dicom(tmp_path / "big.dcm", np.full((8, 8), 100))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 60_000, 60_000
    ds.save_as(path)
    with pytest.raises(RadiographReadError, match="60000 x 60000 = 3600.0 megapixels") as info:
        load_radiograph(path)
    assert "big.dcm" in str(info.value)


@pytest.mark.parametrize("width", [0.0, -5.0, 0.5])
def test_window_the_standard_does_not_allow_is_ignored_with_a_warning(tmp_path, width) -> None:
    pixels = np.tile(np.linspace(0, 4000, 40), (30, 1))
    plain = load_radiograph(write_radiograph_dicom(tmp_path / "plain.dcm", pixels), size=None)
    path = write_radiograph_dicom(tmp_path / "w.dcm", pixels, window=(2000.0, width))
    with pytest.warns(GenesisWarning, match=f"w.dcm: WindowWidth {width:g} is below 1.*own range"):
        windowed = load_radiograph(path, size=None)
    np.testing.assert_array_equal(windowed.array, plain.array)  # scaled as if there were no window


def test_radiograph_errors_are_one_line_at_the_cli(tmp_path, capsys) -> None:
    path = _png_claiming(tmp_path / "claims.png", 100_000, 100_000)

    @user_errors_exit
    def main() -> None:
        load_radiograph(path)

    assert main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: header claims")
