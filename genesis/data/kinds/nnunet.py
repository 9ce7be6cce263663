"""nnU-Net data with ``--plans``: its preprocessed folder, or raw images normalised as the plans
say (:mod:`genesis.nnunet.data`): for CT the HU window of the foreground percentiles 0.5/99.5,
the configuration's spacing and nnU-Net's axis order."""

from __future__ import annotations

from genesis.data.kinds.base import DataKind, DataRequest, ResolvedData, preprocess_config, register_kind, window_words


@register_kind("nnunet_preprocessed")
class NNUNetPreprocessed(DataKind):
    order = 10
    description = "--plans with an nnU-Net preprocessed folder: the cases nnU-Net itself trains on"

    def claims(self, request: DataRequest) -> bool:
        from genesis.nnunet.data import is_preprocessed_folder

        return bool(request.plans) and is_preprocessed_folder(request.data.data)

    def resolve(self, request: DataRequest) -> ResolvedData:
        from genesis.nnunet.data import preprocessed_source

        source = preprocessed_source(request.data.data, request.plans, request.configuration)
        m = source.map
        words = f"nnU-Net {m.scheme} as preprocessed, [{m.low:.4g}, {m.high:.4g}] -> [0, 1]"
        return ResolvedData(self.plan(request, words), source)


@register_kind("nnunet_raw")
class NNUNetRaw(DataKind):
    order = 15
    description = "--plans with raw images (nnU-Net raw dataset, scan folder, manifest or synthetic CT)"

    def claims(self, request: DataRequest) -> bool:
        return bool(request.plans)

    def resolve(self, request: DataRequest) -> ResolvedData:
        from dataclasses import replace

        from genesis.data.kinds.ct_volumes import ct_source
        from genesis.nnunet import data as nnunet_data

        d = request.data
        pre = nnunet_data.plans_preprocess_config(preprocess_config(d), request.plans, request.configuration,
                                                  keep_spacing=d.spacing is not None)
        if d.data is None:  # synthetic CT, normalised like the plans' dataset
            from genesis.data.kinds.synthetic_ct import SyntheticCT

            synthetic = SyntheticCT().resolve(replace(request, data=replace(d, window=tuple(pre.window),
                                                                             spacing=pre.spacing)))
            source, is_synthetic = synthetic.source, True
        else:
            source, is_synthetic = ct_source(request, pre), False
        words = f"nnU-Net CTNormalization as {window_words(pre.window)}" + (
            f", spacing {tuple(pre.spacing)} mm" if pre.spacing else "")
        return ResolvedData(self.plan(request, words, synthetic=is_synthetic),
                            nnunet_data.transposed(source, request.plans))
