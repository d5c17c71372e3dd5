"""stack: put cube A on top of cube B and let go (long horizon; the default reward is sparse)."""

from __future__ import annotations

import numpy as np

from sim import panda_scene as ps
from sim.tasks.common import CUBE_HALF, cube_released, sample_xy

TOL_XY = 0.02  # m, A centre over B centre
TOL_Z = 0.01  # m, A resting at B + one cube height


class StackTask:
    name = "stack"
    max_episode_steps = 400
    use_yaw = False
    object_bodies = ("cube_a", "cube_b")
    goal_dim = 3
    success_tolerance = {"a_over_b_xy_m": TOL_XY, "a_height_m": TOL_Z, "released": True}
    success_criterion = None  # not judged from the published state: needs release (contact) information

    def build(self, spec) -> None:
        ps.add_box(spec, "cube_a", (CUBE_HALF,) * 3, (0.85, 0.15, 0.15, 1), mass=0.1)
        ps.add_box(spec, "cube_b", (CUBE_HALF,) * 3, (0.15, 0.3, 0.85, 1), mass=0.1)

    def reset(self, env, rng: np.random.Generator) -> None:
        b = sample_xy(rng, [0.4, -0.15], [0.6, 0.15])
        a = sample_xy(rng, [0.38, -0.2], [0.62, 0.2], avoid=[b], min_dist=0.1, max_dist=0.3)
        env.set_free_body_pose("cube_a", [a[0], a[1], CUBE_HALF], yaw=rng.uniform(-0.44, 0.44))
        env.set_free_body_pose("cube_b", [b[0], b[1], CUBE_HALF], yaw=rng.uniform(-0.44, 0.44))
        self._a_geoms = {env.model.geom("cube_a").id}

    def goal(self, env) -> np.ndarray:
        """Where A's centre should end up: one cube height above B's centre (moves with B)."""
        return env.body_pos("cube_b") + np.array([0.0, 0.0, 2 * CUBE_HALF])

    def is_success(self, env) -> bool:
        a, target = env.body_pos("cube_a"), self.goal(env)
        return bool(
            np.linalg.norm(a[:2] - target[:2]) < TOL_XY
            and abs(a[2] - target[2]) < TOL_Z
            and cube_released(env, self._a_geoms)
        )

    def shaped_reward(self, env) -> float:
        a = env.body_pos("cube_a")
        return -float(np.linalg.norm(a - self.goal(env))) - 0.2 * float(np.linalg.norm(env.tcp_pos - a))
