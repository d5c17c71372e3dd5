"""Joint-space motion under velocity and acceleration limits: how the arm server's servo moves the arm toward a
joint target, written once for the servo (hardware/servo.py) and for the sim arm that imitates it
(sim/base_env.py ``servo=``; the task variants ``<task>@servo``).

Why the sim needs it: the MuJoCo arm's position servos reach each 20 Hz target within the step, while the arm
server's servo caps joint velocity and acceleration (by default half the Panda's rated values) and brakes to rest on
each target, so its hand moves ~1.3 cm per full 2 cm action step. Push IL trained on the fast arm kept 0.65 / 0.53
of its MuJoCo success on the PyBullet arm server (two scene sets), the same recipe on a sim arm stepped through the
servo 0.91 / 0.93 (docs/benchmarks.md, "Deployment transfer").

Shapes: every array is (dof,) joint space, rad / rad/s / rad/s^2.
"""

from __future__ import annotations

import numpy as np

# the servo's defaults: a fraction of the rated limits, a margin for real arms (hardware/servo.py ServoConfig)
DEFAULT_VELOCITY_SCALE = 0.5
DEFAULT_ACCEL_SCALE = 0.5
SERVO_TASK_SUFFIX = "@servo"  # sim task names whose arm moves by this module (push@servo; sim/registry.py)


def base_task(task: str) -> str:
    """push@servo -> push: the task whose configs and scene a servo-arm variant shares."""
    return task.removesuffix(SERVO_TASK_SUFFIX)


class JointMotion:
    """Motion toward a goal aimed along the straight line in joint space (all joints scaled together; the per-joint
    acceleration clamp bends it while speeding up): each joint within its velocity limit and able to brake to rest
    on the goal, every velocity change within the acceleration limit; it lands exactly on the goal instead of
    overshooting by a sub-tick step. One ``step`` per tick of ``rate_hz``."""

    def __init__(self, v_max, a_max, rate_hz: float):
        self.v_max = np.asarray(v_max, dtype=np.float64)
        self.rate = float(rate_hz)
        self.period = 1.0 / self.rate
        a_max = np.asarray(a_max, dtype=np.float64)
        self._a_dt = a_max * self.period  # the most the velocity may change in one tick
        self._two_a = 2.0 * a_max

    def step(self, err: np.ndarray, v: np.ndarray, remaining_s: float | None = None) -> tuple[np.ndarray, bool]:
        """err = goal - q, v = the velocity of the last tick -> (dq of this tick, acceleration-limited?).
        remaining_s: arrive no sooner than this (a target time); None: as fast as the limits allow. Written with
        ufuncs only: on 7-vectors numpy's Python-level wrappers cost more than the arithmetic, and the servo runs
        this at 1 kHz."""
        ae = np.maximum(abs(err), 1e-12)
        # per joint: the largest gap fraction per second that keeps |v| <= v_max and |v| <= sqrt(2 a |e|)
        ratio = np.minimum(self.v_max / ae, np.sqrt(self._two_a / ae))
        scale = min(self.rate, float(ratio.min()))  # at most close the whole gap in one tick
        if remaining_s is not None:
            scale = min(scale, 1.0 / max(remaining_s, self.period))
        v_des = err * scale
        v_new = np.minimum(np.maximum(v_des, v - self._a_dt), v + self._a_dt)
        limited = bool((abs(v_new - v_des) > 1e-9).any())
        dq = v_new * self.period
        over = (abs(dq) >= abs(err)) & (dq * err >= 0)  # land exactly instead of overshooting
        if over.any():
            dq = np.where(over, err, dq)
        return dq, limited
