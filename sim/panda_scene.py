"""Scene building with MjSpec: Panda (pybullet_data URDF) on a table, lights, cameras, actuators, task objects.

World frame: table top at z = 0, Panda base (panda_link0) at the origin, workspace in front along +x.
Tasks call `build_panda_scene()` then the `add_*` helpers, then `spec.compile()`.
Recipe for loading the URDF on mujoco 3.3.0 is from shared/specs/machine_notes.md §3.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import re
from dataclasses import dataclass

import mujoco
import numpy as np
import pybullet_data

from robotstack.core import kinematics as kin
from robotstack.core import rotations as rot

PREFIX = "panda/"
ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
TIMESTEP = 0.002

# The URDF gives every link a 0.1 kg m^2 placeholder inertia; for the wrist that is ~10-100x the real Panda
# (franka_description dynamics) and makes the wrist sluggish. Use realistic diagonal values there.
DISTAL_INERTIA = {
    "panda_link5": [0.035, 0.029, 0.009],
    "panda_link6": [0.002, 0.004, 0.005],
    "panda_link7": [0.0125, 0.010, 0.0048],
    "panda_hand": [0.001, 0.0025, 0.0017],
    "panda_leftfinger": [2.4e-5, 2.4e-5, 7.5e-6],
    "panda_rightfinger": [2.4e-5, 2.4e-5, 7.5e-6],
    "panda_link8": [1e-6, 1e-6, 1e-6],  # massless frames in the URDF, yet with the 0.1 placeholder
    "panda_grasptarget": [1e-6, 1e-6, 1e-6],
}

# position-servo gains: kp = I w^2 and kv ~ 1.6 I w (zeta ~ 0.8) for the joint-space inertia at the home pose
# (about [1.2, 1.9, 1.3, 1.0, 0.09, 0.11, 0.06] kg m^2 incl. armature); gravity is compensated on the bodies.
ARM_KP = np.array([3000.0, 3000.0, 2500.0, 2500.0, 600.0, 600.0, 400.0])
ARM_KV = np.array([110.0, 130.0, 100.0, 90.0, 14.0, 15.0, 8.0])
ARM_FORCE = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0]) * 2.0  # URDF efforts; x2 headroom for accel
FINGER_KP, FINGER_KV, FINGER_FORCE = 400.0, 20.0, 20.0

# collision bits: robot geoms do not collide with each other (contype 1 / conaffinity 2),
# everything else (table, objects) collides with the robot and with itself.
ROBOT_CONTYPE, ROBOT_CONAFFINITY = 1, 2
WORLD_CONTYPE, WORLD_CONAFFINITY = 3, 3

TABLE_HALF = (0.6, 0.6, 0.025)
TABLE_CENTER = (0.4, 0.0, -0.025)


@functools.lru_cache(maxsize=1)
def _panda_urdf_text() -> str:
    root = pybullet_data.getDataPath() + "/franka_panda"
    with open(root + "/panda.urdf") as f:
        urdf = f.read().replace("package://", "")
    ext = (
        f'<mujoco><compiler meshdir="{root}" discardvisual="true" strippath="false" '
        f'fusestatic="false"/></mujoco>'
    )
    # discardvisual: on mujoco 3.3.0 the visual and collision OBJs share file stems, so the "visual" geoms end up
    # with the collision meshes anyway; dropping them halves the triangles drawn per frame.
    return re.sub(r"<robot\b[^>]*>", lambda m: m.group(0) + ext, urdf, count=1)


def _look_at_quat(pos, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera quaternion (MuJoCo cameras look along their -z, y up)."""
    fwd = np.asarray(target, float) - np.asarray(pos, float)
    fwd /= np.linalg.norm(fwd)
    x = np.cross(fwd, up)
    if np.linalg.norm(x) < 1e-6:  # looking straight along `up`
        x = np.cross(fwd, (1.0, 0.0, 0.0))
    x /= np.linalg.norm(x)
    y = np.cross(x, fwd)
    return rot.mat_to_quat(np.stack([x, y, -fwd], axis=1))


