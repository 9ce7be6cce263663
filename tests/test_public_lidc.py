"""LIDC-IDRI loader: XML read files (with and without namespace) -> per-reader and consensus masks."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from genesis.data.public.lidc import (
    consensus_nodules,
    find_lidc_series,
    group_annotations,
    load_lidc_annotations,
    parse_lidc_xml,
)
from genesis.errors import DatasetLayoutError, InputFileError

NZ, NY, NX = 5, 16, 16
Z0, DZ = -10.0, 2.0


def write_series(directory, sop_uids):
    """A tiny CT series (one file per slice, positions Z0 + k * DZ), written with pydicom."""
    directory.mkdir(parents=True, exist_ok=True)
    series, study = generate_uid(), generate_uid()
    for k, sop in enumerate(sop_uids):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(directory / f"{k:06d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, Z0 + k * DZ]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = DZ
        ds.Rows, ds.Columns = NY, NX
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.arange(NY * NX, dtype=np.int16).reshape(NY, NX) + 10 * k).tobytes()
        ds.save_as(str(directory / f"{k:06d}.dcm"), enforce_file_format=True)


def square(x0, y0, x1, y1):
    """All boundary pixels of a rectangle, like LIDC edge maps."""
    pts = [(x, y0) for x in range(x0, x1 + 1)] + [(x1, y) for y in range(y0, y1 + 1)]
    pts += [(x, y1) for x in range(x1, x0 - 1, -1)] + [(x0, y) for y in range(y1, y0 - 1, -1)]
    return pts


def roi(z, sop, points, inclusion=True):
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    sop_el = f"<imageSOP_UID>{sop}</imageSOP_UID>" if sop else ""
    return (f"<roi><imageZposition>{z}</imageZposition>{sop_el}"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def lidc_xml(sops, namespace=True):
    z = [Z0 + k * DZ for k in range(NZ)]
    reader1 = (
        "<unblindedReadNodule><noduleID>Nodule 001</noduleID><characteristics><subtlety>4</subtlety>"
        "<malignancy>4</malignancy></characteristics>"
        + "".join(roi(z[k], sops[k], square(4, 4, 9, 9)) for k in (1, 2, 3))
        + "</unblindedReadNodule>"
        # A < 3 mm nodule: one point, no characteristics -> dropped.
        + "<unblindedReadNodule><noduleID>small</noduleID>" + roi(z[0], sops[0], [(12, 12)]) + "</unblindedReadNodule>"
    )
    reader2 = (
        "<unblindedReadNodule><noduleID>IL057_1</noduleID><characteristics><malignancy>2</malignancy></characteristics>"
        # Slice 1 matched by z position only (no SOP UID); slice 2 has a hole.
        + roi(z[1], None, square(5, 5, 10, 10))
        + roi(z[2], sops[2], square(5, 5, 10, 10))
        + roi(z[2], sops[2], square(7, 7, 8, 8), inclusion=False)
        + "</unblindedReadNodule><nonNodule><nonNoduleID>n1</nonNoduleID></nonNodule>"
    )
    ns = ' xmlns="http://www.nih.gov"' if namespace else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><LidcReadMessage{ns} uid="1"><ResponseHeader/>'
            f"<readingSession><annotationVersion>3.12</annotationVersion>{reader1}</readingSession>"
            f"<readingSession>{reader2}</readingSession></LidcReadMessage>")


@pytest.fixture(params=[True, False], ids=["namespace", "no-namespace"])
def lidc_root(tmp_path, request):
    sops = [generate_uid() for _ in range(NZ)]
    series_dir = tmp_path / "LIDC-IDRI-0001" / "1.2.3-study" / "3000566-series"
    write_series(series_dir, sops)
    (series_dir / "069.xml").write_text(lidc_xml(sops, namespace=request.param))
    return tmp_path


def test_parse_xml(lidc_root):
    [series] = find_lidc_series(lidc_root)
    assert series.patient_id == "LIDC-IDRI-0001"
    nodules = parse_lidc_xml(series.xml_paths[0])
    assert [(n.reader, n.nodule_id) for n in nodules] == [(0, "Nodule 001"), (0, "small"), (1, "IL057_1")]
    assert nodules[0].malignancy == 4 and nodules[0].characteristics["subtlety"] == 4
    assert nodules[1].malignancy is None
    assert len(nodules[2].rois) == 3 and nodules[2].rois[2].inclusion is False


def test_reader_masks_and_consensus(lidc_root):
    [series] = find_lidc_series(lidc_root)
    volume, anns = load_lidc_annotations(series)
    assert volume.shape == (NZ, NY, NX)
    assert [a.nodule.nodule_id for a in anns] == ["Nodule 001", "IL057_1"]
    m1, m2 = anns[0].mask, anns[1].mask
    assert m1.sum() == 3 * 36 and np.all(m1[1:4, 4:10, 4:10]) and not m1[0].any()
    assert m2[1].sum() == 36 and m2[2].sum() == 36 - 4 and not m2[2, 7:9, 7:9].any()
    assert np.allclose(anns[0].center_zyx, (2.0, 6.5, 6.5))
    expected = (6 * (3 * 36 * DZ) / np.pi) ** (1 / 3)
    assert anns[0].diameter_mm == pytest.approx(expected)
    groups = group_annotations(anns, volume.spacing)
    assert len(groups) == 1 and len(groups[0]) == 2
    [cons] = consensus_nodules(anns, volume.spacing, k=2)
    assert np.array_equal(cons.mask, m1 & m2)
    assert cons.n_readers == 2 and cons.malignancy == 3.0
    assert consensus_nodules(anns, volume.spacing, k=3) == []
    assert len(consensus_nodules(anns, volume.spacing, k=1)) == 1


def test_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        find_lidc_series(tmp_path / "missing")
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "read.xml").write_text("<LidcReadMessage/>")
    with pytest.raises(DatasetLayoutError, match="DICOM"):
        find_lidc_series(tmp_path)
    bad = tmp_path / "bad.xml"
    bad.write_text("<notLidc/>")
    with pytest.raises(InputFileError, match="LidcReadMessage"):
        parse_lidc_xml(bad)
    bad.write_text("<LidcReadMessage><readingSession>")
    with pytest.raises(InputFileError, match="not valid XML"):
        parse_lidc_xml(bad)
