"""push: slide a cube into a circular target region on the table (no grasp needed).

The action includes dyaw: the closed finger pair is a flat 2 x 5 cm pusher whose sides taper, so a good push
turns the hand to meet the cube face with its flat side (a tapered side wedges under the cube).
"""

from __future__ import annotations

import numpy as np

from robotstack.core import keys
from sim import panda_scene as ps
from sim.tasks.common import CUBE_HALF, sample_xy

TOL = 0.02  # m, cube centre to target centre in xy


class PushTask:
    name = "push"
    max_episode_steps = 200
    use_yaw = True
    object_bodies = ("cube",)
    goal_dim = 3
    success_tolerance = {"cube_xy_to_target_m": TOL}
    # is_success as data (robotstack/core/success.py): object_state[:3] is the cube position
    success_criterion = [{"distance": [keys.OBJECT_STATE, keys.GOAL], "dims": [0, 1], "below": TOL}]

    def build(self, spec) -> None:
        ps.add_box(spec, "cube", (CUBE_HALF,) * 3, (0.85, 0.15, 0.15, 1), mass=0.1)
        ps.add_target_marker(spec, "target", (0.1, 0.9, 0.2, 0.4), shape="cylinder", size=(TOL + CUBE_HALF, 0.001))

    def reset(self, env, rng: np.random.Generator) -> None:
        cube = sample_xy(rng, [0.4, -0.15], [0.6, 0.15])
        goal = sample_xy(rng, [0.4, -0.2], [0.65, 0.2], avoid=[cube], min_dist=0.1, max_dist=0.25)
        env.set_free_body_pose("cube", [cube[0], cube[1], CUBE_HALF], yaw=rng.uniform(-np.pi / 4, np.pi / 4))
        self._goal = np.array([goal[0], goal[1], CUBE_HALF])
        env.set_mocap_pose("target", [goal[0], goal[1], 0.001])

    def goal(self, env) -> np.ndarray:
        return self._goal

    def _dist(self, env) -> float:
        return float(np.linalg.norm(env.body_pos("cube")[:2] - self._goal[:2]))

    def is_success(self, env) -> bool:
        return self._dist(env) < TOL

    def shaped_reward(self, env) -> float:
        reach = np.linalg.norm(env.tcp_pos - env.body_pos("cube"))
        return -self._dist(env) - 0.2 * float(reach)
