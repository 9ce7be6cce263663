"""LIDC-IDRI: DICOM series with the radiologists' XML read files; per-reader and consensus masks.

Layout: one folder per patient (``LIDC-IDRI-0001/...``) holding DICOM series; the XML read file
(``LidcReadMessage``) lies in the series folder. Each ``readingSession`` (one per reader, up to
four) lists ``unblindedReadNodule`` elements with a ``noduleID``, ``characteristics`` (``malignancy``
1-5, ...) and one ``roi`` per slice: ``imageZposition``, ``imageSOP_UID``, ``inclusion`` and the
contour as ``edgeMap`` points (``xCoord`` = column, ``yCoord`` = row). Nodules < 3 mm have a single
point and no characteristics. The XML namespace ``http://www.nih.gov`` may be present or absent.

Masks: the contour polygons are filled on the slice matched by SOP instance UID (or, failing
that, by z position); ``inclusion=FALSE`` ROIs are holes. Annotations of the same nodule by
different readers are grouped by centre distance; the consensus mask keeps voxels marked by at
least ``k`` readers (k=2 is the common "50 % agreement" for 4 readers).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Sequence

import numpy as np
from skimage.draw import polygon as fill_polygon

from genesis.errors import DatasetLayoutError, InputFileError

LIDC_NAMESPACE = "http://www.nih.gov"


@dataclass(frozen=True)
class LidcRoi:
    """One contour of a nodule on one slice (points as (x=column, y=row) pixel coordinates)."""

    z_position: float | None
    sop_uid: str | None
    inclusion: bool
    points_xy: tuple[tuple[int, int], ...]


@dataclass
class LidcNodule:
    """A nodule as marked by one reader."""

    reader: int
    nodule_id: str
    characteristics: dict[str, int] = field(default_factory=dict)
    rois: list[LidcRoi] = field(default_factory=list)

    @property
    def malignancy(self) -> int | None:
        return self.characteristics.get("malignancy")


@dataclass
class LidcAnnotation:
    """A reader's nodule rasterised on the series grid: mask (z, y, x), centre (voxels), diameter."""

    nodule: LidcNodule
    mask: np.ndarray
    center_zyx: tuple[float, float, float]
    diameter_mm: float


@dataclass
class LidcConsensus:
    """A nodule agreed by ``n_readers`` readers: consensus mask, centre, diameter, median malignancy."""

    annotations: list[LidcAnnotation]
    mask: np.ndarray
    center_zyx: tuple[float, float, float]
    diameter_mm: float
    n_readers: int
    malignancy: float | None


@dataclass(frozen=True)
class LidcSeries:
    """A series folder with its XML read file(s)."""

    patient_id: str
    series_dir: Path
    xml_paths: tuple[Path, ...]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _strip_namespaces(root: ET.Element) -> ET.Element:
    for el in root.iter():
        el.tag = _local(el.tag)
    return root


def _text(el: ET.Element | None) -> str | None:
    return el.text.strip() if el is not None and el.text is not None else None


