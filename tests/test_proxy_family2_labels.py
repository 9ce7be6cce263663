"""Rotation and flip prediction: the label names the transform, undoing it recovers the batch."""

from __future__ import annotations

import pytest
import torch

import proxy_tasks
from proxy_tasks.flip import flip_axial


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(64, 1, 12, 12), (32, 1, 6, 10, 10)])
def test_rotation_back_by_the_label_recovers_the_input(shape: tuple[int, ...]) -> None:
    batch = torch.rand(shape)
    task = proxy_tasks.build("rotation")
    pair = task(batch, generator=_gen())
    assert task.kind == "classification" and task.num_classes == 4
    assert pair.target is None and pair.label.dtype == torch.long and pair.label.shape == (shape[0],)
    assert set(pair.label.tolist()) == {0, 1, 2, 3}
    for i, k in enumerate(pair.label.tolist()):
        assert torch.equal(torch.rot90(pair.input[i], -k, dims=(-2, -1)), batch[i])
        if k:  # a real rotation changes a random image
            assert not torch.equal(pair.input[i], batch[i])


def test_rotation_direction_is_a_quarter_turn_in_the_axial_plane() -> None:
    image = torch.zeros(1, 1, 3, 3)
    image[0, 0, 0, 2] = 1.0  # top-right corner
    task = proxy_tasks.build("rotation")
    for seed in range(40):
        pair = task(image, generator=_gen(seed))
        if pair.label.item() == 1:
            assert pair.input[0, 0, 0, 0] == 1.0  # counter-clockwise: top-right -> top-left
            break
    else:
        pytest.fail("label 1 never drawn")
    with pytest.raises(ValueError, match="square"):
        task(torch.rand(1, 1, 4, 6))


@pytest.mark.parametrize("shape", [(48, 1, 8, 10), (24, 1, 4, 6, 8)])
def test_flip_back_by_the_label_recovers_the_input(shape: tuple[int, ...]) -> None:
    batch = torch.rand(shape)
    pair = proxy_tasks.build("flip")(batch, generator=_gen())
    assert pair.label.shape == (shape[0],) and set(pair.label.tolist()) == {0, 1, 2}
    assert torch.equal(flip_axial(pair.input, pair.label), batch)
    for i, k in enumerate(pair.label.tolist()):
        expected = {0: batch[i], 1: batch[i].flip(-1), 2: batch[i].flip(-2)}[k]
        assert torch.equal(pair.input[i], expected)
