"""Reading chest radiographs: DICOM CR/DX, 8/16-bit PNG and JPEG -> a square float32 image in [0, 1].

DICOM pixels go through pydicom's own display pipeline, in the order the standard gives
(PS3.3 C.11): the modality LUT / rescale (:func:`pydicom.pixels.apply_modality_lut`), then the VOI
LUT or the window from the header (:func:`pydicom.pixels.apply_voi_lut`), then the result is
scaled to [0, 1] by the VOI output range (the LUT's range or the window's output range), so the
header's windowing decides what is black and what is white. Without any VOI in the header the
image is scaled by its own minimum and maximum. ``MONOCHROME1`` images (high values shown dark)
are inverted, so every radiograph comes out ``MONOCHROME2``: bone and dense tissue bright, air
dark. PNG/JPEG are divided by their type's maximum (255 or 65535); colour images become grey.

Resizing to a square ``size`` (224 for CheXpert-style DenseNets, 320 for the CheXpert paper's
larger runs) keeps the aspect ratio by default: ``aspect="pad"`` scales the longer side to
``size`` and pads the shorter one with black (0) on both sides, so nothing of the chest is cut;
``"crop"`` scales the shorter side to ``size`` and cuts the centre of the longer one (torchvision's
Resize + CenterCrop); ``"stretch"`` scales both sides independently (distorts the anatomy).
Resampling is Pillow's antialiased bilinear filter on float32 pixels.

Sizes are refused by the header, before any pixel is decoded: an image whose header claims more
than ``max_pixels`` pixels (by default :data:`MAX_RADIOGRAPH_PIXELS`, 8192 x 8192 = 67 megapixels;
the largest radiographs, mammograms of about 4000 x 6000, have 24) or more than the memory available is a
:class:`~genesis.errors.RadiographReadError`, and so is one beyond Pillow's own
decompression-bomb limit. A window the standard does not allow (WindowWidth below 1, or 0 or less
for ``LINEAR_EXACT``/``SIGMOID``, PS3.3 C.11.2.1.2) is display advice that cannot be followed,
not damaged pixels: it is ignored with a :class:`~genesis.errors.GenesisWarning` and the image
scaled by its own range, as when the header has no window.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from genesis.errors import GenesisWarning, RadiographReadError
from genesis.io.integrity import check_allocation

#: File endings read as radiographs (DICOM files may also have no ending, see :func:`is_radiograph_file`).
RADIOGRAPH_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ASPECT_MODES = ("pad", "crop", "stretch")
#: DICOM modalities of projection radiographs; others are read with a warning-free error.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR", "RG", "MG", "PX", "OT")
#: Default ``max_pixels`` of :func:`load_radiograph`: 8192 x 8192. A 43 x 43 cm detector at 0.1 mm
#: is 4300 x 4300 (18 megapixels), a large mammogram 4000 x 6000 (24); a header claiming more than
#: this is corrupt or a decompression bomb.
MAX_RADIOGRAPH_PIXELS = 8192 * 8192
#: float64 copies of the image alive at once while it is windowed and scaled (stored values,
#: rescaled, windowed), for the memory check.
_WORKING_COPIES = 3


@dataclass
class Radiograph:
    """One radiograph, display-ready.

    Attributes:
        array: float32 (H, W) in [0, 1], ``MONOCHROME2`` (air dark).
        path: the file it came from.
        spacing: (row, column) pixel spacing in mm of ``array`` (after resizing), or None when the
            file does not say (PNG/JPEG, DICOM without PixelSpacing/ImagerPixelSpacing).
        original_shape: (H, W) of the stored image.
        metadata: what the header says: ``modality``, ``photometric``, ``view`` (ViewPosition,
            e.g. ``PA``, ``AP``, ``LL``), ``sex`` (``M``/``F``), ``age`` (years), when present.
    """

    array: np.ndarray
    path: Path
    spacing: tuple[float, float] | None = None
    original_shape: tuple[int, int] = (0, 0)
    metadata: dict[str, Any] = field(default_factory=dict)


def is_radiograph_file(path: str | Path) -> bool:
    """A PNG/JPEG file, or a DICOM file (by ending or the 'DICM' marker)."""
    path = Path(path)
    if path.suffix.lower() in RADIOGRAPH_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _age_years(value: Any) -> float | None:
    """DICOM AS (``045Y``, ``006M``, ``010W``, ``003D``) -> years."""
    text = str(value or "").strip().upper()
    if len(text) < 2 or not text[:-1].isdigit():
        return None
    per_year = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}.get(text[-1])
    return None if per_year is None else int(text[:-1]) / per_year


def check_pixels(shape: tuple[int, ...], path: Path, max_pixels: int | None) -> None:
    """Refuse an image whose header claims more than ``max_pixels`` pixels (None: no fixed limit)
    or more than the memory available for its working copies, before any pixel is decoded.

    Args:
        shape: what the header claims: (rows, columns), with frames before and colour
            channels after them when there are several.
    Raises:
        RadiographReadError: naming the file, the claimed size and the limit.
    """
    pixels = math.prod(int(n) for n in shape)
    claimed = " x ".join(str(int(n)) for n in shape)
    if max_pixels is not None and pixels > max_pixels:
        raise RadiographReadError(
            f"header claims {claimed} = {pixels / 1e6:.1f} megapixels, more than the limit of {max_pixels / 1e6:g} "
            "(max_pixels): a corrupt header or a decompression bomb? Refused before decoding", path)
    check_allocation(pixels * 8 * _WORKING_COPIES, path, f"a {claimed} image", limit=None, error=RadiographReadError)


def _window_problem(ds: Any) -> str | None:
    """Why the header's first window cannot be applied (PS3.3 C.11.2.1.2), or None when it can or
    when none would be (no window, or a VOI LUT, which takes precedence)."""
    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTData") is not None and seq[0].get("LUTDescriptor") is not None:
        return None
    if ds.get("WindowCenter") is None or ds.get("WindowWidth") is None:
        return None

    def first(keyword: str) -> float:
        elem = ds[keyword]
        value = elem.value[0] if elem.VM > 1 else elem.value
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    center, width = first("WindowCenter"), first("WindowWidth")
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if not (math.isfinite(center) and math.isfinite(width)):
        return f"WindowCenter {center:g} / WindowWidth {width:g} is not a number"
    if function == "LINEAR" and width < 1:
        return f"WindowWidth {width:g} is below 1 (the standard's minimum for a LINEAR window)"
    if width <= 0:
        return f"WindowWidth {width:g} is not positive"
    return None


def _read_dicom(path: Path, max_pixels: int | None) -> tuple[np.ndarray, tuple[float, float] | None, dict[str, Any]]:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        # large values (the pixel data) are read only when used, after the size check
        ds = pydicom.dcmread(str(path), defer_size="1 MB")
    except Exception as exc:  # pydicom raises many types for damaged files
        raise RadiographReadError(f"not a readable DICOM file ({type(exc).__name__}: {exc})", path) from exc
    modality = str(ds.get("Modality", "") or "").upper() or None
    if modality is not None and modality not in RADIOGRAPH_MODALITIES:
        raise RadiographReadError(f"DICOM modality is {modality}, not a projection radiograph (CR, DX...)", path)
    if "PixelData" not in ds:
        raise RadiographReadError("DICOM file has no pixel data", path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    try:
        frames, rows, columns, samples = (int(ds.get(key, 1) or 1) for key in
                                          ("NumberOfFrames", "Rows", "Columns", "SamplesPerPixel"))
    except (TypeError, ValueError) as exc:
        raise RadiographReadError(f"the header's image size is not a number ({exc})", path) from exc
    check_pixels(((frames,) if frames > 1 else ()) + (rows, columns) + ((samples,) if samples > 1 else ()),
                 path, max_pixels)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise RadiographReadError(f"cannot decode the pixel data ({type(exc).__name__}: {exc})", path) from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or raw.ndim != 2:
        if photometric.startswith(("RGB", "YBR")) and raw.ndim == 3:
            raw = raw.astype(np.float64).mean(axis=-1)
            photometric = "MONOCHROME2"
        else:
            raise RadiographReadError(f"pixel data has shape {raw.shape}; one 2D frame is needed", path)
    problem = _window_problem(ds)
    if problem is not None:
        warnings.warn(f"{path}: {problem}; ignoring the window and scaling the image by its own range",
                      GenesisWarning, stacklevel=3)
    try:
        pixels = apply_modality_lut(raw, ds).astype(np.float64)
        shown = pixels if problem else np.asarray(apply_voi_lut(pixels, ds), dtype=np.float64)
        lo, hi = (float(shown.min()), float(shown.max())) if problem else _voi_range(ds, pixels, shown)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:  # a malformed LUT or rescale
        raise RadiographReadError(f"cannot apply the header's rescale or VOI LUT ({type(exc).__name__}: {exc})",
                                  path) from exc
    if not hi > lo:
        raise RadiographReadError(f"image is constant (every pixel = {lo:g}); nothing to learn from", path)
    image = np.clip((shown - lo) / (hi - lo), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing_rc = (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None
    meta = {"modality": modality, "photometric": photometric,
            "view": str(ds.get("ViewPosition", "") or "").upper() or None,
            "sex": str(ds.get("PatientSex", "") or "").upper() or None,
            "age": _age_years(ds.get("PatientAge"))}
    return image.astype(np.float32), spacing_rc, meta


def _voi_range(ds: Any, pixels: np.ndarray, shown: np.ndarray) -> tuple[float, float]:
    """The output range of the header's VOI transform (what maps to black and to white).

    A VOI LUT's range is that of its entries; a window's is what pydicom's windowing gives far
    below and far above it (its y_min and y_max). Without VOI the image's own range is used.
    """
    from pydicom.pixels import apply_voi_lut

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTData") is not None and seq[0].get("LUTDescriptor") is not None:
        data = np.asarray(seq[0].LUTData, dtype=np.float64).ravel()
        return float(data.min()), float(data.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        extremes = np.array([pixels.min() - 1e7, pixels.max() + 1e7], dtype=np.float64)
        out = np.asarray(apply_voi_lut(extremes, ds), dtype=np.float64)
        return float(out.min()), float(out.max())
    return float(shown.min()), float(shown.max())


def _open_image(path: Path) -> Any:
    """Pillow's lazy image (header parsed, nothing decoded), its decompression-bomb check turned
    into our error: :func:`check_pixels` applies our limit, Pillow's warning must not leak out."""
    from PIL import Image

    # catch_warnings changes the process-wide filters for the block; Pillow warns only for
    # images above its MAX_IMAGE_PIXELS (89 megapixels in Pillow 13), which the default
    # max_pixels refuses anyway, and raises above twice that
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError as exc:
            raise RadiographReadError(f"header claims an image beyond Pillow's decompression-bomb limit ({exc}); "
                                      "refused before decoding", path) from None


