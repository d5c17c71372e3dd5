"""UFACTORY xArm 6/7 over ``xarm-python-sdk`` (XArmAPI, servo motion mode 1, ``set_servo_angle_j``).

NOT RUN ON A PHYSICAL ARM: this adapter is tested only against a fake SDK module (tests/hardware/test_drivers.py).
Check it at low speed with the controller's e-stop in reach before trusting it (docs/hardware.md).

Mode 1 streams joint set points that the controller executes without its own trajectory planning, so the servo
core's velocity/acceleration limits are what keeps the motion smooth. UFACTORY suggests a steady command stream;
the default ``rate_hz`` 250 Hz matches the controller's servo cycle. Every SDK call returns a code; a non-zero
code from a command raises DriverError with the code (the servo loop then stops and halts the arm).
The gripper (xArm Gripper, 0..850 units ~ 0..85 mm) is driven from a worker thread (AsyncGripper): its calls are
TCP round trips that would stall the servo tick.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hardware.drivers.base import (ArmInfo, ArmState, AsyncGripper, DriverError, SentCommand, check_connected,
                                   import_sdk, now_ns, read_only_reset, send_command)
from robotstack.core.rotations import rpy_to_quat

DEG = np.pi / 180
# xArm datasheet joint ranges (deg) and 180 deg/s joint speed
XARM7_RANGE = np.array([[-360, 360], [-118, 120], [-360, 360], [-11, 225], [-360, 360], [-97, 180], [-360, 360]])
XARM6_RANGE = np.array([[-360, 360], [-118, 120], [-225, 11], [-360, 360], [-97, 180], [-360, 360]])
XARM_GRIPPER_MAX = 0.085  # m, total opening of the xArm Gripper (850 SDK units)
GRIPPER_UNITS_PER_M = 850 / XARM_GRIPPER_MAX
MODE_SERVO, STATE_READY, STATE_STOP = 1, 0, 4


class XArmDriver:
    def __init__(self, host: str, *, dof: int = 7, gripper: bool = True, rate_hz: float = 250.0,
                 name: str | None = None):
        if dof not in (6, 7):
            raise DriverError(f"dof={dof}: expected 6 (xArm6) or 7 (xArm7)")
        rng = (XARM7_RANGE if dof == 7 else XARM6_RANGE) * DEG
        self.host, self.rate_hz, self.use_gripper = host, float(rate_hz), bool(gripper)
        self.info = ArmInfo(
            name=name or f"xarm{dof}", dof=dof, joint_names=tuple(f"joint{i}" for i in range(1, dof + 1)),
            q_min=rng[:, 0], q_max=rng[:, 1], dq_max=np.full(dof, np.pi), ddq_max=np.full(dof, 10.0),
            gripper_range=(0.0, XARM_GRIPPER_MAX) if gripper else None, nominal_rate_hz=self.rate_hz, simulated=False,
            kinematics=None, vendor="xarm-python-sdk",
        )
        self._arm: Any = None
        self._gripper: AsyncGripper | None = None

    @property
    def is_connected(self) -> bool:
        return self._arm is not None and bool(getattr(self._arm, "connected", False))

    def _ok(self, code, what: str) -> None:
        if code not in (0, None):
            raise DriverError(f"xArm at {self.host}: {what} returned code {code} (see the xArm error-code table; "
                              "clear it on the controller or with clean_error)")

    def connect(self) -> None:
        if self._arm is not None:
            return
        wrapper = import_sdk("xarm.wrapper", vendor="xArm", package="xarm-python-sdk", extra="xarm")
        try:
            arm = wrapper.XArmAPI(self.host, is_radian=True)
        except Exception as exc:
            raise DriverError(f"xArm at {self.host}: connection failed ({exc})") from exc
        if not getattr(arm, "connected", False):
            raise DriverError(f"xArm at {self.host}: not reachable (check the IP and the control box)")
        self._arm = arm
        try:
            arm.clean_warn()
            arm.clean_error()
            self._ok(arm.motion_enable(enable=True), "motion_enable")
            self._ok(arm.set_mode(MODE_SERVO), "set_mode(1)")
            self._ok(arm.set_state(STATE_READY), "set_state(0)")
            if self.use_gripper:
                self._ok(arm.set_gripper_enable(True), "set_gripper_enable")
                self._ok(arm.set_gripper_mode(0), "set_gripper_mode")
                self._gripper = AsyncGripper(self._gripper_move, self._gripper_read, name="xarm-gripper")
                self._gripper.start()
        except Exception:
            self.disconnect()
            raise

    def _gripper_move(self, width: float) -> None:
        self._ok(self._arm.set_gripper_position(width * GRIPPER_UNITS_PER_M, wait=False), "set_gripper_position")

    def _gripper_read(self) -> float:
        code, pos = self._arm.get_gripper_position()
        self._ok(code, "get_gripper_position")
        return float(pos) / GRIPPER_UNITS_PER_M

    def disconnect(self) -> None:
        if self._arm is None:
            return
        if self._gripper is not None:
            self._gripper.close()
            self._gripper = None
        try:
            self._arm.set_state(STATE_STOP)
        finally:
            self._arm.disconnect()
            self._arm = None

    def _check(self) -> None:
        check_connected(self._arm is not None, self.info)

    def read_state(self) -> ArmState:
        self._check()
        code, (pos, vel, eff) = self._arm.get_joint_states(is_radian=True)
        self._ok(code, "get_joint_states")
        code, pose = self._arm.get_position(is_radian=True)  # x, y, z mm; roll, pitch, yaw rad
        self._ok(code, "get_position")
        n = self.info.dof
        grip = self._gripper.width if self._gripper is not None else None
        return ArmState(
            joint_pos=np.asarray(pos[:n], float), joint_vel=np.asarray(vel[:n], float),
            joint_effort=np.asarray(eff[:n], float), timestamp_ns=now_ns(), gripper=grip,
            eef_pos=np.asarray(pose[:3], float) / 1000.0, eef_quat=rpy_to_quat(*pose[3:6]),
        )

    def command_joints(self, q_target, gripper_target: float | None = None) -> SentCommand:
        self._check()
        return send_command(self.info, q_target, gripper_target, self._servo_j,
                            self._gripper.request if self._gripper is not None else None)

    def _servo_j(self, q: np.ndarray) -> None:
        self._ok(self._arm.set_servo_angle_j(q.tolist(), is_radian=True), "set_servo_angle_j")

    def step(self, dt: float) -> None:
        return None

    def halt(self) -> None:
        if self._arm is not None:
            self._arm.set_state(STATE_STOP)

    def reset(self, seed: int | None = None, object_poses: dict | None = None) -> ArmState:
        return read_only_reset(self, "xArm", object_poses)
