"""Franka Panda simulated in PyBullet (DIRECT): a deliberately different physics engine from training (MuJoCo).

Use it to check that a policy trained in MuJoCo survives another contact model, through the same servo core and
wire protocol a real arm uses. The task's objects come in as a plain list of dicts (see ``ObjectSpec`` in
hardware/drivers/base.py) that the caller derives from the MuJoCo task, so this module never imports sim/.

Control: position control of the 7 arm joints (pybullet's motor constraint, forces capped at the URDF efforts
times ``force_scale``) and of both fingers (each gets ``per_finger_opening`` of the requested total opening). Physics runs at
``physics_hz`` (default 1 kHz); ``step(dt)`` runs as many substeps as fit in ``dt`` and carries the remainder,
so a 1 kHz servo gets one substep per tick and a 240 Hz engine setting gets 240 per simulated second.
State is read back through pybullet (joint states, the hand link pose) — never from the command.

World frame = robot base frame (panda_link0 at the origin), table top at z = 0 like sim/panda_scene.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pybullet as pb
import pybullet_data

from hardware.drivers.base import (PANDA_JOINTS, ArmState, DriverError, ObjectSpec, SentCommand, as_joint_vector,
                                   check_connected, now_ns, panda_info, parse_objects, pose_of, send_command)
from robotstack.core.rotations import quat_wxyz_to_xyzw, quat_xyzw_to_wxyz
from robotstack.core import kinematics as kin
from robotstack.core.ee_action import GRIPPER_OPEN, per_finger_opening

ARM_JOINTS = PANDA_JOINTS
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
PANDA_EFFORT = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])  # URDF efforts, Nm
# same table as sim/panda_scene.py (TABLE_CENTER / TABLE_HALF): top at z = 0
DEFAULT_TABLE = {"name": "table", "shape": "box", "size": [0.6, 0.6, 0.025], "pose": [0.4, 0.0, -0.025],
                 "mass": 0.0, "friction": 0.6, "rgba": [0.72, 0.62, 0.5, 1.0]}


def bullet_frictions(specs: list[ObjectSpec]) -> dict[str, float]:
    """Each body's Bullet lateral friction, translated from the scene's MuJoCo frictions.

    The engines combine a contact's two frictions differently: MuJoCo takes the larger (its default), Bullet the
    product. Copied as they are, a MuJoCo cube (1.0) on the table (0.6) slides on 1.0 in MuJoCo and on 0.6 in
    Bullet: pushed at 0.8 m/s it slid 5.4 cm in Bullet vs 3.4 cm in MuJoCo (tests/hardware/test_friction_parity.py).
    The table, the lowest-friction surface, gets 1.0 (neutral under a product) and every other body max(own,
    table's), so every object-table contact combines to MuJoCo's value exactly; object-object and object-pad
    (pads 1.0) contacts are exact for objects at 1.0 (the cubes) and give the object's own value below 1.0 (the T
    block, 0.8, against the pads: MuJoCo 1.0)."""
    table = next((s.friction for s in specs if s.name == "table"), None)
    if table is None:
        return {s.name: s.friction for s in specs}
    return {s.name: 1.0 if s.name == "table" else max(s.friction, table) for s in specs}


class PyBulletPandaDriver:
    """ArmDriver over a private pybullet DIRECT client.

    objects: list of object dicts (name, shape, size, pose, mass, friction, rgba[, parts, collide]).
    Dynamic objects (mass > 0, colliding) are reported in ``object_state`` in list order; static ones and
    visual-only markers are scenery. ``table=True`` adds the sim's table unless an object is named "table".
    """

    def __init__(self, objects: list[dict] | None = None, *, physics_hz: float = 1000.0, table: bool = True,
                 home_q=None, force_scale: float = 2.0, position_gain: float = 0.1, velocity_gain: float = 1.0,
                 finger_force: float = 40.0, name: str = "pybullet_panda"):
        specs = parse_objects(objects)
        if table and not any(s.name == "table" for s in specs):
            specs.insert(0, ObjectSpec.from_dict(DEFAULT_TABLE, "table"))
        self._specs = specs
        self._friction = bullet_frictions(specs)
        self._dynamic = [s for s in specs if s.dynamic]
        self.info = panda_info(name, simulated=True, object_names=[s.name for s in self._dynamic],
                               vendor=f"pybullet {pb.getAPIVersion()}", rate_hz=1000.0)
        if physics_hz <= 0:
            raise DriverError(f"physics_hz={physics_hz}: expected > 0")
        self.physics_hz = float(physics_hz)
        self.home_q = as_joint_vector(kin.HOME_Q if home_q is None else home_q, 7, "home_q")
        self.arm_force = PANDA_EFFORT * float(force_scale)
        self.position_gain, self.velocity_gain = float(position_gain), float(velocity_gain)
        self.finger_force = float(finger_force)
        self._cid: int | None = None
        self._robot = -1
        self._arm_idx: list[int] = []
        self._finger_idx: list[int] = []
        self._hand_link = -1
        self._bodies: dict[str, int] = {}
        self._substep_debt = 0.0
        self.sim_steps = 0
        self._q_cmd = self.home_q.copy()
        self._grip_cmd = GRIPPER_OPEN

    # --- lifecycle ----------------------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._cid is not None and pb.isConnected(physicsClientId=self._cid)

    def connect(self) -> None:
        if self.is_connected:
            return
        cid = pb.connect(pb.DIRECT)
        if cid < 0:
            raise DriverError("pybullet: could not open a DIRECT client")
        self._cid = cid
        pb.setGravity(0, 0, -9.81, physicsClientId=cid)
        pb.setTimeStep(1.0 / self.physics_hz, physicsClientId=cid)
        pb.setPhysicsEngineParameter(deterministicOverlappingPairs=1, physicsClientId=cid)
        self._robot = pb.loadURDF(pybullet_data.getDataPath() + "/franka_panda/panda.urdf", [0, 0, 0],
                                  useFixedBase=True, flags=pb.URDF_USE_INERTIA_FROM_FILE, physicsClientId=cid)
        names = {}
        for j in range(pb.getNumJoints(self._robot, physicsClientId=cid)):
            ji = pb.getJointInfo(self._robot, j, physicsClientId=cid)
            names[ji[1].decode()] = j
            if ji[12].decode() == "panda_hand":
                self._hand_link = j
        self._arm_idx = [names[n] for n in ARM_JOINTS]
        self._finger_idx = [names[n] for n in FINGER_JOINTS]
        for j in self._finger_idx:  # grippy pads, like the MuJoCo scene's friction 1.0
            pb.changeDynamics(self._robot, j, lateralFriction=1.0, spinningFriction=0.001, physicsClientId=cid)
        self._bodies = {s.name: self._create_body(s) for s in self._specs}
        self.reset()

    def disconnect(self) -> None:
        if self._cid is not None:
            try:
                pb.disconnect(physicsClientId=self._cid)
            except pb.error:
                pass
        self._cid = None

    def _client(self) -> int:
        check_connected(self.is_connected, self.info)
        return self._cid

    # --- scene ---------------------------------------------------------------------------------------------
    def _shape_kwargs(self, shape: str, size) -> dict[str, Any]:
        if shape == "box":
            return {"shapeType": pb.GEOM_BOX, "halfExtents": list(size)}
        if shape == "sphere":
            return {"shapeType": pb.GEOM_SPHERE, "radius": size[0]}
        return {"shapeType": pb.GEOM_CYLINDER, "radius": size[0], "height": 2 * size[1]}

    def _create_body(self, s: ObjectSpec) -> int:
        cid = self._cid
        if s.shape == "compound":
            parts = [dict(p) for p in s.parts]
            kw = [self._shape_kwargs(p["shape"], p["size"]) for p in parts]
            arr = dict(
                shapeTypes=[k["shapeType"] for k in kw],
                halfExtents=[k.get("halfExtents", [0, 0, 0]) for k in kw],
                radii=[k.get("radius", 0.0) for k in kw],
                lengths=[k.get("height", 0.0) for k in kw],
            )
            pos = [list(np.asarray(p.get("pos", (0, 0, 0)), float)) for p in parts]
            orn = [list(quat_wxyz_to_xyzw(p.get("quat", (1, 0, 0, 0)))) for p in parts]
            col = (pb.createCollisionShapeArray(collisionFramePositions=pos, collisionFrameOrientations=orn,
                                                physicsClientId=cid, **arr) if s.collide else -1)
            vis = pb.createVisualShapeArray(visualFramePositions=pos, visualFrameOrientations=orn,
                                            physicsClientId=cid, **arr)
        else:
            kw = self._shape_kwargs(s.shape, s.size)
            col = pb.createCollisionShape(physicsClientId=cid, **kw) if s.collide else -1
            vis_kw = dict(kw)
            if "height" in vis_kw:  # createVisualShape names the cylinder height "length"
                vis_kw["length"] = vis_kw.pop("height")
            vis = pb.createVisualShape(rgbaColor=list(s.rgba), physicsClientId=cid, **vis_kw)
        mass = s.mass if s.collide else 0.0
        body = pb.createMultiBody(baseMass=mass, baseCollisionShapeIndex=col, baseVisualShapeIndex=vis,
                                  basePosition=list(s.pose[:3]), baseOrientation=list(quat_wxyz_to_xyzw(s.pose[3:])),
                                  physicsClientId=cid)
        pb.changeVisualShape(body, -1, rgbaColor=list(s.rgba), physicsClientId=cid)
        if s.collide:
            pb.changeDynamics(body, -1, lateralFriction=self._friction[s.name], spinningFriction=0.001,
                              rollingFriction=0.0001, physicsClientId=cid)
        return body

    # --- ArmDriver -----------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None, object_poses: dict[str, Any] | None = None) -> ArmState:
        """Arm to ``home_q``, fingers open, objects to ``object_poses`` (name -> [x,y,z(,qw,qx,qy,qz)]) or their
        list pose. Deterministic; ``seed`` is accepted for the interface and unused (no randomness here)."""
        cid = self._client()
        poses = {}
        for name, value in (object_poses or {}).items():
            if name not in self._bodies:
                raise DriverError(f"reset: unknown object {name!r}; known: {sorted(self._bodies)}")
            poses[name] = pose_of(value, f"object_poses[{name!r}]")
        for j, q in zip(self._arm_idx, self.home_q):
            pb.resetJointState(self._robot, j, float(q), 0.0, physicsClientId=cid)
        for j in self._finger_idx:
            pb.resetJointState(self._robot, j, per_finger_opening(GRIPPER_OPEN), 0.0, physicsClientId=cid)
        for s in self._specs:
            pose = poses.get(s.name, s.pose)
            pb.resetBasePositionAndOrientation(self._bodies[s.name], list(pose[:3]),
                                               list(quat_wxyz_to_xyzw(pose[3:])), physicsClientId=cid)
            pb.resetBaseVelocity(self._bodies[s.name], [0, 0, 0], [0, 0, 0], physicsClientId=cid)
        self._substep_debt = 0.0
        self.command_joints(self.home_q, GRIPPER_OPEN)
        return self.read_state()

    def command_joints(self, q_target, gripper_target: float | None = None) -> SentCommand:
        self._client()
        return send_command(self.info, q_target, gripper_target, self._send_arm, self._send_fingers)

    def _send_arm(self, q: np.ndarray) -> None:
        pb.setJointMotorControlArray(
            self._robot, self._arm_idx, pb.POSITION_CONTROL, targetPositions=q.tolist(),
            targetVelocities=[0.0] * 7, forces=self.arm_force.tolist(), positionGains=[self.position_gain] * 7,
            velocityGains=[self.velocity_gain] * 7, physicsClientId=self._cid,
        )
        self._q_cmd = q

    def _send_fingers(self, opening: float) -> None:
        self._grip_cmd = opening
        pb.setJointMotorControlArray(
            self._robot, self._finger_idx, pb.POSITION_CONTROL, targetPositions=[per_finger_opening(opening)] * 2,
            forces=[self.finger_force] * 2, physicsClientId=self._cid,
        )

    def step(self, dt: float) -> None:
        cid = self._client()
        self._substep_debt += dt * self.physics_hz
        n = int(self._substep_debt + 1e-9)
        self._substep_debt -= n
        for _ in range(n):
            pb.stepSimulation(physicsClientId=cid)
        self.sim_steps += n

    def halt(self) -> None:
        """Hold where the arm is now (position targets = measured joints)."""
        if self.is_connected:
            self.command_joints(self.read_state().joint_pos, None)

    def read_state(self) -> ArmState:
        cid = self._client()
        js = pb.getJointStates(self._robot, self._arm_idx + self._finger_idx, physicsClientId=cid)
        q = np.array([s[0] for s in js[:7]])
        dq = np.array([s[1] for s in js[:7]])
        tau = np.array([s[3] for s in js[:7]])
        grip = float(js[7][0] + js[8][0])
        link = pb.getLinkState(self._robot, self._hand_link, computeForwardKinematics=True, physicsClientId=cid)
        hand_pos, hand_orn = np.array(link[4]), link[5]
        R = np.array(pb.getMatrixFromQuaternion(hand_orn)).reshape(3, 3)
        obj = None
        if self._dynamic:
            obj = np.empty(7 * len(self._dynamic))
            for i, s in enumerate(self._dynamic):
                pos, orn = pb.getBasePositionAndOrientation(self._bodies[s.name], physicsClientId=cid)
                obj[7 * i: 7 * i + 3] = pos
                obj[7 * i + 3: 7 * i + 7] = quat_xyzw_to_wxyz(orn)
        return ArmState(
            joint_pos=q, joint_vel=dq, joint_effort=tau, timestamp_ns=now_ns(), gripper=grip,
            eef_pos=hand_pos + R[:, 2] * kin.TCP_OFFSET, eef_quat=quat_xyzw_to_wxyz(hand_orn), object_state=obj,
            sim_time=self.sim_steps / self.physics_hz,
        )

    # --- extras for tests and tools -------------------------------------------------------------------------
    def body_id(self, name: str) -> int:
        return self._bodies[name]

    @property
    def client_id(self) -> int:
        return self._client()
