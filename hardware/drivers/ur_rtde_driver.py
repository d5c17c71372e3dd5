"""Universal Robots arms over RTDE (the ``ur-rtde`` package: RTDEControlInterface / RTDEReceiveInterface).

NOT RUN ON A PHYSICAL ARM: this adapter is tested only against a fake SDK module (tests/hardware/test_drivers.py).
Check it at low speed with the teach pendant's e-stop in reach before trusting it (docs/hardware.md).

Streaming: ``command_joints`` calls ``servoJ(q, 0, 0, 1/rate, lookahead_time, gain)`` once per servo tick, the
pattern diffusion_policy's RTDEInterpolationController uses (servoL there; speed/acceleration are unused by
servoJ). Run the servo loop at the RTDE frequency: 500 Hz on e-Series, 125 Hz on CB3 (``rate_hz``).
The UR controller applies its own safety limits (joint/TCP speed, planes) on top of ours; configure them.
No gripper: ``gripper_range`` is None and gripper targets are ignored.
joint_effort: RTDE ``target_moment`` (Nm) when the SDK offers ``getTargetMoment``, else None.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hardware.drivers.base import (ArmInfo, ArmState, DriverError, SentCommand, check_connected, import_sdk, now_ns,
                                   read_only_reset, send_command)
from robotstack.core.rotations import rotvec_to_quat

UR_JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
# UR e-Series datasheet: every joint +-360 deg; speeds 180 deg/s (UR3e/UR5e; UR10e/UR16e base and shoulder 120).
# The elbow is limited to +-180 deg here: beyond it the arm folds into itself.
UR_Q_MAX = np.array([2 * np.pi, 2 * np.pi, np.pi, 2 * np.pi, 2 * np.pi, 2 * np.pi])
UR_DQ_MAX = {"ur3e": np.full(6, np.pi), "ur5e": np.full(6, np.pi),
             "ur10e": np.array([2.094, 2.094, np.pi, np.pi, np.pi, np.pi]),
             "ur16e": np.array([2.094, 2.094, np.pi, np.pi, np.pi, np.pi])}
UR_DDQ_MAX = np.full(6, 8.0)  # conservative; the controller limits acceleration itself


class URRtdeDriver:
    def __init__(self, host: str, *, model: str = "ur5e", rate_hz: float = 500.0, lookahead_time: float = 0.1,
                 gain: float = 300.0, name: str | None = None):
        if model not in UR_DQ_MAX:
            raise DriverError(f"model={model!r}: expected one of {sorted(UR_DQ_MAX)}")
        if not 0.03 <= lookahead_time <= 0.2 or not 100 <= gain <= 2000:
            raise DriverError(f"lookahead_time={lookahead_time} must be in [0.03, 0.2] s and gain={gain} in "
                              "[100, 2000] (servoJ ranges)")
        if not 0 < rate_hz <= 500:
            raise DriverError(f"rate_hz={rate_hz}: RTDE runs at most 500 Hz (125 Hz on CB3)")
        self.host, self.rate_hz = host, float(rate_hz)
        self.lookahead_time, self.gain = float(lookahead_time), float(gain)
        self.info = ArmInfo(
            name=name or f"ur_{model}", dof=6, joint_names=UR_JOINTS, q_min=-UR_Q_MAX, q_max=UR_Q_MAX,
            dq_max=UR_DQ_MAX[model], ddq_max=UR_DDQ_MAX, gripper_range=None, nominal_rate_hz=self.rate_hz,
            simulated=False, kinematics=None, vendor="ur-rtde",
        )
        self._ctrl: Any = None
        self._recv: Any = None

    @property
    def is_connected(self) -> bool:
        return self._ctrl is not None and bool(self._ctrl.isConnected()) and bool(self._recv.isConnected())

    def connect(self) -> None:
        if self._ctrl is not None:
            return
        rtde_control = import_sdk("rtde_control", vendor="UR", package="ur-rtde", extra="ur")
        rtde_receive = import_sdk("rtde_receive", vendor="UR", package="ur-rtde", extra="ur")
        try:
            self._recv = rtde_receive.RTDEReceiveInterface(self.host, self.rate_hz)
            self._ctrl = rtde_control.RTDEControlInterface(self.host, self.rate_hz)
        except Exception as exc:  # the SDK raises RuntimeError on refused/timeout connections
            self._ctrl = self._recv = None
            raise DriverError(f"UR at {self.host}: RTDE connection failed ({exc}); check the IP, that the arm is "
                              "in remote control, and that no other RTDE client is attached") from exc

    def disconnect(self) -> None:
        if self._ctrl is None:
            return
        try:
            self._ctrl.servoStop()
            self._ctrl.stopScript()
        finally:
            self._ctrl.disconnect()
            self._recv.disconnect()
            self._ctrl = self._recv = None

    def _check(self) -> None:
        check_connected(self._ctrl is not None, self.info)

    def read_state(self) -> ArmState:
        self._check()
        r = self._recv
        pose = np.asarray(r.getActualTCPPose(), dtype=np.float64)  # x, y, z, rx, ry, rz (axis-angle)
        effort = np.asarray(r.getTargetMoment(), dtype=np.float64) if hasattr(r, "getTargetMoment") else None
        return ArmState(
            joint_pos=np.asarray(r.getActualQ(), dtype=np.float64), joint_vel=np.asarray(r.getActualQd(), float),
            joint_effort=effort, timestamp_ns=now_ns(), eef_pos=pose[:3], eef_quat=rotvec_to_quat(pose[3:]),
        )

    def command_joints(self, q_target, gripper_target: float | None = None) -> SentCommand:
        self._check()
        return send_command(self.info, q_target, gripper_target, self._servo_j)  # no gripper: gripper=None

    def _servo_j(self, q: np.ndarray) -> None:
        ok = self._ctrl.servoJ(q.tolist(), 0.0, 0.0, 1.0 / self.rate_hz, self.lookahead_time, self.gain)
        if ok is False:
            raise DriverError(f"UR at {self.host}: servoJ refused the command (protective stop or script ended?)")

    def step(self, dt: float) -> None:  # real arm: time passes by itself
        return None

    def halt(self) -> None:
        if self._ctrl is not None:
            self._ctrl.servoStop()

    def reset(self, seed: int | None = None, object_poses: dict | None = None) -> ArmState:
        return read_only_reset(self, "UR", object_poses)
