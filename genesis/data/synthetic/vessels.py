"""Stochastic branching trees (pulmonary arteries, veins, bronchi) grown inside the lungs.

Each branch splits in two with radii following Murray's law (r^3 = r1^3 + r2^3) and lengths
proportional to the radius, the thinner child turning more; branches are nudged away from the
root so a tree fans out through its lung, and a branch that would leave the lung is shortened
or dropped. Growth is breadth-first with a segment budget, so the budget trims the periphery.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from genesis.data.synthetic.shapes import Grid, Segment


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    v -= (v @ d) * d
    return _unit(v)


def grow_tree(
    grid: Grid,
    inside: np.ndarray,
    roots: list[tuple[np.ndarray, np.ndarray, float]],
    rng: np.random.Generator,
    *,
    min_radius: float,
    max_segments: int,
    length_per_radius: tuple[float, float] = (4.0, 7.0),
    spread: float = 0.35,
) -> list[Segment]:
    """Grow a tree from ``roots`` = [(start mm, direction, radius mm)] inside the boolean ``inside``.

    Returns the segments (first-generation root segments may start outside ``inside``).
    """
    origin = np.mean([r[0] for r in roots], axis=0)
    queue: deque[tuple[np.ndarray, np.ndarray, float, int]] = deque(
        (np.asarray(p, float), _unit(np.asarray(d, float)), float(r), 0) for p, d, r in roots
    )
    segments: list[Segment] = []
    while queue and len(segments) < max_segments:
        p, d, r, depth = queue.popleft()
        length = r * rng.uniform(*length_per_radius) + rng.uniform(3.0, 8.0)
        r_end = r * 0.95
        end = None
        # Shorten, then turn (a few random tries) before giving up at the lung boundary.
        for attempt in range(4):
            if attempt:
                d = _unit(d + rng.normal(0.0, 0.6, 3))
            for frac in (1.0, 0.6, 0.35):
                q = p + d * length * frac
                if grid.inside(q, inside):
                    end = q
                    break
            if end is not None or depth == 0:
                break
        if end is None:
            continue
        segments.append(Segment(p, end, r, r_end, depth))
        if r_end < min_radius:
            continue
        # Murray's law split with a random asymmetry; the thin child turns more.
        big = rng.uniform(0.8, 0.93)
        r1 = r_end * big
        r2 = r_end * (1.0 - big**3) ** (1.0 / 3.0)
        outward = _unit(end - origin)
        u = _perpendicular(d, rng)
        for rc, angle, sign in ((r1, rng.uniform(0.25, 0.5), 1.0), (r2, rng.uniform(0.6, 1.0), -1.0)):
            if rc < min_radius:
                continue
            child = _unit(np.cos(angle) * d + sign * np.sin(angle) * u + spread * outward)
            queue.append((end, child, rc, depth + 1))
    return segments
