"""The data-kind contract: detect an input, resolve its part of the recipe, build its source.

A kind sees a :class:`DataRequest` (the ``data`` section of the configuration plus the few run
settings a kind may need) and returns a :class:`ResolvedData`: an immutable :class:`DataPlan`
(what the recipe records: kind, dims, crop, sampling rule, intensity normalisation) and the
volume source (:mod:`genesis.data.sources` protocol: ``len``, ``load(i)`` in [0, 1] (z, y, x),
``name(i)``, ``is_synthetic``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from genesis.data.config import DataConfig
from genesis.errors import ConfigError
from genesis.registry import Registry

DATA_KINDS: Registry = Registry("data kind")


register_kind = DATA_KINDS.register_named  # the class also gets its registered name


@dataclass(frozen=True)
class DataRequest:
    """What a data kind may read from the resolved configuration.

    Attributes:
        data: the ``data`` section.
        dims: ``--dims`` (2 or 3).
        seed: the run's seed (synthetic data are generated from it).
        plans / configuration: an nnU-Net plans file and configuration (or None).
        with_metadata: the method needs radiographs that carry their metadata (sex, age, view).
        method: name of the method (for messages).
    """

    data: DataConfig
    dims: int = 3
    seed: int = 0
    plans: str | None = None
    configuration: str = "3d_fullres"
    with_metadata: bool = False
    method: str = ""

    @property
    def path(self) -> Path | None:
        return None if self.data.data is None else Path(self.data.data).expanduser()


@dataclass(frozen=True)
class DataPlan:
    """The data part of a recipe.

    Attributes:
        kind: the data kind's registered name.
        dims: spatial dims of the training pairs (a kind may fix it: radiographs are 2D).
        crop: sub-volume size (D, H, W) the sampler cuts (D = 1 for 2D images).
        models_genesis_sampler: the reference rule (mostly-lung cubes, edge margins) or uniform.
        normalisation: how intensities reach [0, 1], in words (recorded, printed).
        synthetic: the data are generated, not patients.
        notes: lines printed once before training (what the kind changed and why).
    """

    kind: str
    dims: int
    crop: tuple[int, int, int]
    models_genesis_sampler: bool
    normalisation: str
    synthetic: bool = False
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dims": self.dims, "crop": list(self.crop),
                "models_genesis_sampler": self.models_genesis_sampler, "normalisation": self.normalisation,
                "synthetic": self.synthetic}


@dataclass
class ResolvedData:
    """A data kind's answer: the plan and the source it built."""

    plan: DataPlan
    source: Any


class DataKind:
    """Base class of data kinds.

    Class attributes:
        name: registry name (recorded in the recipe).
        order: kinds are asked in increasing order; the first that claims a request wins.
        description: one line for documentation and errors.
    """

    name: ClassVar[str] = ""
    order: ClassVar[int] = 100
    description: ClassVar[str] = ""

    def claims(self, request: DataRequest) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def resolve(self, request: DataRequest) -> ResolvedData:  # pragma: no cover - abstract
        raise NotImplementedError

    # shared helpers -----------------------------------------------------------------------
    def plan(self, request: DataRequest, normalisation: str, *, dims: int | None = None,
             crop: tuple[int, ...] | None = None, models_genesis_sampler: bool | None = None,
             synthetic: bool = False, notes: tuple[str, ...] = ()) -> DataPlan:
        d = request.data
        return DataPlan(self.name, int(dims if dims is not None else request.dims),
                        tuple(int(c) for c in (crop if crop is not None else d.crop)),  # type: ignore[arg-type]
                        bool(d.models_genesis_sampler if models_genesis_sampler is None else models_genesis_sampler),
                        normalisation, synthetic, tuple(notes))


def preprocess_config(data: DataConfig) -> Any:
    """The :class:`~genesis.data.preprocess.PreprocessConfig` of a ``data`` section."""
    from genesis.data.preprocess import PreprocessConfig

    return PreprocessConfig(window=tuple(data.window), spacing=tuple(data.spacing) if data.spacing else None,
                            crop_body=data.crop_body, assume_spacing=data.assume_spacing)


def cache_dir(data: DataConfig) -> Path | None:
    """The cache of preprocessed volumes: ``data.cache_dir``, else the per-user default (None: off)."""
    from genesis.data.cache import default_cache_dir

    if not data.cache:
        return None
    return Path(data.cache_dir).expanduser() if data.cache_dir else default_cache_dir()


def window_words(window: tuple[float, float]) -> str:
    return f"HU window [{window[0]:g}, {window[1]:g}] -> [0, 1]"


def fit_2d_crop(request: DataRequest, source: Any, kind: str) -> tuple[int, tuple[int, int, int], tuple[str, ...]]:
    """Dims and crop for a source of 2D images (depth-1 volumes): ``--dims 2`` is required and the
    crop is (1, H', W') with H', W' the configured sides shrunk to the images (multiples of 8).

    Raises:
        ConfigError: 2D images with ``--dims 3``.
    """
    if request.dims != 2:
        raise ConfigError(f"--data {request.data.data} holds 2D images; 3D pretraining needs volumes: use --dims 2")
    h, w = tuple(source.image_shape)[-2:]
    crop = tuple(request.data.crop)
    fit = (1, *(max(8, min(c, (n // 8) * 8)) for c, n in zip(crop[1:], (h, w))))
    notes = (f"2D images of {h} x {w}: crop {crop} -> {fit}",) if fit != crop else ()
    return 2, fit, notes  # type: ignore[return-value]


def resolve_data(request: DataRequest) -> ResolvedData:
    """The resolved data of the first registered kind that claims ``request``.

    Raises:
        ConfigError: no kind claims the request (cannot happen with the built-in kinds: CT
            volumes take any path).
    """
    kinds = sorted((DATA_KINDS.get(n)() for n in DATA_KINDS.names()), key=lambda k: (k.order, k.name))
    for kind in kinds:
        if kind.claims(request):
            return kind.resolve(request)
    raise ConfigError(f"no data kind reads --data {request.data.data}")


def with_crop(request: DataRequest, crop: tuple[int, ...]) -> DataRequest:
    """``request`` with another crop (kinds that fix it)."""
    return replace(request, data=replace(request.data, crop=tuple(int(c) for c in crop)))


__all__ = ["DATA_KINDS", "DataKind", "DataPlan", "DataRequest", "ResolvedData", "register_kind", "resolve_data",
           "preprocess_config", "cache_dir", "fit_2d_crop", "with_crop", "window_words"]