def parse_lidc_xml(path: str | Path) -> list[LidcNodule]:
    """All ``unblindedReadNodule`` entries of a LIDC XML file; reader = readingSession index (0-based).

    Raises:
        InputFileError: the file is missing, not XML, or not a ``LidcReadMessage``.
    """
    path = Path(path)
    try:
        root = _strip_namespaces(ET.parse(path).getroot())
    except OSError as exc:
        raise InputFileError(f"cannot read LIDC XML ({exc.strerror or exc})", path) from exc
    except ET.ParseError as exc:
        raise InputFileError(f"not valid XML ({exc})", path) from exc
    if root.tag != "LidcReadMessage":
        raise InputFileError(f"not a LIDC read file (root element <{root.tag}>, expected <LidcReadMessage>)", path)
    nodules: list[LidcNodule] = []
    for reader, session in enumerate(root.findall("readingSession")):
        for el in session.findall("unblindedReadNodule"):
            chars = {}
            for c in el.find("characteristics") if el.find("characteristics") is not None else []:
                value = _text(c)
                if value is not None:
                    try:
                        chars[c.tag] = int(float(value))
                    except ValueError:
                        pass
            rois = []
            for roi in el.findall("roi"):
                z = _text(roi.find("imageZposition"))
                points = []
                for edge in roi.findall("edgeMap"):
                    x, y = _text(edge.find("xCoord")), _text(edge.find("yCoord"))
                    if x is None or y is None:
                        nodule_id = _text(el.find("noduleID"))
                        raise InputFileError(f"edgeMap without xCoord/yCoord in nodule {nodule_id}", path)
                    points.append((int(float(x)), int(float(y))))
                rois.append(
                    LidcRoi(
                        float(z) if z is not None else None,
                        _text(roi.find("imageSOP_UID")),
                        (_text(roi.find("inclusion")) or "TRUE").upper() == "TRUE",
                        tuple(points),
                    )
                )
            nodules.append(LidcNodule(reader, _text(el.find("noduleID")) or "", chars, rois))
    return nodules


def find_lidc_series(root: str | Path) -> list[LidcSeries]:
    """Series folders under ``root`` that hold DICOM files and at least one LIDC XML file.

    The patient ID is the first path component below ``root`` (e.g. ``LIDC-IDRI-0001``).

    Raises:
        DatasetLayoutError: root missing or no folder with both ``.dcm`` files and an XML file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError("LIDC-IDRI root folder does not exist", root)
    found = []
    for xml_dir in sorted({p.parent for p in root.rglob("*.xml")}):
        if not any(xml_dir.glob("*.dcm")):
            continue
        rel = xml_dir.relative_to(root)
        patient = rel.parts[0] if rel.parts else root.name
        found.append(LidcSeries(patient, xml_dir, tuple(sorted(xml_dir.glob("*.xml")))))
    if not found:
        raise DatasetLayoutError(
            "no series folder with DICOM (.dcm) files and a LIDC XML read file found (LIDC-IDRI layout)", root
        )
    return found


def slice_index_by_sop(series_dir: str | Path, volume) -> tuple[dict[str, int], dict[float, int]]:
    """Maps SOPInstanceUID -> z index and rounded z position (mm) -> z index for a series."""
    import pydicom

    by_sop: dict[str, int] = {}
    by_z: dict[float, int] = {}
    for path in sorted(Path(series_dir).glob("*.dcm")):
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
            position = [float(v) for v in ds.ImagePositionPatient]
        except Exception as exc:
            raise InputFileError(f"cannot read DICOM header ({type(exc).__name__}: {exc})", path) from exc
        k = int(np.rint(volume.world_to_index(position)[0]))
        if 0 <= k < volume.shape[0]:
            by_sop[str(ds.SOPInstanceUID)] = k
            by_z[round(position[2], 1)] = k
    return by_sop, by_z


def rasterise_nodule(
    nodule: LidcNodule, shape: Sequence[int], by_sop: dict[str, int], by_z: dict[float, int]
) -> np.ndarray:
    """Boolean (z, y, x) mask of one reader's nodule: filled contours, exclusions removed."""
    mask = np.zeros(tuple(shape), dtype=bool)
    holes = np.zeros_like(mask)
    for roi in nodule.rois:
        k = by_sop.get(roi.sop_uid or "")
        if k is None and roi.z_position is not None:
            k = by_z.get(round(roi.z_position, 1))
        if k is None or not roi.points_xy:
            continue
        xs = np.array([p[0] for p in roi.points_xy])
        ys = np.array([p[1] for p in roi.points_xy])
        target = mask if roi.inclusion else holes
        rr, cc = fill_polygon(ys, xs, shape=tuple(shape[1:]))
        target[k, rr, cc] = True
        inside = (ys >= 0) & (ys < shape[1]) & (xs >= 0) & (xs < shape[2])
        target[k, ys[inside], xs[inside]] = True  # the edge pixels belong to the nodule
    return mask & ~holes


