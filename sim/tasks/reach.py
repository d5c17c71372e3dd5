"""reach: move the TCP to a random point in the workspace (the target is a non-colliding marker)."""

from __future__ import annotations

import numpy as np

from robotstack.core import keys
from sim import panda_scene as ps

TOL = 0.02  # m


class ReachTask:
    name = "reach"
    max_episode_steps = 100
    use_yaw = False
    object_bodies = ("target",)  # the marker's pose is the only "object"
    goal_dim = 3
    success_tolerance = {"tcp_to_target_m": TOL}
    # is_success as data, judged from the published state (robotstack/core/success.py)
    success_criterion = [{"distance": [keys.EEF_POS, keys.GOAL], "dims": [0, 1, 2], "below": TOL}]

    def build(self, spec) -> None:
        ps.add_target_marker(spec, "target", (0.1, 0.9, 0.2, 0.5), shape="sphere", size=(0.015,))

    def reset(self, env, rng: np.random.Generator) -> None:
        self._goal = rng.uniform([0.35, -0.25, 0.05], [0.65, 0.25, 0.35])
        env.set_mocap_pose("target", self._goal)

    def goal(self, env) -> np.ndarray:
        return self._goal

    def is_success(self, env) -> bool:
        return bool(np.linalg.norm(env.tcp_pos - self._goal) < TOL)

    def shaped_reward(self, env) -> float:
        return -float(np.linalg.norm(env.tcp_pos - self._goal))
