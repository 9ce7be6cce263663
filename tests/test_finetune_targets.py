"""Every fine-tuning target reads tiny files written here in its dataset's real on-disk layout,
and builds synthetic splits when no data is given."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from finetune import TARGETS, get_target
from finetune.config import FinetuneConfig
from finetune.data import ClsSample, SegCase, assign_splits
from genesis.errors import DatasetLayoutError
from genesis.io import Volume, save_volume, write_dicom_series

CROP = (8, 16, 16)


def _cfg(target: str, data: Path | None = None, **kw) -> FinetuneConfig:
    kw.setdefault("out", str((data or Path("/nonexistent")) / "_out"))  # caches go under OUT/cache
    cfg = FinetuneConfig(target=target, data=str(data) if data else None, crop=CROP, **kw)
    cfg.synthetic.n_train, cfg.synthetic.n_val, cfg.synthetic.n_test = 1, 1, 1
    cfg.synthetic.shape = (48, 64, 64)
    return cfg


def _blob_volume(shape=(24, 40, 40), center=(12, 20, 20), radius=3, spacing=(1.0, 1.0, 1.0), origin=(-20.0, -20.0, -12.0)):
    """Air-ish background (-800 HU) with a bright sphere (+100 HU): a 'nodule'."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    inside = (z - center[0]) ** 2 + (y - center[1]) ** 2 + (x - center[2]) ** 2 <= radius**2
    array = np.where(inside, 100.0, -800.0).astype(np.float32)
    return Volume(array=array, spacing=spacing, origin=origin), inside


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(header)
        w.writerows(rows)


def _centre_value(sample: ClsSample) -> float:
    d, h, w = sample.image.shape
    return float(sample.image[d // 2, h // 2, w // 2])


def test_registry_lists_all_six_targets():
    assert set(TARGETS.names()) >= {"ncs", "ncc", "ecc", "lcs", "bms", "pe"}


def test_assign_splits_never_leaves_a_split_empty():
    out = assign_splits(["a", "b", "c"])
    assert sorted(out.values()) == ["test", "train", "val"]
    many = assign_splits([f"p{i}" for i in range(40)])
    assert assign_splits([f"p{i}" for i in reversed(range(40))]) == many  # order-free


# ------------------------------------------------------------------------------ NCC (LUNA16)
def test_ncc_reads_luna16_layout(tmp_path):
    rows_c, rows_a = [], []
    for subset, uid in ((0, "1.2.3.100"), (5, "1.2.3.105"), (7, "1.2.3.107")):
        vol, _ = _blob_volume()
        (tmp_path / f"subset{subset}").mkdir()
        save_volume(vol, tmp_path / f"subset{subset}" / f"{uid}.mhd")
        world_blob = vol.index_to_world((12, 20, 20))
        rows_c.append([uid, *world_blob, 1])
        rows_c.append([uid, *vol.index_to_world((4, 6, 30)), 0])
        rows_a.append([uid, *world_blob, 6.0])
    _write_csv(tmp_path / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], rows_c)
    _write_csv(tmp_path / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], rows_a)
    cfg = _cfg("ncc", tmp_path, out=str(tmp_path / "out"))
    data = get_target("ncc").load(cfg)
    assert not data.synthetic
    assert [len(data.train), len(data.val), len(data.test)] == [2, 2, 2]  # subsets 0 / 5 / 7
    for s in data.train + data.val + data.test:
        assert s.image.shape == CROP
        # the true-nodule candidate is centred on the bright sphere, the false positive on air
        assert (_centre_value(s) > 0.5) == (s.label == 1)
    # cubes are cached under OUT/cache and memory-mapped; a second load reads the cache
    assert len(list((tmp_path / "out" / "cache" / "ncc").glob("*.npy"))) == 3
    again = get_target("ncc").load(cfg)
    assert isinstance(again.train[0].image, np.memmap)
    assert np.array_equal(again.test[1].image, data.test[1].image)


def test_limit_negatives_keeps_positives_and_is_stable():
    from finetune.targets._common import limit_negatives

    class C:
        def __init__(self, label):
            self.label = label

    cands = [C(1)] + [C(0) for _ in range(50)] + [C(1)]
    kept = limit_negatives(cands, 5, "scan-a")
    assert sum(c.label for c in kept) == 2 and len(kept) == 7
    assert kept == limit_negatives(cands, 5, "scan-a") and limit_negatives(cands, 0, "x") == cands


