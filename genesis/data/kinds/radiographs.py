"""Chest radiographs: a folder of PNG/JPEG/DICOM X-rays or a CSV with a ``Path`` column
(:mod:`genesis.data.radiographs`), as 2D images of depth 1 (2 with metadata)."""

from __future__ import annotations

from typing import Any

from genesis.data.kinds.base import DataKind, DataPlan, DataRequest, ResolvedData, register_kind


def radiograph_plan(kind: DataKind, request: DataRequest, synthetic: bool = False) -> DataPlan:
    """2D, uniform sampling (no CT lung rule), cubes of depth 1 (2 with metadata) of the whole
    image unless a smaller 2D crop was asked for."""
    size = int(request.data.image_size)
    d, h, w = (int(c) for c in request.data.crop)
    if request.with_metadata:
        crop = (2, size, size)
    elif d == 1 and h <= size and w <= size:
        crop = (1, h, w)  # a random 2D crop of the radiograph
    else:
        crop = (1, size, size)
    notes = () if request.dims == 2 else ("radiographs are 2D images: --dims 2",)
    return kind.plan(request, f"8/16-bit grey values -> [0, 1], resized to {size} x {size}", dims=2, crop=crop,
                     models_genesis_sampler=False, synthetic=synthetic, notes=notes)


@register_kind("radiographs")
class Radiographs(DataKind):
    order = 40
    description = "a folder or CSV of chest radiographs (--modality auto detects PNG/JPEG folders and image CSVs)"

    def claims(self, request: DataRequest) -> bool:
        from genesis.data.radiographs import is_radiograph_data

        modality = request.data.modality
        if request.data.data is None or modality == "ct":
            return False
        return modality == "xray" or request.with_metadata or is_radiograph_data(request.data.data)

    def resolve(self, request: DataRequest) -> ResolvedData:
        from genesis.data.radiographs import RadiographItem, RadiographSource, find_radiographs, read_radiograph_csv
        from genesis.errors import InputFileError

        path = request.path
        assert path is not None
        if not path.exists():
            raise InputFileError("data path does not exist", path)
        items: list[Any] = (read_radiograph_csv(path) if path.is_file() and path.suffix.lower() == ".csv" else
                            find_radiographs(path) if path.is_dir() else [RadiographItem(path)])
        source = RadiographSource(items, int(request.data.image_size), request.with_metadata,
                                  max_pixels=request.data.max_image_pixels)
        return ResolvedData(radiograph_plan(self, request), source)