def _centre_and_diameter(mask: np.ndarray, spacing: Sequence[float]) -> tuple[tuple[float, float, float], float]:
    idx = np.argwhere(mask)
    if not len(idx):
        return (float("nan"),) * 3, 0.0  # type: ignore[return-value]
    volume_mm3 = len(idx) * float(np.prod(spacing))
    centre = tuple(float(v) for v in idx.mean(axis=0))
    return centre, float((6.0 * volume_mm3 / np.pi) ** (1.0 / 3.0))  # type: ignore[return-value]


def load_lidc_annotations(series: LidcSeries | str | Path, volume=None) -> tuple[object, list[LidcAnnotation]]:
    """Read a series (unless ``volume`` is given) and rasterise every reader's nodules on it.

    Nodules whose contours match no slice (or single-point nodules < 3 mm) get an empty mask
    and are dropped. Returns ``(volume, annotations)``.
    """
    if not isinstance(series, LidcSeries):
        series_dir = Path(series)
        xmls = tuple(sorted(series_dir.glob("*.xml")))
        if not xmls:
            raise DatasetLayoutError("no LIDC XML read file in the series folder", series_dir)
        series = LidcSeries(series_dir.name, series_dir, xmls)
    if volume is None:
        from genesis.io import load_volume

        volume = load_volume(series.series_dir)
    by_sop, by_z = slice_index_by_sop(series.series_dir, volume)
    out = []
    for xml in series.xml_paths:
        for nodule in parse_lidc_xml(xml):
            mask = rasterise_nodule(nodule, volume.shape, by_sop, by_z)
            if mask.sum() < 2:
                continue
            centre, diameter = _centre_and_diameter(mask, volume.spacing)
            out.append(LidcAnnotation(nodule, mask, centre, diameter))
    return volume, out


def group_annotations(
    annotations: list[LidcAnnotation], spacing: Sequence[float], distance_mm: float | None = None
) -> list[list[LidcAnnotation]]:
    """Group annotations of the same physical nodule (different readers, centres close).

    Two annotations join a group when their centres are closer than ``distance_mm`` (default:
    half the larger diameter, at least 3 mm); a group never holds two annotations of one reader.
    """
    sp = np.asarray(spacing, dtype=float)
    groups: list[list[LidcAnnotation]] = []
    for ann in sorted(annotations, key=lambda a: -a.diameter_mm):
        best, best_d = None, np.inf
        for g in groups:
            if any(a.nodule.reader == ann.nodule.reader for a in g):
                continue
            d = float(np.linalg.norm((np.asarray(g[0].center_zyx) - np.asarray(ann.center_zyx)) * sp))
            limit = distance_mm if distance_mm is not None else max(3.0, 0.5 * max(g[0].diameter_mm, ann.diameter_mm))
            if d < limit and d < best_d:
                best, best_d = g, d
        if best is None:
            groups.append([ann])
        else:
            best.append(ann)
    return groups


def consensus(group: list[LidcAnnotation], spacing: Sequence[float], k: int = 2) -> LidcConsensus | None:
    """Consensus of a group: voxels marked by >= ``k`` readers (None if the group has < k readers)."""
    if len(group) < k:
        return None
    votes = np.sum([a.mask for a in group], axis=0)
    mask = votes >= k
    if not mask.any():
        return None
    centre, diameter = _centre_and_diameter(mask, spacing)
    malignancies = [a.nodule.malignancy for a in group if a.nodule.malignancy is not None]
    malignancy = float(median(malignancies)) if malignancies else None
    return LidcConsensus(group, mask, centre, diameter, len(group), malignancy)


def consensus_nodules(
    annotations: list[LidcAnnotation], spacing: Sequence[float], k: int = 2
) -> list[LidcConsensus]:
    """Group the annotations and keep the nodules with a non-empty ``k``-reader consensus."""
    out = [consensus(g, spacing, k) for g in group_annotations(annotations, spacing)]
    return [c for c in out if c is not None]
