"""CT volumes: a folder of scans (NIfTI, MetaImage, NRRD, DICOM series, found by content), a
CSV/YAML manifest with a ``path`` column, or one scan file; windowed HU, cached as memory maps."""

from __future__ import annotations

from genesis.data.kinds.base import DataKind, DataRequest, ResolvedData, cache_dir, preprocess_config, register_kind, window_words


def ct_source(request: DataRequest, pre=None):
    """The volume source of a CT ``--data`` argument with ``pre`` (default: the data section's)."""
    from genesis.data.sources import volume_source_from_arg

    d = request.data
    pre = pre if pre is not None else preprocess_config(d)
    return volume_source_from_arg(d.data, pre, cache_dir(d), synthetic_n=d.synthetic_volumes, seed=request.seed,
                                  keep_labels=d.keep_labels, keep_non_hu=d.keep_non_hu, crop=tuple(d.crop))


@register_kind("ct_volumes")
class CTVolumes(DataKind):
    order = 90  # the fallback: any path not claimed by a more specific kind
    description = "a folder of CT scans, a CSV/YAML manifest with a path column, or one scan"

    def claims(self, request: DataRequest) -> bool:
        return request.data.data is not None

    def resolve(self, request: DataRequest) -> ResolvedData:
        pre = preprocess_config(request.data)
        source = ct_source(request, pre)
        words = window_words(pre.window) + (f", resampled to {tuple(pre.spacing)} mm" if pre.spacing else "")
        return ResolvedData(self.plan(request, words), source)
