"""Small helpers shared by the task modules."""

from __future__ import annotations

import numpy as np


CUBE_HALF = 0.02  # 4 cm cubes


def sample_xy(rng: np.random.Generator, lo, hi, avoid=(), min_dist: float = 0.0, max_dist: float = np.inf,
              tries: int = 200) -> np.ndarray:
    """Uniform xy in the box [lo, hi] at distance in [min_dist, max_dist] from every point in `avoid`."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    for _ in range(tries):
        p = rng.uniform(lo, hi)
        dists = [np.linalg.norm(p - np.asarray(a)[:2]) for a in avoid]
        if all(min_dist <= dd <= max_dist for dd in dists):
            return p
    return p  # the ranges used by the tasks always admit a sample; keep reset total anyway


def cube_released(env, cube_geoms: set) -> bool:
    """Fingers open wider than the cube and not touching it."""
    return env.gripper_opening > 2 * CUBE_HALF + 0.005 and not env.in_contact(set(env.h.robot_geoms), cube_geoms)