@contextlib.contextmanager
def _silenced_stderr_fd():
    """MuJoCo's URDF parser prints ~20 harmless "Geom with duplicate name ''" warnings straight to fd 2 (the
    pybullet_data URDF leaves collision geoms unnamed). Parse errors still raise, so only the noise is lost."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@functools.lru_cache(maxsize=1)
def _panda_mjcf_text() -> str:
    """The URDF converted once to MJCF: later loads skip the URDF parser."""
    with _silenced_stderr_fd():
        spec = mujoco.MjSpec.from_string(_panda_urdf_text())
    spec.compile()  # to_xml needs a compiled spec
    return spec.to_xml()


def _load_panda() -> mujoco.MjSpec:
    panda = mujoco.MjSpec.from_string(_panda_mjcf_text())
    for body in panda.bodies:
        if body.name.startswith("panda_"):
            body.gravcomp = 1.0  # the real Panda controller compensates gravity too
        if body.name in DISTAL_INERTIA:
            body.inertia = DISTAL_INERTIA[body.name]
    for geom in panda.geoms:
        if geom.contype or geom.conaffinity:  # collision geoms (visual ones have 0/0)
            geom.contype, geom.conaffinity = ROBOT_CONTYPE, ROBOT_CONAFFINITY
            geom.friction = [1.0, 0.01, 0.0001]
            geom.condim = 4  # torsional friction: grasped cubes do not spin between the pads
    for joint in panda.joints:
        joint.armature = 0.05
        joint.damping = 1.0 if joint.name in ARM_JOINTS else 0.5
    hand = panda.body("panda_hand")
    hand.add_site(name="tcp", pos=[0.0, 0.0, kin.TCP_OFFSET], size=[0.005, 0, 0], rgba=[1, 0, 0, 0.0])
    return panda


def build_panda_scene() -> mujoco.MjSpec:
    """Scene spec with robot, table, floor, lights, cameras (`front`, `top`, `side`, `wrist`) and 9 actuators."""
    spec = mujoco.MjSpec()
    spec.modelname = "robotstack_panda"
    spec.compiler.degree = False  # the attached URDF's joint ranges are radians
    spec.option.timestep = TIMESTEP
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC  # better stiction for grasps and pushes
    spec.visual.quality.offsamples = 0  # fast llvmpipe rendering (machine_notes §2)
    spec.visual.quality.shadowsize = 1024
    spec.visual.global_.offwidth = 640
    spec.visual.global_.offheight = 480
    spec.stat.center = [0.45, 0.0, 0.2]
    spec.stat.extent = 1.0

    wb = spec.worldbody
    wb.add_geom(
        name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, pos=[0, 0, -0.75], size=[3, 3, 0.1],
        rgba=[0.35, 0.38, 0.42, 1], contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY,
    )
    wb.add_geom(
        name="table", type=mujoco.mjtGeom.mjGEOM_BOX, pos=list(TABLE_CENTER), size=list(TABLE_HALF),
        rgba=[0.72, 0.62, 0.5, 1], friction=[0.6, 0.005, 0.0001],
        contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY,
    )
    spec.visual.headlight.diffuse = [0.25, 0.25, 0.25]
    spec.visual.headlight.ambient = [0.2, 0.2, 0.2]
    spec.visual.headlight.specular = [0.0, 0.0, 0.0]
    wb.add_light(name="key", pos=[0.8, -0.6, 1.8], dir=[-0.3, 0.3, -1.0], diffuse=[0.45, 0.45, 0.45],
                 specular=[0.1, 0.1, 0.1], directional=True, castshadow=False)
    wb.add_light(name="fill", pos=[-0.5, 0.8, 1.5], dir=[0.5, -0.5, -1.0], diffuse=[0.2, 0.2, 0.2],
                 specular=[0.0, 0.0, 0.0], directional=True, castshadow=False)
    for name, pos, target in (
        ("front", (1.35, 0.0, 0.55), (0.45, 0.0, 0.05)),
        ("top", (0.5, 0.0, 1.25), (0.5, 0.0, 0.0)),
        ("side", (0.45, -1.5, 0.8), (0.4, 0.0, 0.25)),
    ):
        up = (1.0, 0.0, 0.0) if name == "top" else (0.0, 0.0, 1.0)
        # top camera: image "up" is +x (away from the robot)
        wb.add_camera(name=name, pos=list(pos), quat=_look_at_quat(pos, target, up=up), fovy=50.0)

    frame = wb.add_frame(pos=[0.0, 0.0, 0.0])
    panda = _load_panda()
    frame.attach_body(panda.body("panda_link0"), PREFIX, "")
    # wrist camera (added after attach so it is plainly named "wrist"): beside the hand like a flange-mounted
    # RealSense, looking past the fingertips
    cam_pos = np.array([0.07, 0.0, 0.01])
    cam_quat = _look_at_quat(cam_pos, (0.0, 0.0, kin.TCP_OFFSET + 0.05), up=(-1.0, 0.0, 0.0))
    spec.body(PREFIX + "panda_hand").add_camera(name="wrist", pos=cam_pos, quat=cam_quat, fovy=75.0)

    for i, jname in enumerate(ARM_JOINTS):
        _add_position_servo(spec, jname, ARM_KP[i], ARM_KV[i], ARM_FORCE[i],
                            (kin.JOINT_LOWER[i], kin.JOINT_UPPER[i]))
    for jname in FINGER_JOINTS:
        _add_position_servo(spec, jname, FINGER_KP, FINGER_KV, FINGER_FORCE, (0.0, kin.FINGER_MAX))
    return spec


def _add_position_servo(spec, joint, kp, kv, force, ctrlrange) -> None:
    """Position servo by hand (mujoco 3.3.0 lacks set_to_position): force = kp*(ctrl - q) - kv*qdot."""
    act = spec.add_actuator(name=PREFIX + joint + "_act", target=PREFIX + joint)
    act.trntype = mujoco.mjtTrn.mjTRN_JOINT
    act.gaintype = mujoco.mjtGain.mjGAIN_FIXED
    act.biastype = mujoco.mjtBias.mjBIAS_AFFINE
    act.gainprm[0] = kp
    act.biasprm[1] = -kp
    act.biasprm[2] = -kv
    act.ctrllimited = True
    act.ctrlrange = list(ctrlrange)
    act.forcelimited = True
    act.forcerange = [-force, force]


# --- task-object helpers ---------------------------------------------------------------------------------
def add_box(spec, name: str, half_size, rgba, mass: float = 0.1, pos=(0.5, 0.0, 0.02)) -> None:
    """A free-floating box body `name` with one collision geom `name`."""
    body = spec.worldbody.add_body(name=name, pos=list(pos))
    body.add_freejoint(name=name + "_free")
    body.add_geom(
        name=name, type=mujoco.mjtGeom.mjGEOM_BOX, size=list(half_size), rgba=list(rgba), mass=mass,
        friction=[1.0, 0.01, 0.0001], condim=4, contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY,
    )


# T-block geometry (metres): a bar on top of a stem, like the Push-T benchmark block
T_BAR = (0.16, 0.04)  # length (along x), width (along y)
T_STEM = (0.04, 0.12)  # width (along x), length (along y)
T_HEIGHT = 0.03


def t_block_polygons() -> list[np.ndarray]:
    """The T's two rectangles in its body frame, each (4, 2) corners (x, y), counter-clockwise.

    Body origin = centre of mass (so the block turns about its origin when pushed through it).
    """
    bar_y0 = T_STEM[1]  # stem spans y in [0, stem_len], bar on top of it
    rects = [
        (-T_BAR[0] / 2, bar_y0, T_BAR[0] / 2, bar_y0 + T_BAR[1]),
        (-T_STEM[0] / 2, 0.0, T_STEM[0] / 2, T_STEM[1]),
    ]
    areas = [(r[2] - r[0]) * (r[3] - r[1]) for r in rects]
    com_y = sum(a * (r[1] + r[3]) / 2 for a, r in zip(areas, rects)) / sum(areas)
    return [np.array([[x0, y0 - com_y], [x1, y0 - com_y], [x1, y1 - com_y], [x0, y1 - com_y]])
            for x0, y0, x1, y1 in rects]


def add_t_block(spec, name: str, rgba, mass: float = 0.2, pos=(0.5, 0.0, T_HEIGHT / 2)) -> None:
    """Free T-shaped body made of two boxes; body origin at the T's centre of mass."""
    body = spec.worldbody.add_body(name=name, pos=list(pos))
    body.add_freejoint(name=name + "_free")
    polys = t_block_polygons()
    total_area = sum(np.ptp(p[:, 0]) * np.ptp(p[:, 1]) for p in polys)
    for part, poly in zip(("bar", "stem"), polys):
        center = poly.mean(axis=0)
        half = (np.ptp(poly[:, 0]) / 2, np.ptp(poly[:, 1]) / 2, T_HEIGHT / 2)
        area = np.ptp(poly[:, 0]) * np.ptp(poly[:, 1])
        body.add_geom(
            name=f"{name}_{part}", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[center[0], center[1], 0.0],
            size=list(half), rgba=list(rgba), mass=mass * area / total_area, friction=[0.8, 0.01, 0.0001],
            condim=3, contype=WORLD_CONTYPE, conaffinity=WORLD_CONAFFINITY,
        )


