"""What a volume file claims, checked before it is trusted: sizes, compressed streams, spacing.

ITK and nibabel trust headers: ITK zero-fills a short or corrupt compressed MetaImage/NRRD,
nibabel does not verify the gzip CRC of a ``.nii.gz`` unless it happens to read to the end, both
replace a zero or missing spacing by 1 mm, and both allocate whatever size a header declares.
These checks sit between the header and the pixels, so every reader caller is covered.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from genesis.errors import GenesisError, GenesisWarning, VolumeReadError
from genesis.io.volume import Volume

#: Largest float32 volume we agree to allocate (a 2048 x 1024 x 1024 CT is 8 GiB); larger headers
#: are refused before any allocation, as are those that do not fit in the memory available now.
MAX_VOLUME_BYTES = 16 << 30

#: Bytes per element of the MetaImage element types.
META_ELEMENT_BYTES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
    "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}

#: Bytes per element of the NRRD types (after normalising the type name).
NRRD_ELEMENT_BYTES = {
    "signed char": 1, "int8": 1, "int8_t": 1, "uchar": 1, "unsigned char": 1, "uint8": 1, "uint8_t": 1,
    "short": 2, "short int": 2, "signed short": 2, "signed short int": 2, "int16": 2, "int16_t": 2,
    "ushort": 2, "unsigned short": 2, "unsigned short int": 2, "uint16": 2, "uint16_t": 2,
    "int": 4, "signed int": 4, "int32": 4, "int32_t": 4, "uint": 4, "unsigned int": 4, "uint32": 4, "uint32_t": 4,
    "longlong": 8, "long long": 8, "int64": 8, "int64_t": 8, "ulonglong": 8, "unsigned long long": 8,
    "uint64": 8, "uint64_t": 8, "float": 4, "double": 8,
}

_CHUNK = 1 << 20


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_allocation(n_bytes: int, path: str | Path | None, what: str = "the volume", *,
                     limit: int | None = MAX_VOLUME_BYTES, error: type[GenesisError] = VolumeReadError) -> None:
    """Refuse to allocate ``n_bytes`` for ``what`` when it exceeds ``limit`` (default
    :data:`MAX_VOLUME_BYTES`; None: no fixed limit) or the memory available now.

    Raises:
        ``error`` (default VolumeReadError): naming ``path`` and both sizes.
    """
    gib = n_bytes / (1 << 30)
    if limit is not None and n_bytes > limit:
        raise error(
            f"header declares {what} of {gib:.1f} GiB, more than the {limit / (1 << 30):g} GiB limit "
            "(corrupt header?)", path)
    free = available_memory()
    if free is not None and n_bytes > free:
        raise error(
            f"header declares {what} of {gib:.1f} GiB but only {free / (1 << 30):.1f} GiB of memory is available",
            path)


def npz_headers(path: str | Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of the arrays in an ``.npz``, read from their ``.npy`` headers only.

    ``np.load(...)[name]`` allocates whatever a member's header declares (and inflates a
    compressed member to that size); reading the headers first lets the caller refuse a claim
    before any allocation.

    Raises:
        OSError / ValueError / zipfile.BadZipFile: not a readable npz (the caller names the file).
    """
    import zipfile

    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as handle:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
                else:  # 3.0 (utf-8 field names) has no public reader; same header layout as 2.0
                    shape, _, dtype = np.lib.format._read_array_header(handle, version)
            out[info.filename[:-4]] = (tuple(int(n) for n in shape), np.dtype(dtype))
    return out


def check_declared_arrays(declared: Mapping[str, tuple[Sequence[int], Any]], path: str | Path, what: str = "arrays",
                          *, limit: int | None = MAX_VOLUME_BYTES, error: type[GenesisError] = VolumeReadError) -> None:
    """:func:`check_allocation` for the arrays a file declares (HDF5 datasets, npz members).

    Args:
        declared: ``{name: (shape, dtype)}`` from the file's headers (nothing read yet).
        what: the kind of file for the message (``"arrays"``, ``"weights"``).
    """
    sizes = {name: math.prod(int(n) for n in shape) * np.dtype(dtype).itemsize for name, (shape, dtype) in declared.items()}
    if not sizes:
        return
    largest = max(sizes, key=sizes.__getitem__)
    shape = "x".join(str(int(n)) for n in declared[largest][0])
    check_allocation(sum(sizes.values()), path, f"{what} ({largest}: {shape} {np.dtype(declared[largest][1])}"
                     f"{f', and {len(sizes) - 1} more' if len(sizes) > 1 else ''})", limit=limit, error=error)


