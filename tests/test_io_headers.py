"""Headers that disagree with themselves: NIfTI transforms by the standard's precedence (sform, qform,
pixdim) with a warning naming both values, and MetaImage sizes that do not match their data."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from genesis.cli._common import user_errors_exit
from genesis.errors import GenesisWarning, VolumeReadError
from genesis.io import Volume, load_volume, save_volume

SHAPE_XYZ = (7, 6, 5)


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _affine(theta: float, zooms, offset) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = _rotation(theta) @ np.diag(zooms)
    affine[:3, 3] = offset
    return affine


def _nifti(path: Path, *, sform=None, sform_code=0, qform=None, qform_code=0, pixdim=None) -> Path:
    """A CT-like NIfTI whose sform, qform and pixdim are set one by one (nibabel keeps them as given)."""
    import nibabel as nib

    data = np.random.default_rng(0).uniform(-1000, 400, SHAPE_XYZ).astype(np.float32)
    image = nib.Nifti1Image(data, None)
    if qform is not None:
        image.set_qform(qform, code=qform_code)  # also sets pixdim to the qform's zooms
    if sform is not None:
        image.set_sform(sform, code=sform_code)
    if pixdim is not None:
        image.header["pixdim"][1:4] = pixdim
    nib.save(image, str(path))
    return path


def _world_by_nibabel(path: Path, zyx) -> np.ndarray:
    """World (x, y, z) LPS of voxel (z, y, x) by nibabel's best affine (the standard's precedence)."""
    import nibabel as nib

    ijk = np.asarray(zyx, dtype=np.float64)[::-1]
    ras = nib.load(str(path)).affine @ np.append(ijk, 1.0)
    return ras[:3] * np.array([-1.0, -1.0, 1.0])


def _load(path: Path) -> tuple[Volume, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volume = load_volume(path)
    said = [str(w.message) for w in caught if issubclass(w.category, GenesisWarning) and "Hounsfield" not in str(w.message)]
    return volume, said


@pytest.mark.parametrize("pixdim", [(1.0, 1.0, 1.0), (0.0, 1.5, 2.5)])
def test_sform_spacing_wins_over_a_disagreeing_pixdim(tmp_path, pixdim) -> None:
    # the writer rewrote pixdim (a 0 to 1, or one axis to 0); the sform says 1.5 x 1.5 x 2.5 mm
    path = _nifti(tmp_path / "scan.nii.gz", sform=_affine(0.3, (1.5, 1.5, 2.5), (10, 20, 30)), sform_code=1,
                  pixdim=pixdim)
    volume, said = _load(path)
    assert volume.spacing == pytest.approx((2.5, 1.5, 1.5))
    assert volume.metadata["geometry_source"] == "sform"
    # origin and direction come from the same transform as the spacing
    for zyx in [(0, 0, 0), (4, 5, 6), (2.5, 1, 3)]:
        np.testing.assert_allclose(volume.index_to_world(zyx), _world_by_nibabel(path, zyx), atol=1e-4)
    assert len(said) == 1 and "scan.nii.gz" in said[0]
    assert "(1.5, 1.5, 2.5) mm in the sform" in said[0] and f"({pixdim[0]:g}, {pixdim[1]:g}, {pixdim[2]:g}) in the pixdim" in said[0]


def test_sform_wins_over_a_qform_that_places_the_voxels_elsewhere(tmp_path) -> None:
    # SimpleITK takes the qform when sform_code is 2-4; the standard takes the sform
    path = _nifti(tmp_path / "aligned.nii", sform=_affine(0.3, (1.5, 1.5, 2.5), (10, 20, 30)), sform_code=2,
                  qform=_affine(-0.5, (1.5, 1.5, 2.5), (1, 2, 3)), qform_code=1)
    volume, said = _load(path)
    assert volume.metadata["geometry_source"] == "sform"
    np.testing.assert_allclose(volume.index_to_world((4, 5, 6)), _world_by_nibabel(path, (4, 5, 6)), atol=1e-4)
    assert len(said) == 1 and "aligned.nii" in said[0] and "origin" in said[0] and "direction" in said[0]
    assert "voxel size" not in said[0]  # both say 1.5 x 1.5 x 2.5 mm


@pytest.mark.parametrize("case", ["sform and qform", "qform, z flipped", "pixdim only"])
def test_consistent_headers_read_silently_and_like_simpleitk(tmp_path, case) -> None:
    path = tmp_path / "ok.nii.gz"
    affine = _affine(0.3, (1.5, 1.5, 2.5), (10, 20, 30))
    if case == "sform and qform":
        _nifti(path, sform=affine, sform_code=1, qform=affine, qform_code=1)
    elif case == "qform, z flipped":
        _nifti(path, qform=_affine(0.3, (1.5, 1.5, -2.5), (10, 20, 30)), qform_code=1)
    else:
        _nifti(path, pixdim=(1.5, 1.5, 2.5))
    volume, said = _load(path)
    assert said == []
    image = sitk.ReadImage(str(path))  # SimpleITK agrees wherever the header agrees with itself
    np.testing.assert_allclose(volume.spacing, image.GetSpacing()[::-1], rtol=1e-6)
    np.testing.assert_allclose(volume.origin, image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.direction, image.GetDirection(), atol=1e-6)


def test_unusable_sform_falls_back_with_a_warning_or_is_an_error(tmp_path) -> None:
    sheared = _affine(0.0, (1.5, 1.5, 2.5), (0, 0, 0))
    sheared[0, 1] = 0.4
    qform = _affine(0.0, (1.5, 1.5, 2.5), (0, 0, 0))
    volume, said = _load(_nifti(tmp_path / "shear.nii", sform=sheared, sform_code=1, qform=qform, qform_code=1))
    assert volume.metadata["geometry_source"] == "qform" and volume.spacing == pytest.approx((2.5, 1.5, 1.5))
    assert len(said) == 1 and "shear.nii" in said[0] and "shears" in said[0] and "using the qform" in said[0]

    flat = _affine(0.0, (1.5, 0.0, 2.5), (0, 0, 0))  # a zero column: no voxel size on y
    volume, said = _load(_nifti(tmp_path / "flat.nii", sform=flat, sform_code=1, pixdim=(1.5, 1.5, 2.5)))
    assert volume.metadata["geometry_source"] == "pixdim" and volume.spacing == pytest.approx((2.5, 1.5, 1.5))
    assert len(said) == 1 and "zero column" in said[0]

    path = _nifti(tmp_path / "shear_only.nii", sform=sheared, sform_code=1, pixdim=(1.5, 1.5, 2.5))
    with pytest.raises(VolumeReadError, match="shears the voxel grid.*no qform") as info:
        load_volume(path)
    assert "shear_only.nii" in str(info.value)


def test_label_maps_get_the_geometry_of_their_image(tmp_path) -> None:
    import nibabel as nib

    image = _nifti(tmp_path / "ct.nii.gz", sform=_affine(0.3, (1.5, 1.5, 2.5), (10, 20, 30)), sform_code=1,
                   pixdim=(1.0, 1.0, 1.0))
    header = nib.load(str(image)).header.copy()
    nib.save(nib.Nifti1Image(np.zeros(SHAPE_XYZ, np.uint8), None, header=header), str(tmp_path / "label.nii.gz"))
    with pytest.raises(VolumeReadError, match="constant"), pytest.warns(GenesisWarning):
        load_volume(tmp_path / "label.nii.gz")  # an all-background mask is no CT image
    with pytest.warns(GenesisWarning, match="label.nii.gz: the header's transforms disagree"):
        label = load_volume(tmp_path / "label.nii.gz", check=False)
    volume, _ = _load(image)
    assert (label.spacing, label.origin, label.direction) == (volume.spacing, volume.origin, volume.direction)
    assert not label.array.any()


def _compressed_mha(path: Path) -> Path:
    array = np.random.default_rng(1).uniform(-1000, 400, (6, 16, 16)).astype(np.float32)
    array[:, :8] = -1000.0  # compressible, like air around a body
    return save_volume(Volume(array, spacing=(2.0, 0.8, 0.8)), path)


def _edit_header(path: Path, key: str, change) -> None:
    data = path.read_bytes()
    match = re.search(rb"\n" + key.encode() + rb" = ([^\n]*)\n", data)
    assert match is not None, key
    new = change(match.group(1).decode()).encode()
    path.write_bytes(data[: match.start(1)] + new + data[match.end(1):])


@pytest.mark.parametrize("claimed", [lambda n: 40, lambda n: n - 1, lambda n: n + 1, lambda n: 10 * n])
def test_metaimage_compressed_data_size_must_match_the_stream(tmp_path, claimed) -> None:
    path = _compressed_mha(tmp_path / "scan.mha")
    _edit_header(path, "CompressedDataSize", lambda text: str(claimed(int(text))))
    with pytest.raises(VolumeReadError, match="CompressedDataSize") as info:
        load_volume(path)
    assert "scan.mha" in str(info.value) and "bytes long" in str(info.value)


def test_metaimage_data_must_match_dimsize_times_element_size(tmp_path) -> None:
    path = _compressed_mha(tmp_path / "scan.mha")
    _edit_header(path, "DimSize", lambda text: "16 16 5")  # one slice fewer than the stream holds
    with pytest.raises(VolumeReadError, match="the header declares|more than the") as info:
        load_volume(path)
    assert "scan.mha" in str(info.value)
    # an uncompressed .mhd whose .raw holds more than DimSize x ElementType (ITK reads a prefix)
    array = np.random.default_rng(2).uniform(-1000, 400, (6, 16, 16)).astype(np.float32)
    header = save_volume(Volume(array, spacing=(2.0, 0.8, 0.8)), tmp_path / "raw.mhd")
    raw = tmp_path / "raw.raw"
    raw.write_bytes(raw.read_bytes() + bytes(64))
    with pytest.raises(VolumeReadError, match="holds 6208 bytes but DimSize x ElementType declare 6144") as info:
        load_volume(header)
    assert "raw.mhd" in str(info.value)


def test_header_errors_are_one_line_at_the_cli(tmp_path, capsys) -> None:
    path = _compressed_mha(tmp_path / "scan.mha")
    _edit_header(path, "CompressedDataSize", lambda text: "40")

    @user_errors_exit
    def main() -> None:
        load_volume(path)

    assert main() == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: header says CompressedDataSize = 40")
