"""genesis' reader as a MONAI ImageReader, and the README's MONAI example giving genesis' cubes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import NibabelReader
from monai.transforms import LoadImage, LoadImaged

import proxy_tasks
from genesis.data.preprocess import preprocess
from genesis.data.sampler import SamplerConfig, SubVolumeSampler
from genesis.errors import VolumeReadError
from genesis.io import Volume, load_volume, save_volume
from genesis.monai_reader import GenesisReader

README = Path(__file__).resolve().parents[1] / "README.md"
#: Rotated in-plane, shifted, anisotropic: axis or sign mistakes cannot cancel out.
DIRECTION = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _volume(shape=(40, 70, 80), seed: int = 0) -> Volume:
    """A HU volume (z, y, x) with non-trivial geometry."""
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=shape).astype(np.float32)
    return Volume(hu, spacing=(2.5, 0.8, 0.7), origin=(10.0, -20.0, 30.0), direction=DIRECTION)


def test_nrrd_reads_as_monais_own_reader_reads_the_nifti(tmp_path: Path) -> None:
    volume = _volume((6, 7, 8))
    save_volume(volume, tmp_path / "v.nrrd")
    save_volume(volume, tmp_path / "v.nii.gz")
    reference = LoadImage(reader=NibabelReader(), image_only=True)(tmp_path / "v.nii.gz")  # MONAI's own, for NIfTI
    ours = LoadImaged(keys="image", reader=GenesisReader())({"image": tmp_path / "v.nrrd"})["image"]
    assert ours.shape == reference.shape == (8, 7, 6)  # MONAI's (x, y, z)
    assert torch.equal(ours.as_tensor(), reference.as_tensor().float())
    np.testing.assert_allclose(ours.affine.numpy(), reference.affine.numpy(), atol=1e-5)  # RAS, like MONAI's
    assert ours.meta["space"] == "RAS" and ours.meta["filename_or_obj"].endswith("v.nrrd")
    np.testing.assert_allclose(ours.meta["spacing"], (0.7, 0.8, 2.5))


def test_refused_files_fail_with_genesis_message_not_another_reader(tmp_path: Path) -> None:
    """MONAI falls back to its other readers when ``read`` raises; they would load these files."""
    array = _volume((6, 7, 8)).array.copy()
    array[2, 3, 4] = np.nan
    image = sitk.GetImageFromArray(array)
    sitk.WriteImage(image, str(tmp_path / "nan.nii.gz"))
    assert LoadImage(image_only=True)(tmp_path / "nan.nii.gz").isnan().any()  # MONAI's readers take it
    with pytest.raises(VolumeReadError, match=r"nan\.nii\.gz: volume contains 1 NaN"):
        LoadImaged(keys="image", reader=GenesisReader())({"image": tmp_path / "nan.nii.gz"})
    save_volume(_volume((6, 7, 8)), tmp_path / "cut.nrrd")
    data = (tmp_path / "cut.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[: len(data) - 100])
    with pytest.raises(VolumeReadError, match="cut.nrrd"):
        LoadImage(reader=GenesisReader())(tmp_path / "cut.nrrd")


def test_several_files_stack_as_channels(tmp_path: Path) -> None:
    for i in range(2):
        save_volume(_volume((6, 7, 8), seed=i), tmp_path / f"c{i}.nrrd")
    image = LoadImage(reader=GenesisReader(), image_only=True)([tmp_path / "c0.nrrd", tmp_path / "c1.nrrd"])
    assert image.shape == (2, 8, 7, 6)
    assert torch.equal(image[1], torch.from_numpy(load_volume(tmp_path / "c1.nrrd").array.T.copy()))
    save_volume(_volume((6, 7, 9)), tmp_path / "other.nrrd")
    with pytest.raises(VolumeReadError, match="cannot stack"):
        LoadImage(reader=GenesisReader())([tmp_path / "c0.nrrd", tmp_path / "other.nrrd"])


def test_real_nrrd_and_dicom(real_data: Path) -> None:
    path = real_data / "cip_copdgene" / "ct-64.nrrd"
    image = LoadImaged(keys="image", reader=GenesisReader())({"image": path})["image"]
    volume = load_volume(path)
    assert image.shape == (64, 64, 79) and torch.equal(image.as_tensor(), torch.from_numpy(volume.array.T.copy()))
    np.testing.assert_allclose(np.diag(image.affine.numpy())[:3], np.asarray(volume.spacing[::-1])
                               * np.sign(np.diag(volume.direction_matrix)) * (-1, -1, 1), rtol=1e-6)
    series = LoadImage(reader=GenesisReader(), image_only=True)(real_data / "cip_copdgene" / "simple_dicom")
    assert series.shape == (512, 512, 2)


def _readme_pipeline():
    """The README's MONAI example, run as written."""
    text = README.read_text()
    section = text[text.index("## Proxy tasks in MONAI pipelines"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    return namespace["pipeline"]


def _genesis_cube_and_pair(path: Path, image, transform_state: torch.Tensor):
    """genesis' own path for the cube the MONAI pipeline cropped: load_volume, preprocess (the
    Models Genesis window), SubVolumeSampler.crop_at at the same corner, the combined task."""
    volume = load_volume(path)
    original = np.linalg.inv(np.asarray(LoadImage(reader=GenesisReader(), image_only=True)(path).affine))
    corner_xyz = np.rint(original @ np.asarray(image.affine)[:, 3])[:3].astype(int)
    crop = tuple(int(s) for s in image.shape[1:][::-1])  # (z, y, x)
    sampler = SubVolumeSampler(SamplerConfig(crop=crop))
    cube = sampler.crop_at(preprocess(volume), corner_xyz[::-1][None])[0]
    generator = torch.Generator()
    generator.set_state(transform_state)
    pair = proxy_tasks.build("combined")(torch.from_numpy(cube)[None, None], generator=generator)
    return cube, pair


@pytest.mark.parametrize("source", ["written", "real"])
def test_readme_monai_example_gives_genesis_cubes(source: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if source == "real":
        path = request.getfixturevalue("real_data") / "cip_copdgene" / "ct-64.nrrd"
    else:
        path = save_volume(_volume((40, 70, 80)), tmp_path / "scan.nrrd")
    pipeline = _readme_pipeline()
    state = pipeline.transforms[-1].generator.get_state()  # the seed Compose gave the genesis transform
    data = {"image": str(path)}
    for transform in pipeline.transforms:  # Compose's steps, one by one, to see the cube before the task
        before = data["image"].clone() if transform is pipeline.transforms[-1] else None
        data = transform(data)
    assert before.shape == (1, 64, 64, 32)  # MONAI (x, y, z): 32 slices, as --crop 32 64 64
    cube, pair = _genesis_cube_and_pair(path, before, state)
    assert cube.shape == (32, 64, 64)
    np.testing.assert_allclose(before.numpy()[0].transpose(2, 1, 0), cube, atol=1e-6)  # genesis' cube
    # and genesis' pair of that cube (input, target, mask), in MONAI's (x, y, z)
    for key, expected in (("image", pair.input), ("target", pair.target), ("mask", pair.mask.expand_as(pair.input))):
        np.testing.assert_allclose(np.asarray(data[key], dtype=np.float32)[0].transpose(2, 1, 0),
                                   expected[0, 0].numpy().astype(np.float32), atol=1e-6, err_msg=key)
