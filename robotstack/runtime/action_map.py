"""Env actions -> arm targets: the runtime's stateful side of the end-effector action contract.

The contract itself (action names, step scaling, workspace box, max lead, yaw limit, gripper convention and unit)
is ``robotstack/core/ee_action.py``, the same code the sim env steps with; this module only holds the target
state and turns the TCP target into joint positions with ``kinematics.solve_ik`` (warm-started from the last
joint target). Both action modes (delta steps, absolute targets) go through the same ``ee.step_target``. The spec comes from the artifact manifest (the task's contract at export time).
"""

from __future__ import annotations

import numpy as np

from robotstack.core import ee_action as ee
from robotstack.core import kinematics as kin
from robotstack.core.ee_action import EEActionSpec

# the runtime's name for the contract; one class, so callers and the manifest carry the whole of it
ActionScale = EEActionSpec


class EEActionMapper:
    def __init__(self, scale: EEActionSpec, ik_iters: int = 8):
        self.s = scale
        self.ik_iters = ik_iters
        self.target_pos = np.zeros(3)
        self.target_yaw = 0.0
        self.q_target: np.ndarray | None = None
        self.gripper = scale.gripper_open
        self._plan: tuple | None = None  # (q start, target pos, target yaw, IK result) computed ahead
        self.ik_ahead_hits = self.ik_on_step = 0

    def reset(self, q_measured: np.ndarray, gripper: float | None = None) -> None:
        """Start from where the arm is: the target is the measured TCP (no jump at the first step)."""
        q = np.asarray(q_measured, dtype=np.float64)
        _, _, p, R = kin.forward_kinematics(q)
        # the measured yaw (0 after a sim reset; tasks without dyaw then keep it, as the env keeps 0)
        t = ee.initial_target(self.s, p, kin.tcp_yaw(R), gripper)
        self.target_pos, self.target_yaw, self.gripper = t.pos, t.yaw, t.gripper
        self.q_target = q.copy()
        self._plan = None

    def device_action(self, a_delta: np.ndarray, tcp_measured: np.ndarray, q_measured: np.ndarray) -> np.ndarray:
        """A teleop device's command (always delta units) -> an action in the contract's mode (absolute mode:
        the target measured TCP + step, core/ee_action.py absolute_from_delta, as the sim's experts do)."""
        if self.s.mode != ee.ABSOLUTE:
            return a_delta
        R = kin.forward_kinematics(np.asarray(q_measured, dtype=np.float64))[3]
        return ee.absolute_from_delta(self.s, a_delta, tcp_measured, kin.tcp_yaw(R))

    def advance(self, a: np.ndarray, tcp_measured: np.ndarray) -> None:
        """Integrate a skipped action into the TCP target without IK (the next step's IK starts from there)."""
        t = ee.step_target(self.s, ee.EETarget(self.target_pos, self.target_yaw, self.gripper), a, tcp_measured)
        self.target_pos, self.target_yaw, self.gripper = t.pos, t.yaw, t.gripper

    def step(self, a: np.ndarray, tcp_measured: np.ndarray) -> tuple[np.ndarray, float]:
        """Apply one action; returns (joint target (Dq,), gripper opening m, total of both fingers)."""
        t = ee.step_target(self.s, ee.EETarget(self.target_pos, self.target_yaw, self.gripper), a, tcp_measured)
        self.target_pos, self.target_yaw, self.gripper = t.pos, t.yaw, t.gripper
        plan, self._plan = self._plan, None
        if (plan is not None and np.array_equal(plan[0], self.q_target) and np.array_equal(plan[1], t.pos)
                and plan[2] == t.yaw):  # the same inputs: solve_ik would return exactly plan[3]
            self.q_target = plan[3].copy()
            self.ik_ahead_hits += 1
        else:
            self.q_target = kin.solve_ik(self.q_target, self.target_pos, self.target_yaw, iters=self.ik_iters)
            self.ik_on_step += 1
        return self.q_target.copy(), self.gripper

    def prepare(self, skipped: list[np.ndarray], a: np.ndarray, tcp_guess: np.ndarray) -> None:
        """IK ahead: solve for the target that advance(skipped...) then step(a, tcp) would set, with the TCP measured
        now standing in for the one measured at the step (the TCP only matters when the max-lead clamp binds).
        step() uses the result only if its own IK inputs turn out identical, so the joint target is bit-for-bit
        what IK on the step gives."""
        t = ee.EETarget(self.target_pos, self.target_yaw, self.gripper)
        for x in [*skipped, a]:
            t = ee.step_target(self.s, t, x, tcp_guess)
        q = kin.solve_ik(self.q_target, t.pos, t.yaw, iters=self.ik_iters)
        self._plan = (self.q_target.copy(), t.pos.copy(), t.yaw, q)
