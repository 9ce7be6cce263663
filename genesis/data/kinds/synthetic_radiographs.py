"""Synthetic chest radiographs (:mod:`genesis.data.synthetic.radiograph`) when no --data is given
and radiographs are asked for (``--modality xray``, or a method that needs radiograph metadata)."""

from __future__ import annotations

from genesis.data.kinds.base import DataKind, DataRequest, ResolvedData, register_kind
from genesis.data.kinds.radiographs import radiograph_plan


@register_kind("synthetic_radiographs")
class SyntheticRadiographs(DataKind):
    order = 20
    description = "no --data with --modality xray (or the metadata task): synthetic radiographs"

    def claims(self, request: DataRequest) -> bool:
        return request.data.data is None and request.data.modality != "ct" and (
            request.data.modality == "xray" or request.with_metadata)

    def resolve(self, request: DataRequest) -> ResolvedData:
        from genesis.data.radiographs import SyntheticRadiographSource

        plan = radiograph_plan(self, request, synthetic=True)
        size = int(request.data.image_size)
        source = SyntheticRadiographSource(max(request.data.synthetic_volumes, 2), request.seed, size,
                                           request.with_metadata)
        return ResolvedData(plan, source)
