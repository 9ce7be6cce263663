"""PreadArray reads the same values as the memory map of the same file, and says when the file changed."""

from __future__ import annotations

import numpy as np
import pytest

from genesis.data.pread import AVAILABLE, PreadArray
from genesis.errors import VolumeReadError

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="no os.preadv on this platform")


def _saved(tmp_path, array: np.ndarray, name: str = "a.npy") -> np.memmap:
    path = tmp_path / name
    np.save(path, array)
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("shape,dtype", [((13, 17, 19), np.float32), ((40,), np.uint32), ((6, 11), np.uint8),
                                         ((5, 7, 9), np.int32)])
def test_every_kind_of_index_reads_what_the_map_holds(tmp_path, shape, dtype) -> None:
    rng = np.random.default_rng(0)
    mapped = _saved(tmp_path, (rng.random(shape) * 200).astype(dtype))
    read = PreadArray.of_memmap(mapped)
    assert read is not None and read.shape == mapped.shape and read.dtype == mapped.dtype and len(read) == shape[0]
    keys: list = [0, -1, shape[0] // 2, slice(None), slice(1, None), slice(2, 2), slice(None, None, 2)]
    if len(shape) >= 2:
        keys += [(1, slice(2, 5)), (slice(0, 3), 4), (slice(None), slice(1, -1)), (-2, -1)]
    if len(shape) == 3:
        for _ in range(20):  # random boxes: the sampler's cubes
            lo = [int(rng.integers(0, s)) for s in shape]
            hi = [int(rng.integers(a, s + 1)) for a, s in zip(lo, shape)]
            keys.append(tuple(slice(a, b) for a, b in zip(lo, hi)))
        keys += [(slice(0, shape[0]), slice(0, shape[1]), slice(3, 4)), (slice(None), slice(3, 3), slice(None)),
                 (2, slice(1, 4), slice(0, 2)), (np.int64(3), slice(None), 5)]
    for key in keys:
        want, got = mapped[key], read[key]
        assert np.shape(got) == np.shape(want), key
        np.testing.assert_array_equal(got, want, err_msg=str(key))
    picks = rng.integers(0, shape[0], 5)
    np.testing.assert_array_equal(read[picks], mapped[picks])  # fancy index: whole array, then index
    np.testing.assert_array_equal(read[True], mapped[True])  # a boolean is a mask, not index 1
    np.testing.assert_array_equal(np.asarray(read), mapped)
    assert int(read[-1].ravel()[0]) == int(np.asarray(mapped[-1]).ravel()[0])
    with pytest.raises(IndexError):
        read[shape[0]]


def test_a_view_of_a_map_is_not_taken_for_the_whole_file(tmp_path) -> None:
    mapped = _saved(tmp_path, np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    assert PreadArray.of_memmap(mapped[1:]) is None  # same filename and offset, other data
    assert PreadArray.of_memmap(np.asarray(mapped).copy()) is None


def test_a_file_cut_short_is_an_error_that_names_it(tmp_path) -> None:
    mapped = _saved(tmp_path, np.ones((8, 16, 16), np.float32))
    path, offset = mapped.filename, mapped.offset
    read = PreadArray(path, np.float32, offset, (8, 16, 16))
    del mapped
    with open(path, "r+b") as handle:  # the entry is replaced by a shorter file after it was checked
        handle.truncate(offset + 4 * 16 * 16 * 5 + 10)
    np.testing.assert_array_equal(read[0:2, 3:5, :], 1.0)
    with pytest.raises(VolumeReadError, match="a.npy: ended at byte"):
        read[4:8, 2:9, 1:3]
    with pytest.raises(VolumeReadError, match="shorter than its array"):
        PreadArray(path, np.float32, offset, (8, 16, 16))


def test_it_holds_one_descriptor_and_gives_it_back(tmp_path) -> None:
    import os

    mapped = _saved(tmp_path, np.zeros((2, 3, 4), np.float32))
    read = PreadArray.of_memmap(mapped)
    fd = read._fd
    os.fstat(fd)
    read.close()
    with pytest.raises(OSError):
        os.fstat(fd)
