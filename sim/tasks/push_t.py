"""push_t: push a T-shaped block to a target pose (x, y, yaw) on the table; the action includes dyaw.

Like the Push-T benchmark: the goal pose is fixed by default, the block starts at a random pose.
"""

from __future__ import annotations

import numpy as np

from sim import panda_scene as ps
from robotstack.core.rotations import wrap_angle

TOL_POS = 0.02  # m
TOL_YAW = np.deg2rad(10.0)
GOAL = (0.55, 0.0, 0.0)  # x, y, yaw


class PushTTask:
    name = "push_t"
    max_episode_steps = 300
    use_yaw = True
    object_bodies = ("tblock",)
    goal_dim = 3
    success_tolerance = {"pos_m": TOL_POS, "yaw_deg": 10.0}
    success_criterion = None  # not judged from the published state: needs the block's yaw

    def __init__(self, goal=GOAL, yaw_range: float = np.pi):
        self._goal = np.array(goal, dtype=np.float64)
        self.yaw_range = float(yaw_range)

    def build(self, spec) -> None:
        ps.add_t_block(spec, "tblock", (0.25, 0.45, 0.85, 1), mass=0.2)
        ps.add_target_marker(spec, "t_target", (0.1, 0.9, 0.2, 0.35), t_shape=True)

    def reset(self, env, rng: np.random.Generator) -> None:
        for _ in range(100):
            xy = rng.uniform([0.42, -0.15], [0.62, 0.15])
            yaw = rng.uniform(-self.yaw_range, self.yaw_range)
            far = np.linalg.norm(xy - self._goal[:2]) > 0.05 or abs(wrap_angle(yaw - self._goal[2])) > 0.5
            if far:
                break
        env.set_free_body_pose("tblock", [xy[0], xy[1], ps.T_HEIGHT / 2 + 0.0005], yaw=yaw)
        env.set_mocap_pose("t_target", [self._goal[0], self._goal[1], 0.001], yaw=self._goal[2])

    def goal(self, env) -> np.ndarray:
        return self._goal

    def errors(self, env) -> tuple[float, float]:
        pos = env.body_pos("tblock")
        return (float(np.linalg.norm(pos[:2] - self._goal[:2])),
                abs(wrap_angle(env.body_yaw("tblock") - self._goal[2])))

    def is_success(self, env) -> bool:
        dp, dyaw = self.errors(env)
        return dp < TOL_POS and dyaw < TOL_YAW

    def shaped_reward(self, env) -> float:
        dp, dyaw = self.errors(env)
        return -dp - 0.05 * dyaw
