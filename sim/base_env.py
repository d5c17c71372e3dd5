"""One gymnasium Env for every Panda task; a task is a small object that supplies hooks (composition).

Control: the end-effector action contract of robotstack/core/ee_action.py (action [dx, dy, dz, (dyaw,) gripper]
in [-1, 1] moves a Cartesian TCP target by at most `max_step_pos` metres (and `max_step_yaw` rad) per control step,
inside the workspace box; gripper > 0 closes); `kinematics.solve_ik` turns the target into joint position targets
for the arm servos. ``action_mode="absolute"`` (``sim.make(task, action_mode="absolute")``) makes the action the
TCP target itself, normalised over the workspace box (the contract's absolute mode). ``servo={...}`` (the task
variants ``<task>@servo``) moves the arm as the arm server's servo does instead of reaching each target within the
step (ServoArm).
Observation keys come from robotstack.core.keys (see docs/CONTRACTS.md).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium as gym
import mujoco
import numpy as np

from robotstack.core import ee_action as ee
from robotstack.core import keys
from robotstack.core import kinematics as kin
from robotstack.core import rotations as rot
from robotstack.core.config import from_dict, to_dict
from robotstack.core.errors import ConfigError
from robotstack.core.joint_motion import DEFAULT_ACCEL_SCALE, DEFAULT_VELOCITY_SCALE, JointMotion
from sim import panda_scene as ps

YAW_LIMIT = ee.YAW_LIMIT  # the experts plan yaws inside it



@dataclass(frozen=True)
class Randomize:
    """Domain-randomization knobs (``sim.make(..., randomize={...})``), all off by default; read strictly by
    robotstack.core.config (unknown keys and wrong types fail naming the key).

    object_pose: extra uniform xy jitter (m) on object start poses; friction: relative range of the sliding
    friction scale (0.2 -> x U[0.8, 1.2]); mass: relative range of object mass scale; action_latency_steps:
    actions take effect this many control steps late; obs_noise: Gaussian std added to state observations.
    """

    object_pose: float = 0.0
    friction: float = 0.0
    mass: float = 0.0
    action_latency_steps: int = 0
    obs_noise: float = 0.0

    def __post_init__(self) -> None:  # domain checks; keys and types are the reader's job
        for k, v in to_dict(self).items():
            if not v >= 0:
                raise ConfigError(f"randomize: {k}={v!r}: expected a non-negative number")
        for k in ("friction", "mass"):
            if getattr(self, k) >= 1:
                raise ConfigError(f"randomize: {k}={getattr(self, k)!r}: expected a relative range < 1")

    @classmethod
    def read(cls, randomize: "dict | Randomize | None") -> "Randomize":
        return randomize if isinstance(randomize, cls) else from_dict(cls, randomize or {}, "randomize")


@dataclass(frozen=True)
class ServoArm:
    """The arm moved as the arm server's servo moves it (``sim.make(..., servo={...})``, or the task name
    ``<task>@servo`` for the defaults): at every physics step the commanded joint position approaches the IK target
    by robotstack.core.joint_motion (the servo's own interpolation) under these fractions of the Panda's rated joint
    velocity and acceleration, instead of being the target at once. The defaults are the arm server's
    (hardware/servo.py ServoConfig). Only the interpolation is shared: the servo's lead, joint-range and workspace
    clamps are safety bounds that ordinary motion does not reach. Read strictly (unknown keys fail by name)."""

    velocity_scale: float = DEFAULT_VELOCITY_SCALE
    accel_scale: float = DEFAULT_ACCEL_SCALE

    def __post_init__(self) -> None:
        for k, v in to_dict(self).items():
            if not 0 < v <= 1:
                raise ConfigError(f"servo: {k}={v!r}: expected a fraction of the rated limit in (0, 1]")

    @classmethod
    def read(cls, servo: "dict | ServoArm | None") -> "ServoArm | None":
        return servo if isinstance(servo, cls) or servo is None else from_dict(cls, servo, "servo")


class Task(Protocol):
    """Hooks a task supplies. `env` is the PandaEnv; tasks read/write env.model / env.data through its helpers."""

    name: str
    max_episode_steps: int
    use_yaw: bool  # action has a dyaw dim
    object_bodies: tuple[str, ...]  # free bodies reported in object_state (pos + quat each)
    goal_dim: int
    success_tolerance: dict  # documented in task_spec()
    success_criterion: list | None  # is_success as data (robotstack/core/success.py), None: not from state

    def build(self, spec: mujoco.MjSpec) -> None: ...  # add objects and markers to the scene

    def reset(self, env: "PandaEnv", rng: np.random.Generator) -> None: ...  # place objects, choose the goal

    def goal(self, env: "PandaEnv") -> np.ndarray: ...

    def is_success(self, env: "PandaEnv") -> bool: ...

    def shaped_reward(self, env: "PandaEnv") -> float: ...


class PandaEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: Task,
        *,
        seed: int | None = None,
        cameras: tuple[str, ...] = (),
        image_size: int = 96,
        control_hz: float = 20.0,
        physics_hz: float = 500.0,
        max_episode_steps: int | None = None,
        randomize: dict | Randomize | None = None,
        servo: dict | ServoArm | None = None,
        name: str | None = None,
        shaped_reward: bool = False,
        max_step_pos: float = ee.MAX_STEP_POS,
        max_step_yaw: float = ee.MAX_STEP_YAW,
        action_mode: str = ee.DELTA,
        ik_iters: int = 2,
        render_mode: str | None = "rgb_array",
        render_camera: str = "front",
        render_size: tuple[int, int] = (240, 320),
    ):
        self.task = task
        self.name = name or task.name  # the registry name: a variant (push@servo) is another task to stores and runs
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.control_hz = float(control_hz)
        self.n_substeps = int(round(physics_hz / control_hz))
        if self.n_substeps < 1 or abs(self.n_substeps * control_hz - physics_hz) > 1e-6 * physics_hz:
            raise ConfigError(f"physics_hz={physics_hz} must be an integer multiple of control_hz={control_hz}")
        self.max_episode_steps = int(max_episode_steps or task.max_episode_steps)
        self.randomize = Randomize.read(randomize)
        self.servo = ServoArm.read(servo)
        # the servo arm: its commanded joint position and velocity, stepped at the physics rate
        self._motion = None if self.servo is None else JointMotion(
            kin.DQ_MAX * self.servo.velocity_scale, kin.DDQ_MAX * self.servo.accel_scale, physics_hz)
        self._q_servo, self._v_servo = kin.HOME_Q.copy(), np.zeros(7)
        self.use_shaped_reward = bool(shaped_reward)
        self.max_step_pos = float(max_step_pos)
        self.max_step_yaw = float(max_step_yaw)
        self.ik_iters = int(ik_iters)
        self.render_mode = render_mode
        self.render_camera = render_camera
        self.render_size = tuple(render_size)
        self.metadata = {**self.metadata, "render_fps": self.control_hz}

        spec = ps.build_panda_scene()
        spec.option.timestep = 1.0 / physics_hz
        task.build(spec)
        self.model = spec.compile()
        self.data = mujoco.MjData(self.model)
        self.h = ps.PandaHandles.from_model(self.model)
        for cam in self.cameras + (render_camera,):
            if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                names = [self.model.camera(i).name for i in range(self.model.ncam)]
                raise ConfigError(f"camera {cam!r} not in the scene; expected one of {names}")
        self._obj_body = [self.model.body(b).id for b in task.object_bodies]
        self._obj_geoms = [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] in self._obj_body]
        self._nominal_friction = self.model.geom_friction.copy()
        self._nominal_mass = self.model.body_mass.copy()
        self._nominal_inertia = self.model.body_inertia.copy()
        self._renderers: dict[tuple[int, int], mujoco.Renderer] = {}

        self.action_spec = ee.EEActionSpec(max_step_pos=self.max_step_pos, use_yaw=task.use_yaw,
                                           max_step_yaw=self.max_step_yaw if task.use_yaw else 0.0,
                                           mode=ee.check_mode(action_mode, f"sim.make({task.name!r}) action_mode"))
        self.action_names = self.action_spec.names
        self.action_space = gym.spaces.Box(-1.0, 1.0, (len(self.action_names),), np.float32)
        # finite, generous bounds (gymnasium warns about infinite ones); obs noise never reaches them
        box = lambda n, lim: gym.spaces.Box(-lim, lim, (n,), np.float32)  # noqa: E731
        spaces = {
            keys.JOINT_POS: box(7, 2 * np.pi),
            keys.JOINT_VEL: box(7, 100.0),
            keys.GRIPPER: box(1, 1.0),
            keys.EEF_POS: box(3, 10.0),
            keys.EEF_QUAT: box(4, 2.0),
            keys.OBJECT_STATE: box(7 * len(task.object_bodies), 10.0),
            keys.GOAL: box(task.goal_dim, 10.0),
        }
        for cam in self.cameras:
            spaces[keys.image_key(cam)] = gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)

        self.target_pos = np.zeros(3)
        self.target_yaw = 0.0
        self.q_cmd = kin.HOME_Q.copy()
        self.gripper_cmd = self.action_spec.gripper_open  # total opening (m), the contract's one gripper unit
        self.steps = 0
        self._latency_queue: collections.deque = collections.deque()
        if seed is not None:
            self.reset(seed=seed)

    # --- gym API ---------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._apply_dynamics_randomization(rng)

        # start pose: a random TCP position above the workspace, pointing down, yaw 0 (cold-start IK)
        start = np.array([0.45, 0.0, 0.28]) + rng.uniform(-1, 1, 3) * np.array([0.05, 0.08, 0.04])
        q0 = kin.solve_ik(kin.HOME_Q, start, 0.0, iters=60)
        t = ee.initial_target(self.action_spec, kin.forward_kinematics(q0)[2], 0.0)
        d.qpos[self.h.arm_qpos] = q0
        d.qpos[self.h.finger_qpos] = ee.per_finger_opening(t.gripper)
        d.ctrl[self.h.arm_act] = q0
        d.ctrl[self.h.finger_act] = ee.per_finger_opening(t.gripper)
        self.q_cmd = q0
        self._q_servo, self._v_servo = q0.copy(), np.zeros(7)
        self.target_pos, self.target_yaw, self.gripper_cmd = t.pos, t.yaw, t.gripper

        self.task.reset(self, rng)
        self._jitter_object_poses(rng)
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=10)  # let resting contacts settle (20 ms)
        self.steps = 0
        lat = self.randomize.action_latency_steps
        idle = ee.hold_action(self.action_spec, t)  # delta: zeros + open; absolute: the reset target
        self._latency_queue = collections.deque([idle] * lat)
        return self._get_obs(), self._info(False)

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_space.shape), -1.0, 1.0)
        if self._latency_queue:  # simulated action latency: apply the action from `lat` steps ago
            self._latency_queue.append(a)
            a = self._latency_queue.popleft()
        self._apply_action(a)
        if self._motion is None:
            mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        else:
            self._step_servo_arm()
        self.steps += 1
        success = bool(self.task.is_success(self))
        reward = float(success)
        if self.use_shaped_reward:
            reward = float(self.task.shaped_reward(self)) + (1.0 if success else 0.0)
        truncated = self.steps >= self.max_episode_steps
        return self._get_obs(), reward, success, truncated, self._info(success)

    def render(self):
        return self.render_camera_image(self.render_camera, *self.render_size)

    def close(self):
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()

    # --- helpers for tasks, experts and tests ---------------------------------------------------------------
    @property
    def tcp_pos(self) -> np.ndarray:
        return self.data.site_xpos[self.h.tcp_site].copy()

    @property
    def gripper_opening(self) -> float:
        return float(self.data.qpos[self.h.finger_qpos].sum())

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.xpos[self.model.body(name).id].copy()

    def body_yaw(self, name: str) -> float:
        return rot.mat_yaw(self.data.xmat[self.model.body(name).id].reshape(3, 3))

    def set_free_body_pose(self, name: str, pos, yaw: float = 0.0) -> None:
        adr = ps.free_joint_qpos_adr(self.model, name)
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = rot.yaw_to_quat(yaw)
        dof = self.model.jnt_dofadr[self.model.body(name).jntadr[0]]
        self.data.qvel[dof : dof + 6] = 0.0

    def set_mocap_pose(self, name: str, pos, yaw: float = 0.0) -> None:
        mid = self.model.body(name).mocapid[0]
        self.data.mocap_pos[mid] = pos
        self.data.mocap_quat[mid] = rot.yaw_to_quat(yaw)

    def in_contact(self, geom_a: set, geom_b: set) -> bool:
        d = self.data
        for i in range(d.ncon):
            g1, g2 = d.contact.geom1[i], d.contact.geom2[i]
            if (g1 in geom_a and g2 in geom_b) or (g1 in geom_b and g2 in geom_a):
                return True
        return False

    def warning_counts(self) -> dict[str, int]:
        """Non-zero MuJoCo warning counters (empty dict = clean)."""
        return {
            mujoco.mjtWarning(i).name: int(self.data.warning[i].number)
            for i in range(len(self.data.warning))
            if self.data.warning[i].number
        }

    def render_camera_image(self, camera: str, height: int, width: int) -> np.ndarray:
        r = self._renderers.get((height, width))
        if r is None:  # one renderer per size, reused (context creation costs 0.1-0.4 s)
            r = self._renderers[(height, width)] = mujoco.Renderer(self.model, height, width)
        r.update_scene(self.data, camera=camera)
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0  # shadows cost ~4x on llvmpipe
        r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        return r.render()

    def task_spec(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "control_hz": self.control_hz,
            "physics_hz": self.control_hz * self.n_substeps,
            "action_names": list(self.action_names),
            "action_dim": len(self.action_names),
            "max_step_pos_m": self.action_spec.max_step_pos,
            "max_step_yaw_rad": self.action_spec.max_step_yaw,
            "action_mode": self.action_spec.mode,
            "obs_shapes": {k: list(s.shape) for k, s in self.observation_space.spaces.items()},
            "obs_dtypes": {k: str(s.dtype) for k, s in self.observation_space.spaces.items()},
            "max_episode_steps": self.max_episode_steps,
            "cameras": list(self.cameras),
            "image_size": self.image_size,
            "object_bodies": list(self.task.object_bodies),
            "success_tolerance": dict(self.task.success_tolerance),
            "randomize": to_dict(self.randomize),
            "servo": None if self.servo is None else to_dict(self.servo),
            # what an export manifest carries for the runtime (robotstack/core/manifest.py): the success
            # criterion as data, the robot, and the end-effector action contract (core/ee_action.py EEActionSpec)
            "success": self.task.success_criterion,
            "robot": {"dof": len(self.h.arm_qpos), "kinematics": kin.NAME},
            "ee_action": self.action_spec.to_dict(),
            "gripper_dims": [len(self.action_names) - 1],  # the binary gripper command (> 0 closes): thresholded
        }

    # --- internals -----------------------------------------------------------------------------------------
    def _apply_action(self, a: np.ndarray) -> None:
        t = ee.step_target(self.action_spec, ee.EETarget(self.target_pos, self.target_yaw, self.gripper_cmd), a,
                           self.tcp_pos)
        self.target_pos, self.target_yaw, self.gripper_cmd = t.pos, t.yaw, t.gripper
        # 2 DLS iterations warm-started from the last command: targets move <= 2 cm per step, so the residual
        # (< 0.1 mm) is carried into the next step; full convergence would cost ~2x per step
        self.q_cmd = kin.solve_ik(self.q_cmd, self.target_pos, self.target_yaw, iters=self.ik_iters)
        if self._motion is None:
            self.data.ctrl[self.h.arm_act] = self.q_cmd
        self.data.ctrl[self.h.finger_act] = ee.per_finger_opening(self.gripper_cmd)

    def _step_servo_arm(self) -> None:
        """One control step of physics with the servo's interpolation toward q_cmd at every physics step."""
        ctrl, act = self.data.ctrl, self.h.arm_act
        for _ in range(self.n_substeps):
            dq, _ = self._motion.step(self.q_cmd - self._q_servo, self._v_servo)
            self._q_servo = self._q_servo + dq
            self._v_servo = dq * self._motion.rate
            ctrl[act] = self._q_servo
            mujoco.mj_step(self.model, self.data)

    def _get_obs(self) -> dict[str, np.ndarray]:
        d, h = self.data, self.h
        quat = np.zeros(4)
        mujoco.mju_mat2Quat(quat, d.site_xmat[h.tcp_site])
        quat = rot.canonical_tcp_quat(quat)  # one sign over the whole yaw range (the runtime's state_obs does the same)
        obj = np.empty(7 * len(self._obj_body))
        for i, b in enumerate(self._obj_body):
            obj[7 * i : 7 * i + 3] = d.xpos[b]
            obj[7 * i + 3 : 7 * i + 7] = d.xquat[b]
        obs = {
            keys.JOINT_POS: d.qpos[h.arm_qpos],
            keys.JOINT_VEL: d.qvel[h.arm_dof],
            keys.GRIPPER: np.array([d.qpos[h.finger_qpos].sum()]),
            keys.EEF_POS: d.site_xpos[h.tcp_site],
            keys.EEF_QUAT: quat,
            keys.OBJECT_STATE: obj,
            keys.GOAL: np.asarray(self.task.goal(self), np.float64),
        }
        std = self.randomize.obs_noise
        out = {}
        for k, v in obs.items():
            v = np.array(v, dtype=np.float32)
            if std > 0 and k != keys.GOAL:
                v += self.np_random.normal(0.0, std, v.shape).astype(np.float32)
            out[k] = v
        for cam in self.cameras:
            out[keys.image_key(cam)] = self.render_camera_image(cam, self.image_size, self.image_size)
        return out

    def _info(self, success: bool) -> dict[str, Any]:
        return {"is_success": bool(success)}

    def _apply_dynamics_randomization(self, rng: np.random.Generator) -> None:
        m = self.model
        m.geom_friction[:] = self._nominal_friction
        m.body_mass[:] = self._nominal_mass
        m.body_inertia[:] = self._nominal_inertia
        f = self.randomize.friction
        if f > 0:  # scale sliding friction of objects and the table
            geoms = self._obj_geoms + [m.geom("table").id]
            m.geom_friction[geoms, 0] *= rng.uniform(1 - f, 1 + f, len(geoms))
        s = self.randomize.mass
        if s > 0:
            scale = rng.uniform(1 - s, 1 + s, len(self._obj_body))
            m.body_mass[self._obj_body] *= scale
            m.body_inertia[self._obj_body] *= scale[:, None]

    def _jitter_object_poses(self, rng: np.random.Generator) -> None:
        j = self.randomize.object_pose
        if j <= 0:
            return
        for name in self.task.object_bodies:
            if self.model.body(name).jntnum[0] == 0:  # mocap markers have no joint
                continue
            adr = ps.free_joint_qpos_adr(self.model, name)
            self.data.qpos[adr : adr + 2] += rng.uniform(-j, j, 2)