def _read_image(path: Path, max_pixels: int | None) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        with _open_image(path) as img:
            (width, height), bands = img.size, len(img.getbands())
            check_pixels((height, width) + ((bands,) if bands > 1 else ()), path, max_pixels)
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                return np.asarray(img, dtype=np.float64) / 65535.0
            if mode == "I":  # 16-bit PNGs often open as 32-bit integer images
                arr = np.asarray(img, dtype=np.float64)
                return arr / (65535.0 if arr.max() > 255 else 255.0)
            if mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                return (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-12)
            if mode not in ("L", "1"):
                img = img.convert("L")  # colour/palette/alpha -> luminance
            return np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RadiographReadError(f"not a readable PNG/JPEG image, truncated or corrupt? ({exc})", path) from exc


def resize_square(image: np.ndarray, size: int, aspect: str = "pad") -> tuple[np.ndarray, tuple[float, float]]:
    """``image`` (H, W) -> (size, size) float32; also returns the (row, col) zoom factors.

    See the module docstring for ``aspect`` (``pad``, ``crop``, ``stretch``).
    """
    from PIL import Image

    if aspect not in ASPECT_MODES:
        raise ValueError(f"aspect must be one of {', '.join(ASPECT_MODES)}, got {aspect!r}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = image.shape
    if aspect == "stretch":
        new_h, new_w = size, size
    else:
        scale = size / max(h, w) if aspect == "pad" else size / min(h, w)
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    resized = np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.float32)
    out = np.zeros((size, size), dtype=np.float32)
    # centre the resized image in the square (pad) or the square in the image (crop)
    sy, sx = (size - new_h) // 2, (size - new_w) // 2
    src = resized[max(0, -sy):max(0, -sy) + size, max(0, -sx):max(0, -sx) + size]
    out[max(0, sy):max(0, sy) + src.shape[0], max(0, sx):max(0, sx) + src.shape[1]] = src
    return np.clip(out, 0.0, 1.0), (new_h / h, new_w / w)


