"""An ideal Panda without physics (polymetis' mock arm): the joints are exactly where they were last commanded.

What it is for:
- developing and testing controllers without a physics engine or an arm (tasks whose only state is the arm and a
  goal, such as reach; a task with objects to push needs a physics driver, and asking for one is refused);
- timing the runtime itself: with PyBullet behind the server, each 1 kHz tick also steps a physics engine
  (~0.36 ms p50, >1 ms p99 on the team's VM, bench/results/bare_servo_floor.json), which is neither the servo's
  nor the protocol's cost. polymetis' published loop latency (avg 0.22 ms) is measured on such a mock arm.

Model: ``command_joints`` sets the joint target; ``step(dt)`` moves the joints onto it (the servo core already
limits velocity and acceleration per tick, so a perfect position tracker shows exactly the motion the servo
commanded) and reports the finite-difference velocity over the step. The gripper opening moves toward its
command at ``gripper_speed`` (m/s of total opening). The TCP comes from robotstack.core.kinematics (the same
FK the servo's IK uses), so Cartesian targets are followed exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hardware.drivers.base import (ArmState, DriverError, SentCommand, as_joint_vector, check_connected, now_ns,
                                   panda_info, parse_objects, send_command)
from robotstack.core import kinematics as kin
from robotstack.core.ee_action import GRIPPER_OPEN
from robotstack.core.rotations import mat_to_quat

GRIPPER_SPEED = 0.1  # m/s of total opening: the Franka Hand's rated 0.05 m/s per finger, both fingers together


class KinematicPandaDriver:
    """ArmDriver of an ideal, physics-free Panda (see the module docstring).

    objects: the caller's scene objects (ObjectSpec dicts, as the sim drivers take). Visual-only or static ones
    (goal markers, the table) are accepted and ignored; a dynamic one is refused, because nothing here could
    move it and a policy would see a scene that never reacts.
    """

    def __init__(self, objects: list[dict] | None = None, *, home_q=None, gripper_speed: float = GRIPPER_SPEED,
                 name: str = "kinematic_panda"):
        dynamic = [s.name for s in parse_objects(objects) if s.dynamic]
        if dynamic:
            raise DriverError(f"kinematic driver: no physics to move the dynamic object(s) {dynamic}; use the "
                              "pybullet or mujoco driver for tasks with objects")
        if gripper_speed <= 0:
            raise DriverError(f"kinematic driver: gripper_speed={gripper_speed}, expected > 0 (m/s)")
        self.info = panda_info(name, simulated=True, vendor="kinematic (no physics)", rate_hz=1000.0)
        self.home_q = as_joint_vector(kin.HOME_Q if home_q is None else home_q, 7, "home_q")
        self.gripper_speed = float(gripper_speed)
        self._connected = False
        self._q = self.home_q.copy()
        self._dq = np.zeros(7)
        self._q_cmd = self.home_q.copy()
        self._grip = self._grip_cmd = GRIPPER_OPEN
        self.sim_time = 0.0

    # --- lifecycle ----------------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    # --- ArmDriver -----------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, object_poses: dict[str, Any] | None = None) -> ArmState:
        """Arm to ``home_q`` at rest, gripper open. ``object_poses`` must be empty (there are no objects);
        ``seed`` is accepted for the interface and unused."""
        check_connected(self._connected, self.info)
        if object_poses:
            raise DriverError(f"kinematic driver: reset got object_poses for {sorted(object_poses)}, but it "
                              "simulates no objects")
        self._q, self._q_cmd, self._dq = self.home_q.copy(), self.home_q.copy(), np.zeros(7)
        self._grip = self._grip_cmd = GRIPPER_OPEN
        return self.read_state()

    def command_joints(self, q_target, gripper_target: float | None = None) -> SentCommand:
        check_connected(self._connected, self.info)
        return send_command(self.info, q_target, gripper_target, self._set_q, self._set_gripper)

    def _set_q(self, q: np.ndarray) -> None:
        self._q_cmd = q.copy()

    def _set_gripper(self, opening: float) -> None:
        self._grip_cmd = opening

    def step(self, dt: float) -> None:
        check_connected(self._connected, self.info)
        if dt <= 0:
            return
        self._dq = (self._q_cmd - self._q) / dt
        self._q = self._q_cmd.copy()
        move = self.gripper_speed * dt
        self._grip += float(np.clip(self._grip_cmd - self._grip, -move, move))
        self.sim_time += dt

    def halt(self) -> None:
        """Hold where the arm is now."""
        if self._connected:
            self._q_cmd = self._q.copy()
            self._dq = np.zeros(7)
            self._grip_cmd = self._grip

    def read_state(self) -> ArmState:
        check_connected(self._connected, self.info)
        _, _, tcp, R = kin.forward_kinematics(self._q)
        return ArmState(joint_pos=self._q.copy(), joint_vel=self._dq.copy(), timestamp_ns=now_ns(),
                        gripper=self._grip, eef_pos=tcp, eef_quat=mat_to_quat(R), sim_time=self.sim_time)
