"""Procedural chest CT phantom with labelled nodules, false-positive candidates and emboli.

The phantom is built in physical millimetres (centred grid, z cranial, y posterior, x to the
patient's left, i.e. LPS) so any ``shape``/``spacing`` gives the same anatomy. Layers are painted
back to front as soft occupancies (partial-volume edges): body fat and muscle, the thoracic
cavity, abdomen below the diaphragm domes, lungs with texture and a gravity gradient, heart and
great vessels, airways, branching pulmonary arteries and veins, bones (ribs, spine, sternum), then
the findings; finally a partial-volume blur and spatially correlated noise. HU values follow
methods.md section 9. Everything random comes from generators seeded by ``(seed, component)``,
so changing the number of nodules does not move the anatomy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from genesis.data.synthetic.config import (
    SYNTHETIC_DESCRIPTION,
    Finding,
    SyntheticConfig,
    SyntheticCT,
    draw_count,
)
from genesis.data.synthetic.shapes import (
    Grid,
    Segment,
    correlated_noise,
    draw_blob,
    draw_segment,
    smooth_field,
    soft_edge,
)
from genesis.data.synthetic.vessels import grow_tree
from genesis.errors import ConfigError
from genesis.rng import numpy_generator

MASK_NAMES = (
    "body",
    "lungs",
    "bones",
    "heart",
    "vessels",
    "pulmonary_arteries",
    "airways",
    "nodules",
    "emboli",
    "candidates",
)

# Random streams, one per component (see module docstring).
_ANATOMY, _TREES, _FINDINGS, _NOISE = 0, 1, 2, 3


def resolve_config(config: SyntheticConfig | dict | None, overrides: dict) -> SyntheticConfig:
    """``config`` (a SyntheticConfig, a plain dict e.g. from YAML, or None for the defaults) with
    keyword overrides; unknown names or invalid sizes raise ConfigError."""
    names = {f.name for f in dataclasses.fields(SyntheticConfig)}
    if isinstance(config, dict):
        overrides = {**config, **overrides}
        config = None
    elif config is not None and not isinstance(config, SyntheticConfig):
        raise ConfigError(f"synthetic CT config must be a SyntheticConfig or a dict, got {type(config).__name__}")
    cfg = config or SyntheticConfig()
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown synthetic CT option(s) {unknown}; known: {sorted(names)}")
    cfg = dataclasses.replace(cfg, **overrides)
    cfg.shape = tuple(int(v) for v in cfg.shape)  # YAML gives lists
    cfg.spacing = tuple(float(v) for v in cfg.spacing)
    if len(cfg.shape) != 3 or min(cfg.shape) < 4:
        raise ConfigError(f"synthetic CT shape must be 3 sizes >= 4, got {cfg.shape}")
    if len(cfg.spacing) != 3 or min(cfg.spacing) <= 0:
        raise ConfigError(f"synthetic CT spacing must be 3 positive sizes in mm, got {cfg.spacing}")
    lo, hi = cfg.nodule_diameter_mm
    if not 0 < lo <= hi:
        raise ConfigError(f"nodule_diameter_mm must be 0 < low <= high, got {cfg.nodule_diameter_mm}")
    return cfg


def _blend(hu: np.ndarray, value, occ: np.ndarray) -> None:
    """In place: ``hu = hu * (1 - occ) + value * occ``."""
    hu += occ * (value - hu)


def _superellipse_sd(X, Y, ax, ay_ant, ay_post, p: float) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to a superellipse, front/back half-axes."""
    ay = np.where(Y < 0, ay_ant, ay_post)
    rho = ((np.abs(X) / ax) ** p + (np.abs(Y) / ay) ** p) ** (1.0 / p)
    radius = np.sqrt(X * X + Y * Y)
    return (1.0 - rho) * radius / np.maximum(rho, 1e-3)