def test_ncc_without_candidates_is_a_layout_error(tmp_path):
    vol, _ = _blob_volume()
    (tmp_path / "subset0").mkdir()
    save_volume(vol, tmp_path / "subset0" / "1.2.mhd")
    _write_csv(tmp_path / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"], [])
    with pytest.raises(DatasetLayoutError, match="candidates"):
        get_target("ncc").load(_cfg("ncc", tmp_path))


# ------------------------------------------------------------------------ ECC (documented layout)
def test_ecc_reads_candidates_and_volumes(tmp_path):
    (tmp_path / "volumes").mkdir()
    rows = []
    for k in range(3):
        uid = f"ctpa-{k}"
        vol, _ = _blob_volume(origin=(10.0 * k, 0.0, 5.0))
        save_volume(vol, tmp_path / "volumes" / f"{uid}.nii.gz")
        rows.append([uid, *vol.index_to_world((12, 20, 20)), 1])
        rows.append([uid, *vol.index_to_world((20, 8, 8)), 0])
    _write_csv(tmp_path / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], rows)
    _write_csv(tmp_path / "split.csv", ["seriesuid", "split"], [["ctpa-0", "train"], ["ctpa-1", "val"], ["ctpa-2", "test"]])
    data = get_target("ecc").load(_cfg("ecc", tmp_path))
    assert [s.group for s in data.train] == ["ctpa-0", "ctpa-0"]
    assert [s.group for s in data.test] == ["ctpa-2", "ctpa-2"]
    for s in data.train + data.val + data.test:
        assert (_centre_value(s) > 0.5) == (s.label == 1)


def test_ecc_missing_volume_names_the_file(tmp_path):
    (tmp_path / "volumes").mkdir()
    _write_csv(tmp_path / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], [["nope", 0, 0, 0, 1]])
    with pytest.raises(DatasetLayoutError, match="nope"):
        get_target("ecc").load(_cfg("ecc", tmp_path))


# ----------------------------------------------------------------------------- NCS (LIDC-IDRI)
def _lidc_xml(path: Path, sops: list[str], zs: list[float], center=(12, 20, 20), radius=2, readers=2) -> None:
    sessions = []
    for r in range(readers):
        rois = []
        for k in range(center[0] - 1, center[0] + 2):  # inside the radius-3 sphere
            pts = "".join(
                f"<edgeMap><xCoord>{int(round(center[2] + radius * np.cos(a)))}</xCoord>"
                f"<yCoord>{int(round(center[1] + radius * np.sin(a)))}</yCoord></edgeMap>"
                for a in np.linspace(0, 2 * np.pi, 12, endpoint=False)
            )
            rois.append(f"<roi><imageZposition>{zs[k]}</imageZposition><imageSOP_UID>{sops[k]}</imageSOP_UID>"
                        f"<inclusion>TRUE</inclusion>{pts}</roi>")
        sessions.append(f"<readingSession><unblindedReadNodule><noduleID>N{r}</noduleID>"
                        f"<characteristics><malignancy>3</malignancy></characteristics>{''.join(rois)}"
                        f"</unblindedReadNodule></readingSession>")
    path.write_text(f'<?xml version="1.0"?><LidcReadMessage xmlns="http://www.nih.gov">{"".join(sessions)}</LidcReadMessage>')


def test_ncs_reads_lidc_dicom_and_xml(tmp_path):
    for p in range(3):
        series = tmp_path / f"LIDC-IDRI-000{p}" / "study" / "series"
        vol, inside = _blob_volume()
        files = write_dicom_series(vol, series)
        headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]
        _lidc_xml(series / "069.xml", [str(h.SOPInstanceUID) for h in headers],
                  [float(h.ImagePositionPatient[2]) for h in headers])
    data = get_target("ncs").load(_cfg("ncs", tmp_path))
    assert not data.synthetic
    assert len(data.train) == len(data.val) == len(data.test) == 1  # one nodule per patient
    for case in data.train + data.val + data.test:
        assert isinstance(case, SegCase) and case.mask.any()
        # the filled contours sit on the bright sphere
        assert case.image[case.mask > 0].mean() > 0.5
    train = data.train[0]
    assert train.image.shape == tuple(2 * c for c in CROP)  # training region: twice the crop
    assert train.mask[tuple(train.centers[0])] == 1