def verify_compressed(path: Path, offset: int, wbits: int, expected: int | None, what: str) -> int:
    """Decompress ``path`` from ``offset`` to the end, discarding the output, and check it.

    The whole stream is read, so zlib checks the gzip CRC-32 and length trailer (or the zlib
    Adler-32); a stream that ends early or carries garbage after it is an error. Memory stays
    bounded (1 MiB chunks).

    Args:
        path: the file.
        offset: where the compressed stream starts (after a MetaImage/NRRD text header).
        wbits: 31 for gzip, 15 for zlib, 47 to accept either.
        expected: decompressed size the header declares (None: not checked).
        what: name of the data for messages (``"gzip stream"``...).
    Returns:
        The length in bytes of the compressed stream (up to the end of its last gzip member; zero
        padding after it not counted).
    Raises:
        VolumeReadError: corrupt, truncated, or a decompressed size other than ``expected``.
    """
    total = 0
    fed = 0  # compressed bytes read from the file so far
    stream_end = 0

    def check_size() -> None:
        if expected is not None and total > expected:
            raise VolumeReadError(f"{what} is truncated or corrupt: it holds more than the {expected} bytes its header declares", path)

    try:
        with open(path, "rb") as handle:
            handle.seek(offset)

            def read() -> bytes:
                nonlocal fed
                block = handle.read(_CHUNK)
                fed += len(block)
                return block

            inflater = zlib.decompressobj(wbits)
            chunk = read()
            while chunk:
                total += len(inflater.decompress(chunk, _CHUNK))
                check_size()
                while inflater.unconsumed_tail:
                    total += len(inflater.decompress(inflater.unconsumed_tail, _CHUNK))
                    check_size()
                if inflater.eof:
                    stream_end = fed - len(inflater.unused_data)
                    rest = inflater.unused_data or read()
                    if rest[:2] == b"\x1f\x8b" and wbits > 15:  # a further gzip member
                        inflater = zlib.decompressobj(wbits)
                        chunk = rest
                        continue
                    while rest:  # zero padding after the stream is harmless, anything else is not
                        if rest.strip(b"\0"):
                            raise VolumeReadError(f"{what} is truncated or corrupt: unexpected bytes after its end", path)
                        rest = read()
                    break
                chunk = read()
            total += len(inflater.flush())
    except zlib.error as exc:
        raise VolumeReadError(f"{what} is truncated or corrupt (checksum or data error: {exc})", path) from exc
    except OSError as exc:
        raise VolumeReadError(f"cannot read {what} ({exc.strerror or exc})", path) from exc
    if not inflater.eof:
        raise VolumeReadError(f"{what} is truncated or corrupt: it ends before its end marker and checksum", path)
    if expected is not None and total != expected:
        raise VolumeReadError(
            f"{what} is truncated or corrupt: {total} bytes decompressed, the header declares {expected}", path)
    return stream_end


def read_text_header(path: Path, stop: str) -> tuple[dict[str, str], int]:
    """``key -> value`` of a MetaImage (``=``) or NRRD (``:``) text header and the data offset.

    Reading stops after the line starting with ``stop`` (``"ElementDataFile"``) or, for NRRD
    (``stop=""``), at the first empty line. Keys are lower-cased.
    """
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as handle:
        for raw in iter(lambda: handle.readline(1 << 16), b""):
            offset += len(raw)
            line = raw.decode("latin-1").rstrip("\r\n")
            if stop == "" and not line.strip():
                break
            sep = "=" if stop else ":"
            if stop == "" and ":=" in line:
                continue  # NRRD key/value pairs, not fields
            key, found, value = line.partition(sep)
            if found:
                fields[key.strip().lower()] = value.strip()
            if stop and key.strip().lower() == stop.lower():
                break
            if offset > 1 << 20:
                break
    return fields, offset


