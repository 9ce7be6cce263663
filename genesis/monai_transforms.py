"""Every proxy task as a MONAI dictionary transform, for MONAI ``Compose`` pipelines.

``GenesisCombinedd(keys="image")`` turns ``{"image": x}`` into ``{"image": transformed x,
"target": x (the restoration target), "mask": changed voxels}`` (plus ``"label"`` for label
tasks); one class per registered task (``Genesis<Name>d``: ``GenesisLocalShuffled``,
``GenesisNonLineard``, ``GenesisRotationPredictiond``...) and the generic :class:`GenesisProxyd`
(``task="name"``). The transform itself is the registered proxy task: these classes only adapt
its calling convention, so each transform stays written once, in ``proxy_tasks/``.

MONAI's ``Randomizable`` contract: ``set_random_state(seed)`` seeds the transform's own
``torch.Generator``; the task draws its parameters from it when applied (our tasks draw and apply
in one vectorised pass over the batch). A transform seeded with ``s`` therefore gives exactly the
pairs of ``task(batch, generator=torch.Generator().manual_seed(s))``, call after call.

Inputs are single samples (C, *spatial), as MONAI's per-sample transforms expect, or batches
(B, C, *spatial) with ``batched=True`` (e.g. after a ``DataLoader``, on the GPU); numpy arrays,
tensors and ``MetaTensor`` s come back as the same type (MetaTensors keep their metadata).
Intensities must already be in [0, 1] (e.g. ``ScaleIntensityRanged(a_min=-1000, a_max=1000,
b_min=0, b_max=1, clip=True)``).

Axis order. The tasks treat the first spatial axis as depth (z: slices are stacked along it;
rotations turn the (y, x) plane; ``next_slice`` predicts along it), as genesis arrays are ordered
(z, y, x) (``genesis-pretrain --crop D H W``). MONAI's readers give (x, y, z) instead. ``layout``
says which order the input has: ``"auto"`` (default) takes it from a MetaTensor's affine (the
axis whose direction is closest to world z is depth: last means MONAI's ``"xyz"``, first genesis'
``"zyx"``); plain arrays and tensors carry no affine and are taken as genesis' ``"zyx"``. A stated
layout (``"xyz"`` or ``"zyx"``; ``"xy"`` / ``"yx"`` in 2D) is checked against a MetaTensor's
affine. The task then runs on the (z, y, x) view and its outputs come back in the input's order,
so the same sub-volume gives the same pair whichever way it is stored.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_dst_type

import proxy_tasks
from proxy_tasks.base import TASKS, ProxyTask

#: The tasks' axis order: depth first (genesis arrays, ``--crop D H W``); 2D is its last two.
TASK_LAYOUT = "zyx"

__all__ = ["GenesisProxyd", "affine_layout", "proxy_transform_class", "resolve_layout", "transform_names"]


class GenesisProxyd(Randomizable, MapTransform):
    """A registered proxy task as a MONAI dictionary transform.

    Args:
        keys: image key(s); each is transformed in place.
        task: registered task name (``proxy_tasks.list_tasks()``) or a task instance.
        target_key, mask_key, label_key: where the restoration target, the changed-voxel mask and
            the label go. With several ``keys`` they are prefixed: ``"<key>_target"``...
        batched: inputs are batches (B, C, *spatial) instead of single samples (C, *spatial).
        layout: order of the spatial axes: ``"auto"`` (from a MetaTensor's affine; plain arrays
            are ``"zyx"``) or the letters of the axes in array order, e.g. ``"xyz"`` (MONAI's
            readers) or ``"zyx"`` (genesis); see the module docstring.
        allow_missing_keys: skip absent keys instead of raising.
        **params: constructor arguments of the task (e.g. ``prob=1.0``).
    Raises:
        ValueError (when called): a stated ``layout`` that the MetaTensor's affine contradicts, or
            an affine that does not tell the axes apart (oblique by about 45 degrees).
    """

    task_name: str | None = None

    def __init__(
        self,
        keys: KeysCollection,
        task: str | ProxyTask | None = None,
        target_key: str = "target",
        mask_key: str = "mask",
        label_key: str = "label",
        batched: bool = False,
        layout: str = "auto",
        allow_missing_keys: bool = False,
        **params: Any,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if layout not in ("auto", "zyx", "xyz", "yx", "xy"):
            raise ValueError(f"layout must be 'auto', 'zyx' (genesis' order, depth first), 'xyz' (MONAI's), "
                             f"or in 2D 'yx' / 'xy'; got {layout!r}")
        self.layout = layout
        task = task if task is not None else self.task_name
        if task is None:
            raise ValueError("GenesisProxyd needs task=<registered proxy task name>")
        self.task = proxy_tasks.build(task, **params) if isinstance(task, str) else task
        self.target_key, self.mask_key, self.label_key = target_key, mask_key, label_key
        self.batched = bool(batched)
        self.generator = torch.Generator()
        self.set_random_state()

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> GenesisProxyd:
        """Seed the transform (MONAI contract); the torch generator gets ``seed`` itself, or a
        seed drawn from ``state`` / a fresh one when no seed is given."""
        super().set_random_state(seed, state)
        torch_seed = int(seed) if seed is not None else int(self.R.randint(0, 2**31 - 1))
        self.generator = torch.Generator().manual_seed(torch_seed)
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing is drawn ahead: the task draws its parameters from ``self.generator`` as it applies
        them, in one pass over the batch (drawing them separately would mean a second copy of each
        task's parameter logic)."""

    def _names(self, key: Hashable) -> tuple[str, str, str]:
        prefix = "" if len(self.keys) == 1 else f"{key}_"
        return prefix + self.target_key, prefix + self.mask_key, prefix + self.label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(d)
        for key in self.key_iterator(d):
            image = d[key]
            x = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)
            x = x.float() if not torch.is_floating_point(x) else x
            batch = x if self.batched else x.unsqueeze(0)
            layout = resolve_layout(self.layout, image, batch.dim() - 2, key)
            batch = _reorder(batch, layout, TASK_LAYOUT[3 - len(layout):])  # the task sees depth first
            generator = self._generator_for(batch.device)
            pair = self.task(batch, generator=generator)
            target_key, mask_key, label_key = self._names(key)

            def back(t: torch.Tensor) -> Any:
                # back to the input's order; a task's 2D outputs of a 3D input are (y, x) planes
                own = TASK_LAYOUT[3 - (t.dim() - 2):]
                t = _reorder(t, own, "".join(a for a in layout if a in own))
                t = t if self.batched else t[0]
                return convert_to_dst_type(t, dst=image, dtype=t.dtype)[0]

            d[key] = back(pair.input)
            if pair.target is not None:
                d[target_key] = back(pair.target)
            if pair.mask is not None:
                mask = pair.mask.expand_as(pair.input) if pair.mask.dim() == pair.input.dim() else pair.mask
                d[mask_key] = back(mask)
            if pair.label is not None:
                d[label_key] = pair.label if self.batched else pair.label[0]
        return d

    def _generator_for(self, device: torch.device) -> torch.Generator:
        """Ours for CPU data; for a GPU batch, a generator on its device seeded from ours (the
        tasks draw on the batch's device), so GPU pipelines are seeded and reproducible too."""
        if device.type == "cpu":
            return self.generator
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return torch.Generator(device=device).manual_seed(seed)