def add_target_marker(spec, name: str, rgba, shape: str = "sphere", size=(0.02,), t_shape: bool = False) -> None:
    """Non-colliding, massless mocap marker body `name` made of sites (moved via data.mocap_pos/quat)."""
    body = spec.worldbody.add_body(name=name, mocap=True, pos=[0.5, 0.0, 0.0])
    if t_shape:
        for part, poly in zip(("bar", "stem"), t_block_polygons()):
            center = poly.mean(axis=0)
            half = (np.ptp(poly[:, 0]) / 2, np.ptp(poly[:, 1]) / 2, 0.001)
            body.add_site(name=f"{name}_{part}", type=mujoco.mjtGeom.mjGEOM_BOX, pos=[center[0], center[1], 0.0],
                          size=list(half), rgba=list(rgba), group=0)
        return
    stype = {"sphere": mujoco.mjtGeom.mjGEOM_SPHERE, "cylinder": mujoco.mjtGeom.mjGEOM_CYLINDER,
             "box": mujoco.mjtGeom.mjGEOM_BOX}[shape]
    body.add_site(name=name, type=stype, size=list(size) + [0.0] * (3 - len(size)), rgba=list(rgba), group=0)


# --- compiled-model handles ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PandaHandles:
    """Indices into a compiled scene, looked up once."""

    arm_qpos: np.ndarray  # (7,) qpos addresses
    arm_dof: np.ndarray  # (7,) dof addresses
    finger_qpos: np.ndarray  # (2,)
    arm_act: np.ndarray  # (7,) actuator ids
    finger_act: np.ndarray  # (2,)
    tcp_site: int
    robot_geoms: frozenset  # geom ids of the robot (for contact checks)

    @classmethod
    def from_model(cls, model: mujoco.MjModel) -> "PandaHandles":
        jid = lambda n: model.joint(PREFIX + n).id  # noqa: E731
        aid = lambda n: model.actuator(PREFIX + n + "_act").id  # noqa: E731
        robot_bodies = {i for i in range(model.nbody) if model.body(i).name.startswith(PREFIX)}
        return cls(
            arm_qpos=np.array([model.jnt_qposadr[jid(n)] for n in ARM_JOINTS]),
            arm_dof=np.array([model.jnt_dofadr[jid(n)] for n in ARM_JOINTS]),
            finger_qpos=np.array([model.jnt_qposadr[jid(n)] for n in FINGER_JOINTS]),
            arm_act=np.array([aid(n) for n in ARM_JOINTS]),
            finger_act=np.array([aid(n) for n in FINGER_JOINTS]),
            tcp_site=model.site(PREFIX + "tcp").id,
            robot_geoms=frozenset(g for g in range(model.ngeom) if model.geom_bodyid[g] in robot_bodies),
        )


def free_joint_qpos_adr(model: mujoco.MjModel, body_name: str) -> int:
    """qpos address of the free joint of body `body_name` (pos 3 + quat 4)."""
    return int(model.jnt_qposadr[model.body(body_name).jntadr[0]])