def _floats(text: str) -> list[float]:
    out = []
    for token in text.replace("(", " ").replace(")", " ").replace(",", " ").split():
        try:
            out.append(float(token))
        except ValueError:
            out.append(math.nan)
    return out


def _int_field(fields: Mapping[str, str], key: str) -> int | None:
    try:
        return int(fields[key].split()[0])
    except (KeyError, ValueError, IndexError):
        return None


def metaimage_checks(path: Path) -> tuple[float, ...] | None:
    """Verify a MetaImage's data against its header; return the declared spacing (x, y, z).

    ITK reads exactly ``CompressedDataSize`` bytes of a compressed stream and zero-fills what
    they do not cover (a header claiming half the stream gives half the voxels as 0, without an
    error), and reads the first DimSize x ElementSize bytes of a raw data file however long it is.
    So the compressed stream must be exactly as long as claimed and inflate to exactly DimSize x
    ElementSize bytes, and a raw data file must hold exactly that many.

    Returns None for the spacing when the header has neither ElementSpacing nor ElementSize.
    Raises:
        VolumeReadError: naming the file and both sizes.
    """
    fields, offset = read_text_header(path, "ElementDataFile")
    spacing_text = fields.get("elementspacing") or fields.get("elementsize")
    spacing = tuple(_floats(spacing_text)) if spacing_text else None
    data_file = fields.get("elementdatafile", "LOCAL")
    if data_file.upper() == "LOCAL":
        data_path, data_offset = path, offset
    elif " " not in data_file and "%" not in data_file and data_file.upper() != "LIST":
        data_path, data_offset = path.parent / data_file, 0
    else:
        return spacing  # a list or pattern of slice files: ITK reports missing ones itself
    dims = [int(v) for v in _floats(fields.get("dimsize", "")) if math.isfinite(v)]
    size = META_ELEMENT_BYTES.get(fields.get("elementtype", "").upper())
    channels = int(_floats(fields.get("elementnumberofchannels", "1"))[0] or 1)
    expected = math.prod(dims) * size * channels if dims and size else None
    if fields.get("compresseddata", "false").lower() == "true":
        stream = verify_compressed(data_path, data_offset, 47, expected, f"compressed MetaImage data of {path.name}")
        claimed = _int_field(fields, "compresseddatasize")
        if claimed is not None and claimed != stream:
            part = "only part of the data (the rest would read as 0)" if claimed < stream else "past the end of the data"
            raise VolumeReadError(
                f"header says CompressedDataSize = {claimed} but the compressed data stream is {stream} bytes long; "
                f"a reader trusting it would read {part}: corrupt or hand-edited header?", path)
    elif (expected is not None and "headersize" not in fields and data_path.is_file()
          and fields.get("binarydata", "true").lower() == "true"):  # ASCII data has no fixed size
        held = data_path.stat().st_size - data_offset
        if held != expected:
            why = "truncated or corrupt" if held < expected else "a wrong DimSize or ElementType, or another header's data?"
            raise VolumeReadError(f"the raw data {data_path.name} holds {held} bytes but DimSize x ElementType "
                                  f"declare {expected}: {why}", path)
    return spacing


def require_regular(path: Path, header: Path) -> None:
    """Refuse a detached data file that is a FIFO, socket or device: reading it could block forever.

    Raises:
        VolumeReadError: naming the header and its data file.
    """
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing: the reader names it
    if not stat.S_ISREG(mode):
        raise VolumeReadError(f"its data file {path.name} is not a regular file (a FIFO, socket or device); "
                              "refused: reading it could block", header)


def require_regular_data_file(path: Path) -> None:
    """A MetaImage / detached NRRD header whose data file is a FIFO, socket or device is refused
    before any library opens it (ITK would block reading it, or fail with a traceback)."""
    name = path.name.lower()
    if name.endswith((".mhd", ".mha")):
        fields, _ = read_text_header(path, "ElementDataFile")
        detached = fields.get("elementdatafile", "LOCAL")
    elif name.endswith((".nhdr", ".nrrd")):
        fields, _ = read_text_header(path, "")
        detached = fields.get("data file") or fields.get("datafile") or ""
    else:
        return
    if detached and detached.upper() not in ("LOCAL", "LIST") and " " not in detached and "%" not in detached:
        require_regular(path.parent / detached, path)