# -------------------------------------------------------------------------------- LCS (LiTS)
def test_lcs_reads_lits_nifti_pairs(tmp_path):
    batch = tmp_path / "Training Batch 1"
    batch.mkdir()
    for n in range(3):
        vol, inside = _blob_volume(radius=6, spacing=(2.0, 2.0, 2.0))
        labels = inside.astype(np.float32)
        labels[12, 20, 20] = 2.0  # a lesion voxel inside the liver counts as liver
        save_volume(vol, batch / f"volume-{n}.nii")
        save_volume(vol.with_array(labels), batch / f"segmentation-{n}.nii")
    data = get_target("lcs").load(_cfg("lcs", tmp_path))
    assert len(data.train) == len(data.val) == len(data.test) == 1
    case = data.train[0]
    assert case.image.shape == (24, 40, 40)  # already at 2 mm: whole volume, no resampling
    assert case.mask[12, 20, 20] == 1 and case.mask.sum() == inside.sum()
    assert case.centers and all(case.mask[c] for c in case.centers)


# ------------------------------------------------------------------------------ BMS (BraTS)
def test_bms_reads_brats_folders_flair_only(tmp_path):
    for n in range(3):
        case = f"Brats18_TCIA_{n:03d}_1"
        folder = tmp_path / "HGG" / case
        folder.mkdir(parents=True)
        vol, inside = _blob_volume()
        flair = vol.with_array(np.where(inside, 900.0, 300.0).astype(np.float32))
        for m in ("flair", "t1", "t1ce", "t2"):
            save_volume(flair if m == "flair" else vol.with_array(np.zeros(vol.shape, np.float32)), folder / f"{case}_{m}.nii.gz")
        seg = np.zeros(vol.shape, np.float32)
        seg[inside] = 2.0
        seg[12, 20, 20] = 4.0
        save_volume(vol.with_array(seg), folder / f"{case}_seg.nii.gz")
    data = get_target("bms").load(_cfg("bms", tmp_path))
    cases = data.train + data.val + data.test
    assert len(cases) == 3 and all(len(s) == 1 for s in (data.train, data.val, data.test))
    for c in cases:
        assert c.mask.sum() == inside.sum()  # whole tumour = labels 2 and 4
        assert 0.0 <= c.image.min() and c.image.max() <= 1.0
        assert c.image[c.mask > 0].mean() > c.image[c.mask == 0].mean()


# ---------------------------------------------------------------------------- PE (RSNA PE)
def test_pe_reads_rsna_layout_and_labels_windows(tmp_path):
    rows = []
    for s in range(3):
        study, series = f"1.2.840.{s}", f"1.2.840.{s}.1"
        folder = tmp_path / "train" / study / series
        vol, _ = _blob_volume(shape=(16, 32, 32), center=(8, 16, 16))
        files = write_dicom_series(vol, folder)
        positive = s == 0
        for k, f in enumerate(files):
            sop = str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID)
            f.rename(folder / f"{sop}.dcm")
            on_image = int(positive and 6 <= k <= 10)
            rows.append([study, series, sop, on_image, int(not positive)])
    _write_csv(tmp_path / "train.csv", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                                        "pe_present_on_image", "negative_exam_for_pe"], rows)
    data = get_target("pe").load(_cfg("pe", tmp_path))
    windows = data.train + data.val + data.test
    assert {w.group for w in windows} == {"1.2.840.0", "1.2.840.1", "1.2.840.2"}
    # stored at 8/7 of the crop in-plane (Ke et al.: 256 for random 224 crops)
    assert all(w.image.shape == (CROP[0], 18, 18) for w in windows)
    # 16 slices, windows of 8 with stride 4 -> 3 per study; slices 6-10 positive
    pos = sorted(w.name for w in windows if w.label == 1)
    assert all(n.startswith("1.2.840.0/") for n in pos) and len(pos) == 3
    assert all(w.label == 0 for w in windows if w.group != "1.2.840.0")


# ------------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("name", ["ncs", "ncc", "ecc", "lcs", "bms", "pe"])
def test_every_target_has_a_synthetic_default(name):
    target = get_target(name)
    data = target.load(_cfg(name))
    assert data.synthetic and "SYNTHETIC" in data.source
    for split in (data.train, data.val, data.test):
        assert split
    sample = data.train[0]
    assert sample.image.dtype == np.float32 and 0.0 <= sample.image.min() and sample.image.max() <= 1.0
    if target.task == "classification":
        stored = (CROP[0], 18, 18) if name == "pe" else CROP  # pe: 8/7 of the crop in-plane, cropped in training
        assert all(s.image.shape == stored for s in data.train)
    else:
        assert any(c.mask.any() for c in data.train)
