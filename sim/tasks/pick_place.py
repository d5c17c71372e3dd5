"""pick_place: grasp a cube and set it down on a target spot on the table, then let go."""

from __future__ import annotations

import numpy as np

from sim import panda_scene as ps
from sim.tasks.common import CUBE_HALF, cube_released, sample_xy

TOL = 0.02  # m, cube centre to target in xy; the cube must rest on the table and be released


class PickPlaceTask:
    name = "pick_place"
    max_episode_steps = 200
    use_yaw = False
    object_bodies = ("cube",)
    goal_dim = 3
    success_tolerance = {"cube_xy_to_target_m": TOL, "cube_height_above_rest_m": 0.01, "released": True}
    success_criterion = None  # not judged from the published state: needs release (contact) information

    def build(self, spec) -> None:
        ps.add_box(spec, "cube", (CUBE_HALF,) * 3, (0.85, 0.15, 0.15, 1), mass=0.1)
        ps.add_target_marker(spec, "target", (0.1, 0.9, 0.2, 0.4), shape="cylinder", size=(TOL + CUBE_HALF, 0.001))

    def reset(self, env, rng: np.random.Generator) -> None:
        cube = sample_xy(rng, [0.4, -0.15], [0.6, 0.15])
        goal = sample_xy(rng, [0.4, -0.2], [0.65, 0.2], avoid=[cube], min_dist=0.12, max_dist=0.3)
        # yaw within +-25 deg: the fingers square the cube up as they close (no yaw action in this task)
        env.set_free_body_pose("cube", [cube[0], cube[1], CUBE_HALF], yaw=rng.uniform(-0.44, 0.44))
        self._goal = np.array([goal[0], goal[1], CUBE_HALF])
        env.set_mocap_pose("target", [goal[0], goal[1], 0.001])
        self._cube_geoms = {env.model.geom("cube").id}

    def goal(self, env) -> np.ndarray:
        return self._goal

    def is_success(self, env) -> bool:
        p = env.body_pos("cube")
        return bool(
            np.linalg.norm(p[:2] - self._goal[:2]) < TOL
            and p[2] < CUBE_HALF + 0.01
            and cube_released(env, self._cube_geoms)
        )

    def shaped_reward(self, env) -> float:
        p = env.body_pos("cube")
        reach = np.linalg.norm(env.tcp_pos - p)
        return -float(np.linalg.norm(p - self._goal)) - 0.2 * float(reach)
