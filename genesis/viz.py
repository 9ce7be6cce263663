"""PNG pictures where a person would rather look than read: grids of slices, montages, curves.

Uses matplotlib's non-interactive Agg backend so it works on headless machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from genesis.fileio import atomic_path


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG atomically (a reader never sees half a picture), close it."""
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def middle_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal middle slices of a (z, y, x) array (coronal/sagittal flipped so head is up)."""
    vol = np.asarray(volume)
    z, y, x = (s // 2 for s in vol.shape)
    return [vol[z], vol[:, y, :][::-1], vol[:, :, x][::-1]]


def save_grid(
    rows: Sequence[Sequence[np.ndarray | None]],
    path: str | Path,
    *,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    title: str | None = None,
    vmin: float | Sequence[float | None] | None = 0.0,
    vmax: float | Sequence[float | None] | None = 1.0,
    cmap: str | Sequence[str] = "gray",
    cell_inches: float = 2.0,
    aspect: Sequence[float] | float | None = None,
) -> Path:
    """Write a grid of 2D images (None leaves a cell empty) as a PNG, atomically.

    ``vmin``/``vmax``/``cmap`` may be given per column.
    """
    plt = _pyplot()
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)

    def per_col(value, j):
        if isinstance(value, (list, tuple)):
            return value[j]
        return value

    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols, cell_inches * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            image = row[j] if j < len(row) else None
            if image is None:
                ax.axis("off")
            else:
                ax.imshow(
                    np.asarray(image, dtype=np.float32),
                    cmap=per_col(cmap, j),
                    vmin=per_col(vmin, j),
                    vmax=per_col(vmax, j),
                    aspect=per_col(aspect, j) if aspect is not None else "equal",
                    interpolation="nearest",
                )
            if i == 0 and col_titles is not None and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=9)
            if j == 0 and row_titles is not None and i < len(row_titles):
                ax.set_ylabel(row_titles[i], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def save_montage(
    volume_hu: np.ndarray,
    path: str | Path,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    window: tuple[float, float] = (-1000.0, 1000.0),
    overlays: dict[str, np.ndarray] | None = None,
    title: str | None = None,
) -> Path:
    """Axial / coronal / sagittal middle slices of a HU volume, optionally with mask outlines."""
    plt = _pyplot()
    slices = middle_slices(volume_hu)
    sz, sy, sx = spacing
    aspects = [sy / sx, sz / sx, sz / sy]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.5))
    names = ["axial", "coronal", "sagittal"]
    colours = ["red", "yellow", "cyan", "lime", "magenta", "orange"]
    overlay_slices = {k: middle_slices(v) for k, v in (overlays or {}).items()}
    for k, ax in enumerate(axes):
        ax.imshow(slices[k], cmap="gray", vmin=window[0], vmax=window[1], aspect=aspects[k], interpolation="nearest")
        for c, (name, sl) in enumerate(overlay_slices.items()):
            if sl[k].any():
                ax.contour(sl[k].astype(float), levels=[0.5], colors=colours[c % len(colours)], linewidths=0.8)
        ax.set_title(names[k])
        ax.axis("off")
    if overlay_slices:
        handles = [plt.Line2D([0], [0], color=colours[c % len(colours)]) for c in range(len(overlay_slices))]
        fig.legend(handles, list(overlay_slices), loc="lower center", ncol=len(overlay_slices), fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def save_curves(
    series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None, Sequence[float] | None]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
) -> Path:
    """Line plot of named series ``{name: (x, y, ci_low, ci_high)}`` with shaded confidence bands."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y, lo, hi) in series.items():
        ax.plot(x, y, marker="o", label=name)
        if lo is not None and hi is not None:
            ax.fill_between(x, lo, hi, alpha=0.2)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def save_points(
    groups: dict[str, tuple[Sequence[float], float | None, float | None, float | None]],
    path: str | Path,
    *,
    ylabel: str,
    title: str | None = None,
) -> Path:
    """One column per configuration: every run as a dot, the mean as a bar with its CI whiskers.

    ``groups`` maps a name to ``(run values, mean, ci_low, ci_high)``; a missing CI draws no whiskers.
    Used where a curve has a single x (one label fraction): the spread of the runs stays visible.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 2.2 * len(groups)), 4))
    rng = np.random.default_rng(0)  # fixed jitter: the same picture for the same numbers
    for k, (name, (values, mean, lo, hi)) in enumerate(groups.items()):
        vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
        if vals.size:
            ax.scatter(k + rng.uniform(-0.12, 0.12, vals.size), vals, s=18, alpha=0.7, label=f"{name}: runs")
        if mean is not None and np.isfinite(mean):
            err = None
            if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
                err = [[max(mean - lo, 0.0)], [max(hi - mean, 0.0)]]
            ax.errorbar([k + 0.3], [mean], yerr=err, fmt="D", color="black", capsize=6, markersize=5)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([n if len(n) <= 28 else n[:26] + "..." for n in groups], fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.3)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.text(0.01, 0.01, "dots: runs; diamond and whiskers: mean and 95% CI", transform=ax.transAxes,
            fontsize=7, alpha=0.7)
    return save_figure(fig, path)


#: Column titles of restoration pictures for tasks whose input and target are not "the same image".
_GRID_COLUMNS = {
    "next_slice": ("slice", "predicted next", "true next"),
    "masked_region": ("masked input", "restoration", "original"),
    "masked_curriculum": ("masked input", "restoration", "original"),
    "inpainting": ("masked input", "restoration", "original"),
    "denoise_sp": ("noisy input", "restoration", "original"),
    "denoise_gaussian": ("noisy input", "restoration", "original"),
}


def restoration_columns(task: object, name: str | None = None) -> tuple[str, str, str]:
    """(input, output, target) column titles for a task: its ``grid_columns`` attribute when it has
    one, else by name (next slice: "slice / predicted next / true next"), else the Models Genesis
    wording ("transformed input / restoration / target")."""
    cols = getattr(task, "grid_columns", None)
    if cols and len(cols) == 3:
        return tuple(str(c) for c in cols)  # type: ignore[return-value]
    return _GRID_COLUMNS.get(name or "", ("transformed input", "restoration", "target"))