def nrrd_checks(path: Path) -> tuple[float, ...] | None:
    """Verify a gzip NRRD stream against its header; return the declared spacing (axis order of
    the file), or None when the header gives neither ``spacings`` nor ``space directions``."""
    fields, offset = read_text_header(path, "")
    spacing: tuple[float, ...] | None = None
    if "space directions" in fields:
        vectors = [v for v in fields["space directions"].split() if v.lower() != "none"]
        spacing = tuple(math.sqrt(sum(c * c for c in _floats(v))) for v in vectors)
    elif "spacings" in fields:
        spacing = tuple(v for v in _floats(fields["spacings"]))
        spacing = tuple(v for v in spacing if not math.isnan(v)) if len(spacing) > 3 else spacing
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        data_file = fields.get("data file") or fields.get("datafile")
        if data_file is None:
            data_path, data_offset = path, offset
        elif " " not in data_file and "%" not in data_file and data_file.upper() != "LIST":
            data_path, data_offset = path.parent / data_file, 0
        else:
            return spacing
        dims = [int(v) for v in _floats(fields.get("sizes", "")) if math.isfinite(v)]
        size = NRRD_ELEMENT_BYTES.get(" ".join(fields.get("type", "").lower().split()))
        expected = math.prod(dims) * size if dims and size else None
        verify_compressed(data_path, data_offset, 31, expected, f"gzip data of {path.name}")
    return spacing


def resolve_spacing(
    volume: Volume, declared_xyz: tuple[float, ...] | None, assume_spacing: float | None, source: str
) -> Volume:
    """Check the spacing a file declares; never let a reader's silent 1 mm default through.

    Args:
        volume: as read (its spacing may hold the library's default for a bad value).
        declared_xyz: spacing in the file's header, (x, y, z); None when the header has none.
        assume_spacing: the user's explicit opt-in (``--assume-spacing MM``): use this many mm
            for every missing or invalid axis, with a warning.
        source: the header field, for messages (``"pixdim"``).
    Raises:
        VolumeReadError: missing, zero, negative or NaN spacing and no ``assume_spacing``.
    """
    declared = list(declared_xyz[:3]) if declared_xyz is not None else [math.nan] * 3
    declared += [math.nan] * (3 - len(declared))
    bad = [axis for axis, value in zip("xyz", declared) if not (math.isfinite(value) and value > 0)]
    if not bad:
        return volume
    shown = "missing" if declared_xyz is None else f"{tuple(declared)} mm (x, y, z)"
    if assume_spacing is None:
        raise VolumeReadError(
            f"invalid voxel spacing in the header ({source} {shown}; bad axis {', '.join(bad)}): fix the file, "
            "or pass --assume-spacing MM to use a spacing you know", volume.path)
    zyx = list(volume.spacing)
    for axis in bad:
        zyx["zyx".index(axis)] = float(assume_spacing)
    warnings.warn(f"{volume.path}: {source} {shown}; assuming {assume_spacing:g} mm on axis {', '.join(bad)} "
                  "(--assume-spacing)", GenesisWarning, stacklevel=3)
    volume.spacing = tuple(zyx)  # type: ignore[assignment]
    volume.metadata["assumed_spacing"] = bad
    return volume


def nifti_pixdim(path: Path) -> tuple[float, ...] | None:
    """The raw pixdim[1:4] (x, y, z) of a NIfTI-1/2 header, before any library "fixes" it
    (nibabel and ITK both turn a 0 into 1 mm). None when the header is not NIfTI."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read(540)
    except (OSError, EOFError, zlib.error):
        return None
    for order in "<>":
        if len(raw) >= 348 and struct.unpack(order + "i", raw[:4])[0] == 348:
            return struct.unpack(order + "3f", raw[80:92])
        if len(raw) >= 540 and struct.unpack(order + "i", raw[:4])[0] == 540:
            return struct.unpack(order + "3d", raw[112:136])
    return None
