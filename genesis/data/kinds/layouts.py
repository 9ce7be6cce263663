"""Labelled-dataset layouts used as unlabelled images: MSD / nnU-Net raw folders, MONAI
datalists, image-column CSVs and ``.h5``/``.npz`` arrays (:mod:`genesis.data.layouts`), 2D or 3D."""

from __future__ import annotations

from genesis.data.kinds.base import DataKind, DataRequest, ResolvedData, fit_2d_crop, preprocess_config, register_kind, window_words


@register_kind("layout")
class LabelledLayout(DataKind):
    order = 50
    description = "an MSD/nnU-Net raw folder, MONAI datalist, image CSV or .h5/.npz arrays file (labels ignored)"

    def claims(self, request: DataRequest) -> bool:
        from genesis.data.layouts import is_layout_argument

        return request.data.data is not None and is_layout_argument(request.data.data)

    def resolve(self, request: DataRequest) -> ResolvedData:
        from genesis.data.layouts import LayoutVolumeSource

        pre = preprocess_config(request.data)
        source = LayoutVolumeSource(request.data.data, pre, group_size=request.data.group_size)
        words = f"CT: {window_words(pre.window)}; other modalities: per-image percentiles; [0, 1] arrays as they are"
        if getattr(source, "spatial_dims", 3) == 2:
            dims, crop, notes = fit_2d_crop(request, source, self.name)
            rule = request.data.models_genesis_sampler
            if rule and tuple(crop[1:]) == tuple(source.image_shape)[-2:]:
                # one position per image: the rule could only reject whole images (and warn for each)
                rule = False
                notes += ("the Models Genesis cube rule does not apply to whole-image crops (one position per "
                          "image): cubes are the images",)
            return ResolvedData(self.plan(request, words, dims=dims, crop=crop, models_genesis_sampler=rule,
                                          notes=notes), source)
        return ResolvedData(self.plan(request, words), source)
