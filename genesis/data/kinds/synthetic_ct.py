"""The default data: seeded synthetic chest CT (:mod:`genesis.data.synthetic`), marked synthetic."""

from __future__ import annotations

from dataclasses import replace

from genesis.data.kinds.base import DataKind, DataRequest, ResolvedData, cache_dir, preprocess_config, register_kind, window_words


@register_kind("synthetic_ct")
class SyntheticCT(DataKind):
    order = 30
    description = "no --data: seeded synthetic chest CT volumes (outputs are marked synthetic)"

    def claims(self, request: DataRequest) -> bool:
        return request.data.data is None

    def resolve(self, request: DataRequest) -> ResolvedData:
        from genesis.data.sources import SyntheticVolumeSource

        d = request.data
        synthetic_cfg = None
        if d.synthetic_shape is not None:
            from genesis.data.synthetic.config import SyntheticConfig

            base = SyntheticConfig()
            # keep the whole chest in view: a smaller grid gets proportionally coarser voxels
            spacing = tuple(s * b / n for s, b, n in zip(base.spacing, base.shape, d.synthetic_shape))
            synthetic_cfg = replace(base, shape=tuple(d.synthetic_shape), spacing=spacing)
        pre = preprocess_config(d)
        source = SyntheticVolumeSource(d.synthetic_volumes, request.seed, pre, synthetic_cfg, cache_dir(d))
        return ResolvedData(self.plan(request, window_words(pre.window), synthetic=True), source)
