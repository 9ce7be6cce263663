"""Properties every task of the second family shares: seeded determinism, dtype and device kept."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import proxy_tasks
from proxy_tasks.deepcluster import ClusterContext

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

CASES: list[tuple[str, dict[str, Any], tuple[int, ...]]] = [
    ("masked_region", {"fraction": 0.2}, (3, 1, 12, 16, 16)),
    ("masked_region", {"fraction": 0.33, "fill": "noise"}, (3, 1, 16, 16)),
    ("masked_curriculum", {"stage": 2}, (3, 1, 16, 16)),
    ("next_slice", {"gap": 3, "slab": 2}, (3, 1, 12, 16, 16)),
    ("next_slice", {"gap": 1, "slab": 3, "spatial_dims_out": 3}, (3, 1, 12, 16, 16)),
    ("denoise_sp", {}, (3, 1, 12, 16, 16)),
    ("denoise_gaussian", {}, (3, 1, 16, 16)),
    ("rotation", {}, (3, 1, 12, 16, 16)),
    ("flip", {}, (3, 1, 16, 16)),
    ("inpainting", {}, (3, 1, 12, 24, 24)),
    ("patch_shuffle", {}, (3, 1, 12, 16, 16)),
    ("jigsaw", {}, (3, 1, 12, 18, 18)),
    ("jigsaw", {"layout": "stack"}, (3, 1, 18, 18)),
    ("rubiks_cube", {}, (3, 1, 12, 16, 16)),
    ("deepcluster", {"k": 4}, (6, 1, 8, 8, 8)),
]


def _build(name: str, params: dict[str, Any], shape: tuple[int, ...], device: str) -> proxy_tasks.ProxyTask:
    task = proxy_tasks.build(name, **params)
    if name == "deepcluster":
        conv = torch.nn.Conv3d(1, 4, 3).to(device=device, dtype=torch.float64)
        batches = [torch.rand(shape, dtype=torch.float64, device=device) for _ in range(2)]
        task.on_epoch_start(ClusterContext(features=conv, batches=batches))
    return task


def _tensors(pair: proxy_tasks.ProxyPair) -> list[torch.Tensor]:
    return [t for t in (pair.input, pair.target, pair.mask, pair.label) if t is not None]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name, params, shape", CASES)
def test_seeded_deterministic_and_keeps_dtype_and_device(name: str, params: dict[str, Any],
                                                        shape: tuple[int, ...], device: str) -> None:
    batch = torch.rand(shape, dtype=torch.float64, device=device)
    task = _build(name, params, shape, device)
    first = task(batch, generator=torch.Generator(device=device).manual_seed(7))
    second = task(batch, generator=torch.Generator(device=device).manual_seed(7))
    for a, b in zip(_tensors(first), _tensors(second)):
        assert torch.equal(a, b)
    assert first.input.dtype == torch.float64 and first.input.device.type == device
    if first.target is not None:
        assert first.target.dtype == torch.float64 and first.target.device.type == device
    for extra in (first.mask, first.label):
        if extra is not None:
            assert extra.device.type == device
    if first.label is not None:
        assert first.label.dtype == torch.long and first.label.shape[0] == shape[0]
        assert task.kind == "classification"
    else:
        assert task.kind == "restoration" and first.target is not None
    if name not in ("deepcluster", "rotation", "flip"):
        other = task(batch, generator=torch.Generator(device=device).manual_seed(8))
        assert any(not torch.equal(a, b) for a, b in zip(_tensors(first), _tensors(other)))
    assert batch.dtype == torch.float64  # the batch itself is untouched
    if name != "deepcluster":  # its feature network is float64 here
        single = task(batch.float(), generator=torch.Generator(device=device).manual_seed(7))
        assert single.input.dtype == torch.float32


@pytest.mark.parametrize("name", ["masked_region", "denoise_sp", "rotation", "jigsaw"])
def test_rejects_integer_batches(name: str) -> None:
    with pytest.raises(ValueError, match="float"):
        proxy_tasks.build(name)(torch.zeros(2, 1, 9, 9, dtype=torch.uint8))
