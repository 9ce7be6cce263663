"""Proxy tasks as MONAI dictionary transforms give exactly the plain tasks' pairs for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Randomizable

import proxy_tasks
from genesis import monai_transforms as mt

TASKS = ["combined", "local_shuffle", "nonlinear", "inner_cutout", "outer_cutout", "inpainting", "rotation"]
#: Array axis 0 along world z (3 mm), axis 1 along y, axis 2 along x (2 mm): genesis' (z, y, x) order.
ZYX_AFFINE = torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
#: MONAI's order (x, y, z): what LoadImage gives, the same spacings.
XYZ_AFFINE = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))


def _batch(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, 1, 16, 16, 16), generator=torch.Generator().manual_seed(seed))


def _plain(name: str, batches: list[torch.Tensor], seed: int) -> list[proxy_tasks.ProxyPair]:
    task, g = proxy_tasks.build(name), torch.Generator().manual_seed(seed)
    return [task(b.clone(), generator=g) for b in batches]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = a.as_tensor() if isinstance(a, MetaTensor) else torch.as_tensor(a)
    return a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("name", TASKS)
def test_batched_transform_gives_the_plain_pairs(name: str) -> None:
    batches = [_batch(seed=1), _batch(seed=2)]
    expected = _plain(name, batches, seed=7)
    transform = getattr(mt, mt.transform_names()[name])(keys="image", batched=True)
    assert isinstance(transform, Randomizable) and transform.set_random_state(seed=7) is transform
    for batch, pair in zip(batches, expected):  # call after call, as the task with one generator
        meta = MetaTensor(batch.clone(), affine=ZYX_AFFINE)  # a (z, y, x) batch, as its affine says
        out = transform({"image": meta, "keep": "me"})
        assert isinstance(out["image"], MetaTensor) and out["image"].affine[2, 0] == 3.0 and out["keep"] == "me"
        assert _same(out["image"], pair.input)
        assert (pair.target is None) == ("target" not in out) and (pair.target is None or _same(out["target"], pair.target))
        assert (pair.mask is None) == ("mask" not in out)
        if pair.mask is not None:
            assert torch.equal(torch.as_tensor(out["mask"]).bool(), pair.mask.expand_as(pair.input))
        assert (pair.label is None) == ("label" not in out) and (pair.label is None or torch.equal(out["label"], pair.label))


def test_single_samples_in_a_compose_and_numpy() -> None:
    sample = _batch(1, seed=3)
    (expected,) = _plain("combined", [sample], seed=11)
    pipeline = Compose([mt.GenesisCombinedd(keys="image")])
    pipeline.transforms[0].set_random_state(seed=11)
    out = pipeline({"image": sample[0].numpy()})  # (C, D, H, W) as MONAI loads it
    assert isinstance(out["image"], np.ndarray) and out["image"].shape == (1, 16, 16, 16)
    assert np.array_equal(out["image"], expected.input[0].numpy())
    assert np.array_equal(out["target"], expected.target[0].numpy())
    # reseeding repeats the pair; another seed gives another one
    again = mt.GenesisProxyd(keys="image", task="combined").set_random_state(seed=11)({"image": sample[0]})
    assert torch.equal(again["image"], expected.input[0])
    other = mt.GenesisProxyd(keys="image", task="combined").set_random_state(seed=12)({"image": sample[0]})
    assert not torch.equal(other["image"], expected.input[0])


def test_task_parameters_and_several_keys() -> None:
    x = _batch(1, seed=4)[0]
    out = mt.GenesisLocalShuffled(keys=["a", "b"], prob=1.0, max_side_divisor=4).set_random_state(seed=0)({"a": x, "b": x.clone()})
    assert {"a_target", "b_target", "a_mask", "b_mask"} <= set(out)
    assert torch.equal(out["a_target"], x) and not torch.equal(out["a"], x)  # task parameters reach the task
    with pytest.raises(KeyError):
        mt.GenesisProxyd(keys="image", task="no_such_task")


@pytest.mark.parametrize("name", ["combined", "rotation", "local_shuffle", "next_slice"])
def test_monai_axis_order_gives_the_pairs_of_the_zyx_cube(name: str) -> None:
    """A cube stored (x, y, z), as MONAI loads it, gives the pair of the same cube in genesis'
    (z, y, x) order, transposed: depth is z either way (rotations in the axial plane, slices along z)."""
    zyx = torch.rand((1, 1, 8, 16, 16), generator=torch.Generator().manual_seed(5))  # (B, C, z, y, x)
    (expected,) = _plain(name, [zyx], seed=3)

    def back(t: torch.Tensor) -> torch.Tensor:  # (C, z, y, x) -> (C, x, y, z); next_slice's (C, y, x) planes -> (C, x, y)
        return t.permute(0, 3, 2, 1) if t.dim() == 4 else t.permute(0, 2, 1)
    xyz = MetaTensor(zyx[0].permute(0, 3, 2, 1).clone(), affine=XYZ_AFFINE)  # (C, x, y, z)
    transform = mt.GenesisProxyd(keys="image", task=name).set_random_state(seed=3)
    out = transform({"image": xyz})
    assert isinstance(out["image"], MetaTensor)
    assert torch.equal(out["image"].as_tensor(), back(expected.input[0]))
    assert (expected.target is None) == ("target" not in out)
    if expected.target is not None:
        assert torch.equal(torch.as_tensor(out["target"]), back(expected.target[0]))
    if expected.label is not None:
        assert torch.equal(out["label"], expected.label[0])
    # the same with the layout stated, on a plain tensor (no affine to read it from)
    plain = mt.GenesisProxyd(keys="image", task=name, layout="xyz").set_random_state(seed=3)({"image": xyz.as_tensor()})
    assert torch.equal(plain["image"], back(expected.input[0]))


def test_layout_is_checked_against_the_affine() -> None:
    x = torch.rand((1, 8, 8, 8), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"layout 'zyx', but the MetaTensor's affine puts depth along the last axis"):
        mt.GenesisCombinedd(keys="image", layout="zyx")({"image": MetaTensor(x, affine=XYZ_AFFINE)})
    oblique = torch.eye(4)
    oblique[1:3, 1:3] = torch.tensor([[1.0, -1.0], [1.0, 1.0]]) / 2**0.5  # y and z axes both at 45 degrees to z
    with pytest.raises(ValueError, match="cannot tell the depth axis"):
        mt.GenesisCombinedd(keys="image")({"image": MetaTensor(x, affine=oblique)})
    coronal = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])  # world z: middle axis
    with pytest.raises(ValueError, match="cannot tell the depth axis"):
        mt.GenesisCombinedd(keys="image")({"image": MetaTensor(x, affine=coronal)})
    with pytest.raises(ValueError, match="layout must be"):
        mt.GenesisCombinedd(keys="image", layout="yxz")
    with pytest.raises(ValueError, match="has 3 axes; the input has 2"):
        mt.GenesisCombinedd(keys="image", layout="xyz")({"image": torch.rand(1, 8, 8)})
    assert mt.affine_layout(ZYX_AFFINE, 3) == "zyx" and mt.affine_layout(XYZ_AFFINE, 3) == "xyz"
    assert mt.resolve_layout("auto", x, 3) == "zyx" and mt.resolve_layout("auto", MetaTensor(x), 3) == "xyz"
