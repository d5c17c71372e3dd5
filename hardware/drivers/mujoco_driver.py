"""A twin driver over any MuJoCo model/data pair: the training sim behind the same servo core and protocol.

The caller builds the scene (e.g. ``sim.make(task).unwrapped`` gives ``model``, ``data`` and the joint/actuator
names) and hands it over; this module only uses the mujoco API, so hardware/ never imports sim/. The arm's
actuators must be position servos (ctrl = joint target), as in sim/panda_scene.py.

Ownership: the caller owns ``model``/``data``. ``connect``/``disconnect`` only open and close the driver's use
of them; ``reset`` puts the arm (and optionally named free bodies) to a pose without ``mj_resetData``, so task
state the caller set up (mocap goals, randomized masses) survives.
"""

from __future__ import annotations

from typing import Any, Sequence

import mujoco
import numpy as np

from hardware.drivers.base import (ArmInfo, ArmState, DriverError, SentCommand, as_joint_vector, check_connected,
                                   now_ns, panda_info, pose_of, send_command)
from robotstack.core.ee_action import per_finger_opening


class MujocoArmDriver:
    """ArmDriver over a caller-owned (model, data).

    arm_joints / arm_actuators: names, in arm order (Dq each). finger_joints / finger_actuators: 0, 1 or 2 names;
    openings are totals (robotstack/core/ee_action.py): a symmetric pair gets ``per_finger_opening`` each (the
    Panda), a single finger joint the whole opening; the reported opening is the sum of the finger joints.
    tcp_site: site reported as eef pose. object_bodies: free bodies reported in object_state (pos + quat wxyz).
    kinematics="panda" declares that robotstack.core.kinematics applies (the servo then checks the workspace
    box and accepts Cartesian targets) and fills missing limits from the Panda datasheet.
    """

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData, *, arm_joints: Sequence[str],
                 arm_actuators: Sequence[str], finger_joints: Sequence[str] = (),
                 finger_actuators: Sequence[str] = (), tcp_site: str | None = None,
                 object_bodies: Sequence[str] = (), name: str = "mujoco_twin", kinematics: str | None = None,
                 dq_max=None, ddq_max=None, home_q=None, nominal_rate_hz: float = 1000.0):
        self.model, self.data = model, data
        if len(arm_joints) != len(arm_actuators) or not arm_joints:
            raise DriverError(f"arm_joints ({len(arm_joints)}) and arm_actuators ({len(arm_actuators)}) must be "
                              "non-empty and of equal length")
        if len(finger_joints) != len(finger_actuators) or len(finger_joints) > 2:
            raise DriverError("finger_joints and finger_actuators must have equal length (0, 1 or 2)")
        jid = [self._id(mujoco.mjtObj.mjOBJ_JOINT, n, "joint") for n in arm_joints]
        fid = [self._id(mujoco.mjtObj.mjOBJ_JOINT, n, "joint") for n in finger_joints]
        self._arm_act = np.array([self._id(mujoco.mjtObj.mjOBJ_ACTUATOR, n, "actuator") for n in arm_actuators])
        self._finger_act = np.array([self._id(mujoco.mjtObj.mjOBJ_ACTUATOR, n, "actuator")
                                     for n in finger_actuators], dtype=int)
        for j, n in zip(jid + fid, list(arm_joints) + list(finger_joints)):
            if model.jnt_type[j] not in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE):
                raise DriverError(f"joint {n!r} is not a hinge or slide joint")
        self._arm_qpos = model.jnt_qposadr[jid]
        self._arm_dof = model.jnt_dofadr[jid]
        self._finger_qpos = model.jnt_qposadr[fid] if fid else np.zeros(0, dtype=int)
        self._tcp = self._id(mujoco.mjtObj.mjOBJ_SITE, tcp_site, "site") if tcp_site else None
        self._obj = [self._id(mujoco.mjtObj.mjOBJ_BODY, n, "body") for n in object_bodies]
        self._obj_qpos = []
        for b, n in zip(self._obj, object_bodies):
            j = model.body_jntadr[b]
            if j < 0 or model.jnt_type[j] != mujoco.mjtJoint.mjJNT_FREE:
                raise DriverError(f"object body {n!r} has no free joint")
            self._obj_qpos.append(int(model.jnt_qposadr[j]))

        dof = len(arm_joints)
        lo = np.where(model.jnt_limited[jid], model.jnt_range[jid, 0], -2 * np.pi)
        hi = np.where(model.jnt_limited[jid], model.jnt_range[jid, 1], 2 * np.pi)
        grip_range = None
        if fid:  # total opening = sum of the finger joints (as read_state reports it)
            grip_range = tuple(float(v) for v in model.jnt_range[fid].sum(axis=0))
        vendor = f"mujoco {mujoco.__version__}"
        if kinematics == "panda":
            if dof != 7:
                raise DriverError(f"kinematics='panda' needs 7 arm joints, got {dof}")
            self.info = panda_info(name, simulated=True, object_names=tuple(object_bodies), vendor=vendor,
                                   rate_hz=nominal_rate_hz, q_min=lo, q_max=hi, gripper_range=grip_range)
        else:
            if dq_max is None or ddq_max is None:
                raise DriverError("dq_max and ddq_max are required unless kinematics='panda'")
            self.info = ArmInfo(
                name=name, dof=dof, joint_names=tuple(arm_joints), q_min=lo, q_max=hi,
                dq_max=np.broadcast_to(np.asarray(dq_max, float), (dof,)),
                ddq_max=np.broadcast_to(np.asarray(ddq_max, float), (dof,)), gripper_range=grip_range,
                nominal_rate_hz=nominal_rate_hz, simulated=True, kinematics=kinematics,
                object_names=tuple(object_bodies), vendor=vendor,
            )
        self.home_q = as_joint_vector(data.qpos[self._arm_qpos] if home_q is None else home_q, dof, "home_q")
        self._connected = False
        self._substep_debt = 0.0

    def _id(self, kind, name: str, what: str) -> int:
        i = mujoco.mj_name2id(self.model, kind, name)
        if i < 0:
            raise DriverError(f"no {what} named {name!r} in the model")
        return int(i)

    def _per_finger(self, opening: float) -> float:
        """Total opening (m) -> each finger joint's target: a pair splits it, a single finger takes all."""
        return per_finger_opening(opening) if len(self._finger_qpos) == 2 else opening

    # --- lifecycle ----------------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True
        mujoco.mj_forward(self.model, self.data)

    def disconnect(self) -> None:
        self._connected = False

    def _check(self) -> None:
        check_connected(self._connected, self.info)

    # --- ArmDriver -----------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, object_poses: dict[str, Any] | None = None) -> ArmState:
        """Arm to ``home_q`` at rest, fingers open, named objects to their poses; ``seed`` unused."""
        self._check()
        m, d = self.model, self.data
        names = self.info.object_names
        for name, value in (object_poses or {}).items():
            if name not in names:
                raise DriverError(f"reset: unknown object {name!r}; known: {list(names)}")
            adr = self._obj_qpos[names.index(name)]
            d.qpos[adr: adr + 7] = pose_of(value, f"object_poses[{name!r}]")
            dof = m.jnt_dofadr[m.body_jntadr[self._obj[names.index(name)]]]
            d.qvel[dof: dof + 6] = 0.0
        d.qpos[self._arm_qpos] = self.home_q
        d.qvel[self._arm_dof] = 0.0
        if self.info.gripper_range is not None:
            d.qpos[self._finger_qpos] = self._per_finger(self.info.gripper_range[1])
        self._substep_debt = 0.0
        self.command_joints(self.home_q, None if self.info.gripper_range is None else self.info.gripper_range[1])
        mujoco.mj_forward(m, d)
        return self.read_state()

    def command_joints(self, q_target, gripper_target: float | None = None) -> SentCommand:
        self._check()
        return send_command(self.info, q_target, gripper_target, self._send_arm,
                            self._send_fingers if len(self._finger_act) else None)

    def _send_arm(self, q: np.ndarray) -> None:
        self.data.ctrl[self._arm_act] = q

    def _send_fingers(self, opening: float) -> None:
        self.data.ctrl[self._finger_act] = self._per_finger(opening)

    def step(self, dt: float) -> None:
        self._check()
        self._substep_debt += dt / self.model.opt.timestep
        n = int(self._substep_debt + 1e-9)
        self._substep_debt -= n
        if n:
            mujoco.mj_step(self.model, self.data, nstep=n)

    def halt(self) -> None:
        if self._connected:
            self.command_joints(self.data.qpos[self._arm_qpos], None)

    def read_state(self) -> ArmState:
        self._check()
        d = self.data
        eef_pos = eef_quat = None
        if self._tcp is not None:
            eef_pos = d.site_xpos[self._tcp].copy()
            eef_quat = np.zeros(4)
            mujoco.mju_mat2Quat(eef_quat, d.site_xmat[self._tcp])
        obj = None
        if self._obj:
            obj = np.empty(7 * len(self._obj))
            for i, b in enumerate(self._obj):
                obj[7 * i: 7 * i + 3] = d.xpos[b]
                obj[7 * i + 3: 7 * i + 7] = d.xquat[b]
        grip = float(d.qpos[self._finger_qpos].sum()) if len(self._finger_qpos) else None
        return ArmState(
            joint_pos=d.qpos[self._arm_qpos].copy(), joint_vel=d.qvel[self._arm_dof].copy(),
            joint_effort=d.qfrc_actuator[self._arm_dof].copy(), timestamp_ns=now_ns(), gripper=grip,
            eef_pos=eef_pos, eef_quat=eef_quat, object_state=obj, sim_time=float(d.time),
        )
