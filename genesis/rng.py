"""Seeded randomness passed explicitly, and RNG state that survives a checkpoint.

No global seeding inside the library: functions take a ``numpy.random.Generator`` or a
``torch.Generator``. :func:`capture_rng_state` / :func:`restore_rng_state` exist for exact resume
and return only types that ``torch.load(..., weights_only=True)`` accepts.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def numpy_generator(*seed: int) -> np.random.Generator:
    """A numpy Generator from one or several integers (e.g. ``(seed, epoch, index)``)."""
    return np.random.default_rng([int(s) for s in seed])


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Global torch/numpy/python RNG states plus named generators, as weights_only-safe objects."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), *np_state[2:]],
        "python": _python_state_to_list(random.getstate()),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    random.setstate(_python_state_from_list(state["python"]))
    for name, gen in (generators or {}).items():
        if name in state.get("generators", {}):
            gen.set_state(state["generators"][name])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
