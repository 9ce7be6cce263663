"""A detached data file that is a FIFO is refused by the reader itself (it would block forever)."""

from __future__ import annotations

import os
import sys

import pytest

from genesis.errors import VolumeReadError
from genesis.io import load_volume


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs are POSIX")
@pytest.mark.parametrize(("header", "text"), [
    ("scan.mhd", "ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\n"
                 "ElementSpacing = 1 1 1\nElementDataFile = scan.raw\n"),
    ("scan.nhdr", "NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nspacings: 1 1 1\nencoding: raw\n"
                  "data file: scan.raw\n\n"),
])
def test_a_fifo_data_file_is_refused_without_blocking(tmp_path, header: str, text: str) -> None:
    os.mkfifo(tmp_path / "scan.raw")
    (tmp_path / header).write_text(text)
    with pytest.raises(VolumeReadError, match="not a regular file"):
        load_volume(tmp_path / header)