def load_radiograph(path: str | Path, size: int | None = 224, aspect: str = "pad", *,
                    max_pixels: int | None = MAX_RADIOGRAPH_PIXELS) -> Radiograph:
    """Read a radiograph as float32 [0, 1] (air dark), resized to ``size`` x ``size``.

    Args:
        path: a DICOM CR/DX file, or a PNG/JPEG image (8 or 16 bit, grey or colour).
        size: side of the square output; None keeps the stored size.
        aspect: ``pad`` (default, keeps the whole image), ``crop`` or ``stretch``.
        max_pixels: largest number of pixels (rows x columns x colour channels or frames) a
            header may claim; None: only the memory available limits it.
    Returns:
        A :class:`Radiograph`; ``spacing`` follows the resize.
    Raises:
        RadiographReadError: missing, unreadable or truncated file, a DICOM that is not a
            projection radiograph or has several frames, a constant image, NaN pixels, a header
            claiming more than ``max_pixels`` pixels or the memory available.
    Warns:
        GenesisWarning: a DICOM window the standard does not allow (ignored, see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise RadiographReadError("no such file" if not path.exists() else "not a regular file", path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = _read_image(path, max_pixels)
        spacing, meta = None, {"modality": None, "photometric": "MONOCHROME2"}
        if image.ndim != 2:
            raise RadiographReadError(f"image has shape {image.shape}; a 2D grey image is needed", path)
    elif is_radiograph_file(path):
        image, spacing, meta = _read_dicom(path, max_pixels)
    else:
        raise RadiographReadError(f"unknown radiograph format (expected {', '.join(RADIOGRAPH_SUFFIXES)})", path)
    if not np.isfinite(image).all():
        raise RadiographReadError("image contains NaN or infinite values", path)
    if min(image.shape) < 2:
        raise RadiographReadError(f"image has shape {image.shape}; too small to be a radiograph", path)
    if float(image.max()) == float(image.min()):
        raise RadiographReadError(f"image is constant (every pixel = {float(image.min()):g}); nothing to learn from", path)
    original = (int(image.shape[0]), int(image.shape[1]))
    array = np.asarray(image, dtype=np.float32)
    if size is not None:
        try:
            array, (zy, zx) = resize_square(array, int(size), aspect)
        except ValueError as exc:
            raise RadiographReadError(str(exc), path) from None
        if spacing is not None:
            spacing = (spacing[0] / zy, spacing[1] / zx)
    return Radiograph(array=array, path=path, spacing=spacing, original_shape=original, metadata=meta)


def write_radiograph_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    monochrome1: bool = False,
    window: tuple[float, float] | None = None,
    spacing: tuple[float, float] = (0.5, 0.5),
    modality: str = "DX",
    sex: str | None = None,
    age: int | None = None,
    view: str | None = None,
) -> Path:
    """Write a uint16 DX/CR DICOM file (tests and the synthetic generator use it).

    Args:
        path: destination file.
        pixels: (H, W) stored values (0..65535).
        monochrome1: mark the image MONOCHROME1 (high values shown dark).
        window: (center, width) written as WindowCenter/WindowWidth, or None.
        spacing, modality, sex, age, view: header values.
    """
    import datetime

    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    path = Path(path)
    meta = FileMetaDataset()
    sop_class = "1.2.840.10008.5.1.4.1.1.1.1" if modality == "DX" else "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.ContentDate = datetime.date.today().strftime("%Y%m%d")
    ds.PatientID = "SYNTHETIC"
    if sex:
        ds.PatientSex = sex
    if age is not None:
        ds.PatientAge = f"{int(age):03d}Y"
    if view:
        ds.ViewPosition = view
    arr = np.asarray(pixels, dtype=np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.ImagerPixelSpacing = [float(spacing[0]), float(spacing[1])]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    ds.PixelData = arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path
