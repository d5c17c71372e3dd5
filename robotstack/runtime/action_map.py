"""Env actions -> arm targets, with the same rules as the sim env (sim/base_env.py PandaEnv._apply_action).

Action ``[dx, dy, dz, (dyaw,) gripper]`` in [-1, 1] moves a TCP target by ``a * max_step_pos`` metres (and
``a * max_step_yaw`` rad) per policy step; the target stays inside the workspace box and at most ``max_lead`` from
the measured TCP (no wind-up when blocked by contact); ``kinematics.solve_ik`` (warm-started from the last joint
target) turns it into joint positions. gripper > 0 closes the fingers (opening 0), otherwise opens them fully.
The scales come from the artifact manifest (the task spec at export time); the box and lead default to the sim's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robotstack.core import kinematics as kin

# sim/base_env.py values (duplicated: the runtime may not import sim); a manifest may override them
WS_LO = (0.25, -0.4, 0.012)
WS_HI = (0.8, 0.4, 0.45)
YAW_LIMIT = 1.6
MAX_LEAD = 0.04
GRIPPER_OPEN = 2 * kin.FINGER_MAX  # finger opening (sum of both fingers), m


@dataclass
class ActionScale:
    max_step_pos: float = 0.02
    max_step_yaw: float = 0.15
    use_yaw: bool = True
    ws_lo: tuple = WS_LO
    ws_hi: tuple = WS_HI
    max_lead: float = MAX_LEAD
    yaw_limit: float = YAW_LIMIT


class EEActionMapper:
    def __init__(self, scale: ActionScale, ik_iters: int = 8):
        self.s = scale
        self.ik_iters = ik_iters
        self.lo, self.hi = np.asarray(scale.ws_lo, float), np.asarray(scale.ws_hi, float)
        self.target_pos = np.zeros(3)
        self.target_yaw = 0.0
        self.q_target: np.ndarray | None = None
        self.gripper = GRIPPER_OPEN

    def reset(self, q_measured: np.ndarray, gripper: float | None = None) -> None:
        """Start from where the arm is: the target is the measured TCP (no jump at the first step)."""
        q = np.asarray(q_measured, dtype=np.float64)
        _, _, p, R = kin.forward_kinematics(q)
        self.target_pos = np.clip(p, self.lo, self.hi)
        # the measured yaw (0 after a sim reset; tasks without dyaw then keep it, as the env keeps 0)
        self.target_yaw = float(np.clip(kin.tcp_yaw(R), -self.s.yaw_limit, self.s.yaw_limit))
        self.q_target = q.copy()
        self.gripper = GRIPPER_OPEN if gripper is None else float(gripper)

    def step(self, a: np.ndarray, tcp_measured: np.ndarray) -> tuple[np.ndarray, float]:
        """Apply one action; returns (joint target (Dq,), gripper opening m)."""
        a = np.asarray(a, dtype=np.float64)
        target = self.target_pos + a[:3] * self.s.max_step_pos
        lead = target - np.asarray(tcp_measured, float)
        n = float(np.linalg.norm(lead))
        if n > self.s.max_lead:
            target = np.asarray(tcp_measured, float) + lead * (self.s.max_lead / n)
        self.target_pos = np.clip(target, self.lo, self.hi)
        if self.s.use_yaw:
            self.target_yaw = float(np.clip(self.target_yaw + a[3] * self.s.max_step_yaw, -self.s.yaw_limit,
                                            self.s.yaw_limit))
        self.q_target = kin.solve_ik(self.q_target, self.target_pos, self.target_yaw, iters=self.ik_iters)
        self.gripper = 0.0 if a[-1] > 0 else GRIPPER_OPEN
        return self.q_target.copy(), self.gripper