def _ellipsoid_sd(grid: Grid, centre, axes) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) to an axis-aligned ellipsoid."""
    q = np.sqrt(
        ((grid.z - centre[0]) / axes[0]) ** 2
        + ((grid.y - centre[1]) / axes[1]) ** 2
        + ((grid.x - centre[2]) / axes[2]) ** 2
    )
    return (1.0 - q) * float(min(axes))


@dataclass
class _Body:
    """Per-case body dimensions (mm)."""

    sx: float  # in-plane scale factors of the organ layout
    sy: float
    ax: float
    ay_ant: float
    ay_post: float
    fat: float
    muscle: float
    rib: float
    dome_right: float
    dome_left: float
    apex: float
    carina: float


def _draw_body(rng: np.random.Generator, cfg: SyntheticConfig) -> _Body:
    s = rng.uniform(*cfg.body_scale)
    ax = 150.0 * s * rng.uniform(0.95, 1.05)
    ay_ant = 95.0 * s * rng.uniform(0.93, 1.05)
    ay_post = 100.0 * s * rng.uniform(0.95, 1.05)
    dome_right = -45.0 + rng.uniform(-10, 10)
    return _Body(
        sx=ax / 150.0,
        sy=(ay_ant + ay_post) / 195.0,
        ax=ax,
        ay_ant=ay_ant,
        ay_post=ay_post,
        fat=rng.uniform(6.0, 16.0) * s,
        muscle=rng.uniform(7.0, 11.0),
        rib=10.0,
        dome_right=dome_right,
        dome_left=dome_right - rng.uniform(5.0, 15.0),
        apex=100.0 + rng.uniform(-8, 8),
        carina=35.0 + rng.uniform(-5, 5),
    )


def _polyline(points, radii, depth: int = 0) -> list[Segment]:
    pts = [np.asarray(p, dtype=float) for p in points]
    return [Segment(a, b, ra, rb, depth) for a, b, ra, rb in zip(pts[:-1], pts[1:], radii[:-1], radii[1:])]


def generate_chest_ct(seed: int, config: SyntheticConfig | None = None, **overrides) -> SyntheticCT:
    """Generate one synthetic chest CT (HU) with masks and labelled findings.

    Args:
        seed: integer seed; the same seed and config give an identical volume.
        config: :class:`SyntheticConfig` (defaults when None).
        **overrides: field overrides of the config, e.g. ``contrast=True, shape=(48, 96, 96)``.

    Returns:
        :class:`SyntheticCT` with ``volume`` (``genesis.io.Volume``, HU float32, metadata marked
        synthetic), ``masks`` (uint8, names in :data:`MASK_NAMES`) and ``findings``.

    Raises:
        ConfigError: unknown override or invalid sizes.
    """
    from genesis.io import Volume

    cfg = resolve_config(config, overrides)
    grid = Grid(cfg.shape, cfg.spacing)
    rng = numpy_generator(seed, _ANATOMY)
    b = _draw_body(rng, cfg)
    Z, Y, X = grid.z, grid.y, grid.x
    vox = grid.voxel_mm

    # --- body wall: fat, muscle; the cavity inside the rib zone -----------------------------
    # In-plane outlines are computed once on (y, x) and broadcast along z (cheap); the apices
    # and diaphragm domes give the cranio-caudal shape.
    sd_body = _superellipse_sd(X, Y, b.ax, b.ay_ant, b.ay_post, 2.4)
    wall = b.fat + b.muscle + b.rib
    sd_cav = _superellipse_sd(X, Y, b.ax - wall, b.ay_ant - wall, b.ay_post - wall - 8.0, 2.2)
    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    body_occ = soft_edge(sd_body, vox)
    _blend(hu, -100.0, body_occ)
    _blend(hu, 45.0, soft_edge(sd_body - b.fat, vox))
    cavity_occ = soft_edge(sd_cav, vox)
    _blend(hu, -75.0, cavity_occ)  # mediastinal fat by default

    # --- abdomen under the diaphragm domes ------------------------------------------------
    side_x = np.where(X < 0, -0.5, 0.5) * (b.ax - wall)
    dome = np.where(X < 0, b.dome_right, b.dome_left).astype(np.float32)
    diaphragm = dome - ((X - side_x) ** 2 + (Y + 10.0) ** 2) / (2.0 * 60.0 * b.sx)
    below = soft_edge(diaphragm - Z - 3.0, vox) * cavity_occ
    liver_x = 15.0 * b.sx - 0.4 * (Y + 30.0)  # liver extends across the midline anteriorly
    _blend(hu, np.where(X < liver_x, 58.0, 38.0).astype(np.float32), below)
    stomach_c = (b.dome_left - 25.0, -35.0 * b.sy, 55.0 * b.sx)
    gas = soft_edge(_ellipsoid_sd(grid, stomach_c, (12.0, 25.0, 25.0)), vox) * (Z > stomach_c[0]) * below
    _blend(hu, -1000.0, gas)

    # --- mediastinum, heart, lungs ------------------------------------------------------
    heart_c = (-35.0 + 0.5 * (b.dome_left + 45.0), -28.0 * b.sy, 18.0 * b.sx)
    heart_ax = (48.0, 45.0 * b.sy, 58.0 * b.sx)
    sd_heart = _ellipsoid_sd(grid, heart_c, heart_ax)
    spine_y = b.ay_post - wall - 32.0  # vertebral body centre; the lungs wrap behind it
    med_half = 4.0 + 14.0 * b.sx / (1.0 + np.exp(-(Y + 45.0 * b.sy) / 8.0))
    sd_med = np.abs(X) - med_half  # positive outside the central mediastinum
    sd_spine = np.sqrt((X / 1.4) ** 2 + np.maximum(spine_y - 18.0 - Y, 0.0) ** 2) - 22.0
    apex = b.apex - ((X - side_x) ** 2 + Y**2) / (2.0 * 32.0 * b.sx)
    sd_lung = np.minimum(sd_cav - 2.0, Z - diaphragm)
    sd_lung = np.minimum(sd_lung, apex - Z)
    sd_lung = np.minimum(sd_lung, sd_med)
    sd_lung = np.minimum(sd_lung, sd_spine)
    sd_lung = np.minimum(sd_lung, -(sd_heart + 2.0))

    aorta = _polyline(
        [
            (heart_c[0] + 25.0, -15.0 * b.sy, -5.0 * b.sx),
            (55.0, -15.0 * b.sy, 0.0),
            (72.0, -2.0 * b.sy, 24.0 * b.sx),
            (60.0, spine_y - 12.0, 24.0 * b.sx),
            (-150.0, spine_y - 8.0, 18.0 * b.sx),
        ],
        [13.0, 13.0, 12.0, 11.0, 10.0],
    )
    hilum_r = np.array([12.0, -4.0 * b.sy, -44.0 * b.sx])
    hilum_l = np.array([14.0, 6.0 * b.sy, 46.0 * b.sx])
    bif = np.array([20.0, -25.0 * b.sy, 12.0 * b.sx])
    pa_central = _polyline([(heart_c[0] + 15.0, -48.0 * b.sy, 15.0 * b.sx), bif], [13.0, 12.0])
    pa_central += _polyline([bif, (18.0, -8.0 * b.sy, -15.0 * b.sx), hilum_r], [10.0, 9.5, 8.0])
    pa_central += _polyline([bif, (22.0, -5.0 * b.sy, 35.0 * b.sx), hilum_l], [10.0, 9.5, 8.0])
    svc = _polyline([(130.0, -15.0 * b.sy, -30.0 * b.sx), (heart_c[0] + 30.0, -20.0 * b.sy, -28.0 * b.sx)], [9.0, 9.0])
    central = np.zeros(grid.shape, dtype=np.float32)
    for seg in aorta + pa_central + svc:
        draw_segment(grid, seg, central, extra_mm=2.0)
    sd_lung = np.minimum(sd_lung, (0.5 - central) * 2.0 * vox)
    lung_occ = soft_edge(sd_lung, vox) * cavity_occ
    lung_mask = lung_occ >= 0.5

    lung_hu = -940.0 + 30.0 * (Y / 100.0)  # gravity: dependent (posterior) lung is denser
    _blend(hu, lung_hu, lung_occ)

    if cfg.contrast:
        pa_hu = float(rng.uniform(250.0, 380.0))
        systemic_hu = float(rng.uniform(130.0, 190.0))
        vein_hu = float(rng.uniform(110.0, 160.0))
        svc_hu = float(rng.uniform(400.0, 700.0))
    else:
        pa_hu = systemic_hu = vein_hu = svc_hu = float(rng.uniform(35.0, 45.0))

    heart_occ = soft_edge(sd_heart, vox)
    _blend(hu, 45.0, heart_occ)  # myocardium
    chambers = soft_edge(sd_heart - 9.0, vox)
    septum = (X - heart_c[2]) + 0.6 * (Y - heart_c[1])  # oblique septum: right heart anterior-right
    _blend(hu, np.where(septum < 0, pa_hu, systemic_hu).astype(np.float32), chambers)

    # --- great vessels and airways in the mediastinum -------------------------------------
    pa_occ = np.zeros(grid.shape, dtype=np.float32)
    for seg in pa_central:
        draw_segment(grid, seg, pa_occ)
    systemic = np.zeros(grid.shape, dtype=np.float32)
    for seg in aorta:
        draw_segment(grid, seg, systemic)
    svc_occ = np.zeros(grid.shape, dtype=np.float32)
    for seg in svc:
        draw_segment(grid, seg, svc_occ)

    trng = numpy_generator(seed, _TREES)
    min_r = max(0.4, 0.25 * vox)
    trachea_y = spine_y - 30.0
    carina = np.array([b.carina, trachea_y + 4.0, 0.0])
    bronchus_r = np.array([b.carina - 20.0, 4.0 * b.sy, -36.0 * b.sx])
    bronchus_l = np.array([b.carina - 28.0, 10.0 * b.sy, 38.0 * b.sx])
    airway_segs = _polyline([(150.0, trachea_y, 0.0), carina], [9.0, 8.5])
    airway_segs += _polyline([carina, bronchus_r], [6.5, 5.5]) + _polyline([carina, bronchus_l], [6.0, 5.0])
    lobes = [  # (direction z, y, x) per lobe, mirrored for the side
        (0.8, -0.1, 0.5),
        (-0.1, -0.6, 0.7),
        (-0.8, 0.35, 0.35),
        (-0.5, 0.7, 0.4),
    ]

    def roots(point, radius, jitter):
        sign = 1.0 if point[2] > 0 else -1.0
        return [
            (point, np.array([d[0], d[1], sign * d[2]]) + trng.normal(0, jitter, 3), radius)
            for d in lobes
        ]

    budget = cfg.vessel_segments
    airway_segs += grow_tree(
        grid, lung_mask, roots(bronchus_r, 4.5, 0.1) + roots(bronchus_l, 4.2, 0.1), trng,
        min_radius=max(1.2, 0.5 * vox), max_segments=budget // 4,
    )
    pa_tree = grow_tree(
        grid, lung_mask, roots(hilum_r, 5.5, 0.15) + roots(hilum_l, 5.5, 0.15), trng,
        min_radius=min_r, max_segments=budget,
    )
    vein_roots = [np.array([heart_c[0] + 15.0, 8.0 * b.sy, side * 38.0 * b.sx]) for side in (-1.0, 1.0)]
    vein_tree = grow_tree(
        grid, lung_mask, roots(vein_roots[0], 5.0, 0.25) + roots(vein_roots[1], 5.0, 0.25), trng,
        min_radius=min_r, max_segments=budget,
    )
    for seg in pa_tree:
        draw_segment(grid, seg, pa_occ)
    vein_occ = np.zeros(grid.shape, dtype=np.float32)
    for seg in vein_tree:
        draw_segment(grid, seg, vein_occ)
    wall_occ = np.zeros(grid.shape, dtype=np.float32)
    lumen_occ = np.zeros(grid.shape, dtype=np.float32)
    for seg in airway_segs:
        draw_segment(grid, seg, wall_occ, extra_mm=0.4 + 0.12 * seg.r0)
        draw_segment(grid, seg, lumen_occ)

    _blend(hu, vein_hu, vein_occ)
    _blend(hu, pa_hu, pa_occ)
    _blend(hu, systemic_hu, systemic)
    _blend(hu, svc_hu, svc_occ)
    # Airways last: where a vessel and an airway were drawn through each other, the airway wins
    # and the vessel masks are cut accordingly.
    _blend(hu, 30.0, wall_occ)
    _blend(hu, -1000.0, lumen_occ)
    for occ in (vein_occ, pa_occ, systemic, svc_occ):
        np.minimum(occ, 1.0 - wall_occ, out=occ)

    # --- bones ----------------------------------------------------------------------------
    bone_occ = np.zeros(grid.shape, dtype=np.float32)
    # Ribs: bands in the rib zone outside the cavity, periodic along z and sloping down anteriorly.
    period = 27.0 + rng.uniform(-2, 2)
    phase = (Z - 0.75 * Y - rng.uniform(0, period)) / period
    dz = (phase - np.round(phase)) * period
    u = -sd_cav - 0.5 * b.rib
    q = np.sqrt((u / (0.38 * b.rib)) ** 2 + (dz / 6.0) ** 2)
    rib_zone = (Z > -110.0) & (Z < b.apex + 10.0) & ~((np.abs(X) < 22.0 * b.sx) & ((Y < 0) | (Y > spine_y)))
    rib_occ = soft_edge((1.0 - q) * 4.0, vox) * rib_zone
    cartilage = Y < -0.55 * b.ay_ant
    rib_hu = np.where(cartilage, 120.0, np.where(q > 0.62, 850.0, 280.0)).astype(np.float32)
    _blend(hu, rib_hu, rib_occ)
    bone_occ = np.maximum(bone_occ, rib_occ * ~cartilage)

    # Spine: vertebral bodies with cortex, discs, canal, neural arch, spinous/transverse processes.
    v_period = 27.0
    v_phase = ((Z - rng.uniform(0, v_period)) / v_period) % 1.0
    is_disc = v_phase * v_period < 5.0
    vb_sd = _superellipse_sd(X, Y - spine_y, 20.0, 15.0, 15.0, 2.0)
    vb_occ = soft_edge(vb_sd, vox)
    canal_y = spine_y + 15.0 + 11.0
    rc = np.sqrt(X**2 + (Y - canal_y) ** 2)
    arch = ((rc > 9.0) & (rc < 14.0) & (Y > canal_y - 9.0)) | (
        (np.abs(X) < 4.0) & (Y > canal_y) & (Y < canal_y + 38.0)
    ) | ((np.abs(Y - canal_y + 4.0) < 3.0) & (np.abs(X) < 30.0) & (rc > 9.0))
    # Posterior elements slope caudally with distance behind the canal (spinous processes).
    arch_phase = ((v_phase + np.maximum(Y - canal_y, 0.0) * 0.6 / v_period) % 1.0) * v_period
    arch = arch & (arch_phase > 5.0) & (arch_phase < 24.0) & (sd_body > b.fat + 4.0)
    _blend(hu, np.where(is_disc, 80.0, np.where(vb_sd < 2.0, 800.0, 250.0)).astype(np.float32), vb_occ)
    _blend(hu, 600.0, arch.astype(np.float32))
    _blend(hu, 15.0, soft_edge(9.0 - rc, vox))
    bone_occ = np.maximum(bone_occ, vb_occ * ~is_disc)
    bone_occ = np.maximum(bone_occ, arch.astype(np.float32))

    # Sternum (manubrium wider at the top).
    st_y = -(b.ay_ant - b.fat - b.muscle - 0.5 * b.rib)
    st_half_x = np.where(Z > 60.0, 24.0, 15.0).astype(np.float32)
    st_sd = _superellipse_sd(X, Y - st_y, st_half_x, 6.0, 6.0, 2.0)
    st_occ = soft_edge(st_sd, vox) * ((Z > -55.0) & (Z < 95.0))
    _blend(hu, np.where(st_sd < 1.5, 700.0, 260.0).astype(np.float32), st_occ)
    bone_occ = np.maximum(bone_occ, st_occ)

    # Sub-resolution peripheral vessels: short random streaks of a few voxels (blurred below).
    lung_idx = np.argwhere(lung_mask)
    if len(lung_idx):
        n_dots = int(0.004 * len(lung_idx))
        dots = lung_idx[trng.integers(len(lung_idx), size=n_dots)]
        axis = trng.integers(3, size=n_dots)
        value = trng.uniform(150.0, 450.0, size=n_dots).astype(np.float32)
        for step in (0, 1, -1):
            pts = dots.copy()
            pts[np.arange(n_dots), axis] += step
            pts = np.clip(pts, 0, np.asarray(grid.shape) - 1)
            keep = lung_mask[tuple(pts.T)]
            hu[tuple(pts[keep].T)] += value[keep] * (1.0 if step == 0 else 0.6)

    # --- findings -------------------------------------------------------------------------
    frng = numpy_generator(seed, _FINDINGS)
    findings: list[Finding] = []
    nodule_mask = np.zeros(grid.shape, dtype=np.uint8)
    candidate_mask = np.zeros(grid.shape, dtype=np.uint8)
    emboli_mask = np.zeros(grid.shape, dtype=np.uint8)
    pa_mask = pa_occ >= 0.5

    subtypes = list(cfg.nodule_subtypes)
    weights = np.asarray([cfg.nodule_subtypes[k] for k in subtypes], dtype=float)
    weights /= weights.sum()
    n_nodules = draw_count(cfg.n_nodules, frng) if len(lung_idx) else 0
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(n_nodules):
        lo, hi = cfg.nodule_diameter_mm
        diameter = float(np.exp(frng.uniform(np.log(lo), np.log(hi))))
        radius = diameter / 2.0
        centre = _place_in_lung(grid, lung_mask, lung_idx, radius, placed, frng)
        if centre is None:
            continue
        placed.append((centre, radius))
        subtype = str(frng.choice(subtypes, p=weights))
        drawn = draw_blob(grid, centre, radius, frng, lobulation=0.08 if subtype == "solid" else 0.05)
        if drawn is None:
            continue
        sl, occ, mask = drawn
        local = hu[sl]
        if subtype == "solid":
            _blend(local, float(frng.uniform(10.0, 50.0)), occ)
        else:
            ggo = float(frng.uniform(-650.0, -450.0))
            # Ground glass leaves vessels visible: it only raises the attenuation.
            np.maximum(local, local + occ * (ggo - local), out=local)
            if subtype == "part_solid":
                core = draw_blob(grid, centre, radius * frng.uniform(0.35, 0.55), frng, lobulation=0.1)
                if core is not None:
                    csl, cocc, _ = core
                    _blend(hu[csl], float(frng.uniform(0.0, 40.0)), cocc)
        nodule_mask[sl] |= mask.astype(np.uint8)
        findings.append(Finding("nodule", subtype, _as_tuple(grid.to_index(centre)), round(diameter, 3), 1))

    all_vessels = [s for s in pa_tree + vein_tree if 0.8 <= s.r0 <= 3.0]
    n_candidates = draw_count(cfg.n_candidates, frng)
    for _ in range(n_candidates):
        if all_vessels and frng.random() < 0.6:
            seg = all_vessels[int(frng.integers(len(all_vessels)))]
            t = frng.uniform(0.2, 0.8)
            centre = seg.p0 + t * (seg.p1 - seg.p0)
            radius = (seg.r0 + t * (seg.r1 - seg.r0)) * frng.uniform(1.4, 2.0)
            drawn = draw_blob(grid, centre, radius, frng, lobulation=0.15)
            if drawn is None:
                continue
            sl, occ, mask = drawn
            value = pa_hu if any(seg is s for s in pa_tree) else vein_hu
            _blend(hu[sl], value, occ)
            candidate_mask[sl] |= mask.astype(np.uint8)
            centre_idx = _as_tuple(grid.to_index(centre))
            findings.append(Finding("candidate", "vessel_crossing", centre_idx, round(2 * radius, 3), 0))
        elif len(lung_idx):
            centre = grid.to_mm(lung_idx[int(frng.integers(len(lung_idx)))])
            direction = frng.normal(size=3)
            direction /= np.linalg.norm(direction)
            length = frng.uniform(6.0, 14.0)
            seg = Segment(centre - direction * length / 2, centre + direction * length / 2, 1.2, 1.0)
            occ = np.zeros(grid.shape, dtype=np.float32)
            draw_segment(grid, seg, occ)
            _blend(hu, float(frng.uniform(-100.0, 20.0)), occ)
            candidate_mask |= (occ >= 0.5).astype(np.uint8)
            findings.append(Finding("candidate", "scar", _as_tuple(grid.to_index(centre)), round(length, 3), 0))

    if cfg.contrast:
        big = [s for s in pa_central + pa_tree if min(s.r0, s.r1) >= max(2.5, 1.2 * vox)]  # >= ~2 voxels wide
        for _ in range(draw_count(cfg.n_emboli, frng) if big else 0):
            found = _draw_embolus(grid, big, pa_occ, pa_mask, hu, frng)
            if found is None:
                continue
            mask, sl = found
            emboli_mask[sl] |= mask
            idx = np.argwhere(mask) + np.array([s.start for s in sl])
            volume_mm3 = mask.sum() * float(np.prod(grid.spacing))
            diameter = float((6.0 * volume_mm3 / np.pi) ** (1 / 3))  # sphere of equal volume
            findings.append(Finding("embolus", "filling_defect", _as_tuple(idx.mean(axis=0)), round(diameter, 3), 1))

    # --- scanner: partial-volume blur and correlated noise ---------------------------------
    if cfg.blur_vox > 0:
        hu = ndimage.gaussian_filter(hu, cfg.blur_vox, truncate=3.0)
    nrng = numpy_generator(seed, _NOISE)
    # Parenchymal texture: smooth random field over ~8 mm, only inside the lungs.
    hu += lung_occ * smooth_field(grid.shape, nrng, sigma_vox=max(1.0, 4.0 / vox), sd=15.0)
    if cfg.noise_hu > 0:
        hu += correlated_noise(grid.shape, cfg.noise_hu, cfg.noise_correlation_vox, nrng)
    np.clip(hu, -1024.0, 3071.0, out=hu)

    masks = {
        "body": body_occ >= 0.5,
        "lungs": lung_mask,
        "bones": bone_occ >= 0.5,
        "heart": heart_occ >= 0.5,
        "vessels": (pa_occ >= 0.5) | (vein_occ >= 0.5) | (systemic >= 0.5) | (svc_occ >= 0.5),
        "pulmonary_arteries": pa_mask,
        "airways": lumen_occ >= 0.5,
        "nodules": nodule_mask,
        "emboli": emboli_mask,
        "candidates": candidate_mask,
    }
    masks = {k: np.ascontiguousarray(np.broadcast_to(v, grid.shape), dtype=np.uint8) for k, v in masks.items()}
    spacing = tuple(float(s) for s in cfg.spacing)
    nz, ny, nx = grid.shape
    origin = tuple(float(-grid.centre[k] * spacing[k]) for k in (2, 1, 0))  # (x, y, z) of voxel 0
    volume = Volume(
        array=hu.astype(np.float32, copy=False),
        spacing=spacing,
        origin=origin,
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        path=None,
        modality="CT",
        metadata={
            "synthetic": True,
            "description": SYNTHETIC_DESCRIPTION,
            "seed": int(seed),
            "contrast": bool(cfg.contrast),
            "generator": "genesis.data.synthetic.generate_chest_ct",
        },
    )
    return SyntheticCT(volume=volume, masks=masks, findings=findings)


def _as_tuple(v) -> tuple[float, float, float]:
    return tuple(round(float(a), 3) for a in v)  # type: ignore[return-value]


def _place_in_lung(grid, lung_mask, lung_idx, radius, placed, rng, tries: int = 60):
    """A centre (mm) whose sphere of ``radius`` lies in the lung (mostly) and clears other nodules."""
    dirs = np.array([d for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)], dtype=float) - 1.0
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    juxtapleural = rng.random() < 0.15
    fallback = edge_fallback = None
    for _ in range(tries):
        centre = grid.to_mm(lung_idx[int(rng.integers(len(lung_idx)))] + rng.uniform(-0.5, 0.5, 3))
        if any(np.linalg.norm(centre - c) < radius + r + 3.0 for c, r in placed):
            continue
        # A nodule cut by the edge of a small field of view would teach a segmentation target
        # half-spheres: prefer places where it is whole; cut ones only when nothing else fits.
        if not grid.contains_sphere(centre, radius):
            edge_fallback = edge_fallback if edge_fallback is not None else centre
            continue
        fallback = fallback if fallback is not None else centre
        if juxtapleural:
            return centre
        if all(grid.inside(centre + d * radius, lung_mask) for d in dirs):
            return centre
    return fallback if fallback is not None else edge_fallback


def _draw_embolus(grid, segments, pa_occ, pa_mask, hu, rng):
    """A filling defect (20-60 HU) inside a pulmonary artery; returns (local mask, slices)."""
    for _ in range(10):
        seg = segments[int(rng.integers(len(segments)))]
        t = rng.uniform(0.2, 0.8)
        axis = seg.p1 - seg.p0
        length = float(np.linalg.norm(axis))
        if length < 1e-6:
            continue
        axis = axis / length
        r_v = seg.r0 + t * (seg.r1 - seg.r0)
        centre = seg.p0 + t * (seg.p1 - seg.p0)
        half = min(r_v * rng.uniform(1.0, 2.5), 0.45 * length)
        offset = np.cross(axis, rng.normal(size=3))
        offset = offset / (np.linalg.norm(offset) + 1e-9) * r_v * rng.uniform(0.0, 0.3)
        r0, r1 = r_v * rng.uniform(0.55, 0.9), r_v * rng.uniform(0.5, 0.9)
        emb = Segment(centre + offset - axis * half, centre + offset + axis * half, r0, r1)
        occ = np.zeros(grid.shape, dtype=np.float32)
        draw_segment(grid, emb, occ)
        reach = r_v + 2 * grid.voxel_mm
        sl = grid.box(np.minimum(emb.p0, emb.p1) - reach, np.maximum(emb.p0, emb.p1) + reach)
        if sl is None:
            continue
        local = np.minimum(occ[sl], pa_occ[sl])
        mask = ((occ[sl] >= 0.5) & pa_mask[sl]).astype(np.uint8)
        if not mask.any():
            continue
        _blend(hu[sl], float(rng.uniform(20.0, 60.0)), local)
        return mask, sl
    return None
