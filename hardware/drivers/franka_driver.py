"""Franka Emika Panda / FR3 over ``panda-python`` (panda_py: Panda + the JointPosition torque controller).

NOT RUN ON A PHYSICAL ARM: this adapter is tested only against a fake SDK module (tests/hardware/test_drivers.py).
Check it at low speed with the external activation device (the "user stop") in reach (docs/hardware.md).

panda_py runs libfranka's 1 kHz loop in its own C++ thread; ``command_joints`` only updates the JointPosition
controller's set point (``set_control``), so our servo loop may run at 1 kHz or slower. libfranka needs a
PREEMPT_RT kernel on the control PC (or realtime_config ignore, at the price of communication aborts).
Joint range: the Franka datasheet (tighter than the URDF the sims use). The Franka Hand is driven from a worker
thread (AsyncGripper) because ``Gripper.move`` blocks until the fingers stop.
joint_effort: measured link-side torques ``tau_J`` (Nm).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hardware.drivers.base import (PANDA_GRIPPER_RANGE, ArmState, AsyncGripper, DriverError, SentCommand,
                                   check_connected, import_sdk, now_ns, panda_info, read_only_reset, send_command)
from robotstack.core.rotations import quat_xyzw_to_wxyz

# Franka datasheet joint range (rad)
FRANKA_Q_MIN = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
FRANKA_Q_MAX = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])


class FrankaDriver:
    def __init__(self, host: str, *, gripper: bool = True, gripper_speed: float = 0.1, rate_hz: float = 1000.0,
                 name: str = "franka_panda"):
        self.host, self.use_gripper, self.gripper_speed = host, bool(gripper), float(gripper_speed)
        self.info = panda_info(name, simulated=False, vendor="panda-python", rate_hz=rate_hz, q_min=FRANKA_Q_MIN,
                               q_max=FRANKA_Q_MAX, gripper_range=PANDA_GRIPPER_RANGE if gripper else None)
        self._panda: Any = None
        self._ctrl: Any = None
        self._hand: Any = None
        self._gripper: AsyncGripper | None = None

    @property
    def is_connected(self) -> bool:
        return self._panda is not None

    def connect(self) -> None:
        if self._panda is not None:
            return
        panda_py = import_sdk("panda_py", vendor="Franka", package="panda-python", extra="franka")
        controllers = import_sdk("panda_py.controllers", vendor="Franka", package="panda-python", extra="franka")
        try:
            panda = panda_py.Panda(self.host)
        except Exception as exc:  # libfranka raises NetworkException / IncompatibleVersionException
            raise DriverError(f"Franka at {self.host}: connection failed ({exc}); are the brakes open and FCI "
                              "activated in Desk, and does the libfranka version match the firmware?") from exc
        self._panda = panda
        try:
            self._ctrl = controllers.JointPosition()
            panda.start_controller(self._ctrl)
            if self.use_gripper:
                libfranka = import_sdk("panda_py.libfranka", vendor="Franka", package="panda-python",
                                       extra="franka")
                self._hand = libfranka.Gripper(self.host)
                self._gripper = AsyncGripper(lambda w: self._hand.move(w, self.gripper_speed),
                                             lambda: self._hand.read_once().width, name="franka-gripper")
                self._gripper.start()
        except Exception:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        if self._gripper is not None:
            self._gripper.close()
            self._gripper = None
        if self._panda is not None:
            try:
                self._panda.stop_controller()
            finally:
                self._panda = self._ctrl = self._hand = None

    def _check(self) -> None:
        check_connected(self._panda is not None, self.info)

    def read_state(self) -> ArmState:
        self._check()
        s = self._panda.get_state()
        return ArmState(
            joint_pos=np.asarray(s.q, float), joint_vel=np.asarray(s.dq, float),
            joint_effort=np.asarray(s.tau_J, float), timestamp_ns=now_ns(),
            gripper=self._gripper.width if self._gripper is not None else None,
            eef_pos=np.asarray(self._panda.get_position(), float),
            eef_quat=quat_xyzw_to_wxyz(self._panda.get_orientation()),  # panda_py default is scalar-last
        )

    def command_joints(self, q_target, gripper_target: float | None = None) -> SentCommand:
        self._check()
        return send_command(self.info, q_target, gripper_target, self._ctrl.set_control,
                            self._gripper.request if self._gripper is not None else None)

    def step(self, dt: float) -> None:
        return None

    def halt(self) -> None:
        """Hold the measured position (the controller keeps running; libfranka's reflexes stay armed)."""
        if self._panda is not None:
            self._ctrl.set_control(np.asarray(self._panda.get_state().q, float))

    def reset(self, seed: int | None = None, object_poses: dict | None = None) -> ArmState:
        return read_only_reset(self, "Franka", object_poses)
