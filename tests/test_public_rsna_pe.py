"""RSNA STR PE loader: train.csv + train/<study>/<series>/<sop>.dcm, slices ordered by position."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from genesis.data.public.rsna_pe import load_rsna_pe
from genesis.errors import DatasetLayoutError

HEADER = "StudyInstanceUID,SeriesInstanceUID,SOPInstanceUID,pe_present_on_image,negative_exam_for_pe,rv_lv_ratio_gte_1,central_pe\n"


def _slice(path, study, series, sop, z):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality = "CT"
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelData = np.zeros((4, 4), np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture()
def rsna_root(tmp_path):
    rows = []
    studies = {}
    for name, zs, labels, negative in (("pos", [30.0, 10.0, 20.0], [0, 1, 0], 0), ("neg", [5.0, 0.0], [0, 0], 1)):
        study, series = generate_uid(), generate_uid()
        sops = [generate_uid() for _ in zs]
        for sop, z, lab in zip(sops, zs, labels):
            _slice(tmp_path / "train" / study / series / f"{sop}.dcm", study, series, sop, z)
            rows.append(f"{study},{series},{sop},{lab},{negative},{1 - negative},0\n")
        studies[name] = (study, sops, zs, labels)
    (tmp_path / "train.csv").write_text(HEADER + "".join(rows))
    return tmp_path, studies


def test_studies_slices_and_labels(rsna_root):
    root, expected = rsna_root
    studies = load_rsna_pe(root)
    assert len(studies) == 2
    pos = next(s for s in studies if s.study_uid == expected["pos"][0])
    neg = next(s for s in studies if s.study_uid == expected["neg"][0])
    assert [s.position for s in pos.slices] == [10.0, 20.0, 30.0]
    assert pos.slice_labels.tolist() == [1, 0, 0]
    assert pos.pe_present is True and pos.negative_exam is False
    assert pos.exam_labels["rv_lv_ratio_gte_1"] == 1
    assert neg.pe_present is False and neg.negative_exam is True and len(neg.slices) == 2
    assert all(s.path.is_file() for s in pos.slices)
    unordered = load_rsna_pe(root, order_by_position=False)
    first = next(s for s in unordered if s.study_uid == expected["pos"][0])
    assert [s.sop_uid for s in first.slices] == expected["pos"][1]


def test_test_csv_without_labels(rsna_root):
    root, expected = rsna_root
    lines = (root / "train.csv").read_text().splitlines()
    (root / "test.csv").write_text("\n".join(",".join(line.split(",")[:3]) for line in lines) + "\n")
    studies = load_rsna_pe(root, csv_name="test.csv")
    assert all(s.pe_present is None for s in studies)
    assert all((s.slice_labels == -1).all() for s in studies)


def test_layout_errors(rsna_root, tmp_path_factory):
    root, expected = rsna_root
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(DatasetLayoutError, match="train.csv"):
        load_rsna_pe(empty)
    (empty / "train.csv").write_text(HEADER)
    with pytest.raises(DatasetLayoutError, match="train/"):
        load_rsna_pe(empty)
    study, sops, _, _ = expected["pos"]
    next((root / "train" / study).rglob(f"{sops[0]}.dcm")).unlink()
    with pytest.raises(DatasetLayoutError, match="missing"):
        load_rsna_pe(root)
    (root / "train.csv").write_text("StudyInstanceUID,SOPInstanceUID\n")
    with pytest.raises(DatasetLayoutError, match="SeriesInstanceUID"):
        load_rsna_pe(root)