def affine_layout(affine: Any, spatial_dims: int) -> str:
    """``"zyx"`` or ``"xyz"`` (2D: ``"yx"`` / ``"xy"``): where the affine puts the depth axis.

    Depth is the array axis whose direction is closest to world z (2D: world y). First: genesis'
    order; last: MONAI's (its readers keep the file's index order (i, j, k), genesis reverses it),
    whatever the in-plane directions.

    Raises:
        ValueError: depth is the middle axis, or two axes are equally close to it.
    """
    genesis = TASK_LAYOUT[3 - spatial_dims:]
    matrix = np.abs(np.asarray(torch.as_tensor(affine).detach().cpu(), dtype=np.float64))
    rows = matrix[..., spatial_dims - 1, :spatial_dims].reshape(-1, spatial_dims)  # world z (2D: y) per array axis
    layouts = set()
    for row in rows:
        depth, (first, second) = int(row.argmax()), np.sort(row)[::-1][:2]
        if first - second <= 1e-6 * first or depth not in (0, spatial_dims - 1):
            raise ValueError(f"cannot tell the depth axis (world {genesis[0]}) from the affine "
                             f"{np.asarray(affine).tolist()}: it is not clearly the first or the last axis; "
                             "reorient the image (e.g. MONAI's Orientationd) or give layout='xyz' or 'zyx'")
        layouts.add(genesis if depth == 0 else genesis[::-1])
    if len(layouts) != 1:
        raise ValueError("the batch mixes images stored depth-first and depth-last")
    return layouts.pop()


def resolve_layout(layout: str, image: Any, spatial_dims: int, key: Hashable = "image") -> str:
    """The axis letters of ``image`` in array order (``"xyz"`` or ``"zyx"``), see the module docstring.

    Raises:
        ValueError: ``layout`` does not fit the dimensions or contradicts a MetaTensor's affine.
    """
    if layout != "auto" and len(layout) != spatial_dims:
        raise ValueError(f"{key!r}: layout {layout!r} has {len(layout)} axes; the input has {spatial_dims} "
                         "spatial axes")
    affine = getattr(image, "affine", None)
    found = affine_layout(affine, spatial_dims) if affine is not None else None
    if layout == "auto":
        return found or TASK_LAYOUT[3 - spatial_dims:]
    if found is not None and found != layout:
        where = "first" if found == TASK_LAYOUT[3 - spatial_dims:] else "last"
        raise ValueError(f"{key!r}: layout {layout!r}, but the MetaTensor's affine puts depth along the {where} "
                         f"axis ({found!r}); drop layout= to follow the affine, or fix the affine")
    return layout


def _reorder(t: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """(B, C, *spatial) with spatial axes ``src`` (letters) reordered to ``dst``."""
    if src == dst:
        return t
    return t.permute(0, 1, *(2 + src.index(a) for a in dst)).contiguous()


def _class_name(name: str) -> str:
    return "Genesis" + TASKS.get(name).__name__ + "d"


def proxy_transform_class(name: str) -> type[GenesisProxyd]:
    """The ``Genesis<Task>d`` dictionary transform class of registered task ``name``."""
    cls = TASKS.get(name)
    doc = (f"MONAI dictionary transform of the ``{name}`` proxy task (:class:`{cls.__module__}.{cls.__name__}`);"
           " arguments of :class:`GenesisProxyd`, task parameters as keywords.")
    return type(_class_name(name), (GenesisProxyd,), {"task_name": name, "__doc__": doc, "__module__": __name__})


def transform_names() -> dict[str, str]:
    """Registered task name -> dictionary transform class name."""
    return {name: _class_name(name) for name in proxy_tasks.list_tasks()}


# One class per registered task, generated from the registry (no class body per task).
for _name in proxy_tasks.list_tasks():
    _cls = proxy_transform_class(_name)
    globals()[_cls.__name__] = _cls
    __all__.append(_cls.__name__)
del _name, _cls
