"""Vectorised drawing primitives on a physical-mm grid: capsules, blobs, correlated noise.

Everything is drawn as a soft *occupancy* in [0, 1] (fraction of the voxel covered, linear ramp
over one voxel at the boundary), which gives partial-volume edges and lets vessels thinner than
a voxel still show up faintly, as on a real scanner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


class Grid:
    """Voxel grid with centred mm coordinates; ``z`` grows cranially, ``y`` posteriorly, ``x`` to the left (LPS)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = np.asarray(spacing, dtype=np.float64)
        self.centre = (np.asarray(self.shape, dtype=np.float64) - 1.0) / 2.0
        nz, ny, nx = self.shape
        sz, sy, sx = self.spacing
        self.z = ((np.arange(nz) - self.centre[0]) * sz).astype(np.float32)[:, None, None]
        self.y = ((np.arange(ny) - self.centre[1]) * sy).astype(np.float32)[None, :, None]
        self.x = ((np.arange(nx) - self.centre[2]) * sx).astype(np.float32)[None, None, :]
        self.voxel_mm = float(np.prod(self.spacing) ** (1.0 / 3.0))

    def to_index(self, p_mm: np.ndarray) -> np.ndarray:
        """(z, y, x) mm -> fractional voxel index."""
        return np.asarray(p_mm, dtype=np.float64) / self.spacing + self.centre

    def to_mm(self, index: np.ndarray) -> np.ndarray:
        return (np.asarray(index, dtype=np.float64) - self.centre) * self.spacing

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices covering the mm box ``[lo, hi]`` (clipped); None if it misses the grid."""
        lo = np.floor(self.to_index(lo_mm)).astype(int)
        hi = np.ceil(self.to_index(hi_mm)).astype(int) + 1
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, self.shape)
        if np.any(hi <= lo):
            return None
        return tuple(slice(a, b) for a, b in zip(lo, hi))  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.z[sl[0]], self.y[:, sl[1]], self.x[:, :, sl[2]]

    def contains_sphere(self, p_mm: np.ndarray, radius_mm: float, margin_vox: float = 1.0) -> bool:
        """Whether a sphere lies inside the grid with ``margin_vox`` voxels to spare on every side."""
        idx = self.to_index(p_mm)
        reach = radius_mm / self.spacing + margin_vox
        return bool(np.all(idx - reach >= 0) and np.all(idx + reach <= np.asarray(self.shape) - 1))

    def inside(self, p_mm: np.ndarray, mask: np.ndarray) -> bool:
        """Whether the voxel nearest to ``p_mm`` lies in ``mask``."""
        idx = np.rint(self.to_index(p_mm)).astype(int)
        if np.any(idx < 0) or np.any(idx >= self.shape):
            return False
        return bool(mask[tuple(idx)])


@dataclass(eq=False)
class Segment:
    """A tapered tube from ``p0`` to ``p1`` (mm, z y x) with radii ``r0`` -> ``r1`` (mm)."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    depth: int = 0


def soft_edge(signed_mm: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Occupancy from a signed distance (positive inside): linear over one voxel."""
    return np.clip(signed_mm / voxel_mm + 0.5, 0.0, 1.0)


def draw_segment(grid: Grid, seg: Segment, out: np.ndarray, *, extra_mm: float = 0.0) -> None:
    """Max-composite the occupancy of a tapered capsule (radius + ``extra_mm``) into ``out``."""
    rmax = max(seg.r0, seg.r1) + extra_mm + grid.voxel_mm
    lo = np.minimum(seg.p0, seg.p1) - rmax
    hi = np.maximum(seg.p0, seg.p1) + rmax
    sl = grid.box(lo, hi)
    if sl is None:
        return
    z, y, x = grid.coords(sl)
    a = seg.p0
    ab = seg.p1 - seg.p0
    denom = float(ab @ ab) or 1e-9
    t = ((z - a[0]) * ab[0] + (y - a[1]) * ab[1] + (x - a[2]) * ab[2]) / denom
    np.clip(t, 0.0, 1.0, out=t)
    d2 = (z - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (x - a[2] - t * ab[2]) ** 2
    r = seg.r0 + t * (seg.r1 - seg.r0) + extra_mm
    # A tube thinner than a voxel is drawn one voxel wide with proportionally lower contrast,
    # which keeps its mass (what a scanner's partial-volume averaging would show).
    half = 0.5 * grid.voxel_mm
    occ = soft_edge(np.maximum(r, half) - np.sqrt(d2), grid.voxel_mm)
    if min(seg.r0, seg.r1) + extra_mm < half:
        occ *= np.minimum(1.0, (r / half) ** 2)
    np.maximum(out[sl], occ, out=out[sl])


def draw_blob(
    grid: Grid,
    centre_mm: np.ndarray,
    radius_mm: float,
    rng: np.random.Generator,
    *,
    lobulation: float = 0.1,
) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray] | None:
    """A lobulated sphere: returns (slices, occupancy, mask) in a local box, or None off-grid.

    The radius is modulated by a zero-mean quadratic form of the direction, so the centroid stays
    at ``centre_mm`` and the volume stays close to the sphere's.
    """
    reach = radius_mm * (1.0 + 2.0 * lobulation) + grid.voxel_mm
    sl = grid.box(centre_mm - reach, centre_mm + reach)
    if sl is None:
        return None
    z, y, x = grid.coords(sl)
    dz, dy, dx = z - centre_mm[0], y - centre_mm[1], x - centre_mm[2]
    d = np.sqrt(dz * dz + dy * dy + dx * dx) + 1e-6
    a = rng.normal(size=(3, 3))
    a = (a + a.T) / 2.0
    a -= np.eye(3) * np.trace(a) / 3.0
    a *= lobulation / max(np.abs(np.linalg.eigvalsh(a)).max(), 1e-6)
    u = (dz / d, dy / d, dx / d)
    quad = sum(a[i, j] * u[i] * u[j] for i in range(3) for j in range(3))
    r = radius_mm * (1.0 + quad)
    signed = r - d
    mask = signed >= 0
    if not mask.any():  # smaller than a voxel: keep the voxel nearest the centre
        nearest = np.unravel_index(int(np.argmin(d)), d.shape)
        mask[nearest] = True
    return sl, soft_edge(signed, grid.voxel_mm), mask


def correlated_noise(
    shape: tuple[int, ...], sd: float, sigma_vox: float, rng: np.random.Generator
) -> np.ndarray:
    """Gaussian noise with standard deviation ``sd``, smoothed over ``sigma_vox`` voxels."""
    white = rng.standard_normal(size=shape, dtype=np.float32)
    if sigma_vox <= 0:
        return white * np.float32(sd)
    smooth = ndimage.gaussian_filter(white, sigma_vox, truncate=3.0)
    # Rescale by the filter's exact gain (sum of squared weights) so the sd is as asked.
    impulse = np.zeros((int(8 * sigma_vox) + 3,) * len(shape), dtype=np.float64)
    impulse[tuple(s // 2 for s in impulse.shape)] = 1.0
    gain = np.sqrt((ndimage.gaussian_filter(impulse, sigma_vox, truncate=3.0) ** 2).sum())
    return smooth * np.float32(sd / gain)


def smooth_field(
    shape: tuple[int, int, int], rng: np.random.Generator, *, sigma_vox: float = 2.0, sd: float = 1.0
) -> np.ndarray:
    """Low-frequency texture: white noise smoothed over ``sigma_vox`` voxels, standard deviation ``sd``."""
    return correlated_noise(shape, sd, sigma_vox, rng)
