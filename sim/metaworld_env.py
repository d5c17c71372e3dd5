"""Meta-World v3 tasks behind the robotstack env interface (docs/CONTRACTS.md), plus Meta-World's scripted experts.

`make_metaworld("pick-place-v3", seed=0, cameras=("corner2",))` builds one goal-observable Meta-World task.
Every reset draws a new task variation (object / goal positions) from the env's seeded generator, so
`reset(seed=s)` always gives the same variation and `reset()` continues the seeded stream.

Observation mapping (Meta-World's 39-d obs = [cur 18 | previous 18 | goal 3]; all float32 except images):

| key               | shape  | source                                                                            |
|-------------------|--------|-----------------------------------------------------------------------------------|
| robot_joint_pos   | (7,)   | MuJoCo qpos of the Sawyer joints right_j0..right_j6 (rad)                          |
| robot_joint_vel   | (7,)   | MuJoCo qvel of the same joints (rad/s)                                            |
| robot_gripper     | (1,)   | obs[3] * 0.1: claw-body distance in metres, clipped to [0, 0.1]; 0.1 when open,    |
|                   |        | ~0.029 when closed on nothing (body origins, so never 0)                          |
| robot_eef_pos     | (3,)   | obs[0:3]: the `hand` body position (not the finger-tip TCP, which is 4.5 cm lower)|
| robot_eef_quat    | (4,)   | MuJoCo xquat (w, x, y, z) of the `hand` body (held near constant by the mocap weld)|
| object_state      | (14,)  | obs[4:18]: two Meta-World object slots pos(3)+quat(4), zero-padded when unused     |
| goal              | (3,)   | obs[36:39]: goal position                                                         |
| image_<camera>    | (H,W,3)| uint8 RGB from a Meta-World camera (corner, corner2, corner3, corner4, topview,    |
|                   |        | behindGripper, gripperPOV); offsamples 0, shadows and reflections off; the corner |
|                   |        | cameras are turned upright (Meta-World defines them upside down)                 |

Camera note: `corner4` is the close-up `corner2` pose (pos 0.75 0.075 0.7) that DP3 / MWM / LeRobot use.
Rendering is mesh-bound (the Sawyer has ~67 k faces): ~100 images/s at 96x96 on a 2-core llvmpipe machine,
so one camera caps stepping at ~90 steps/s (state only: ~1000-1900 steps/s, bound by Meta-World's Python).

Caveats of the mapping: the quaternion convention inside `object_state` is Meta-World's and differs per task
(tasks reading MuJoCo `xquat` give w,x,y,z; tasks using scipy `as_quat()` give x,y,z,w) — it is passed through
unchanged so experts and learned policies see the same numbers. The frame-stacked previous 18 values are dropped
(policies keep their own history). The raw 39-d obs of the last reset/step is `env.unwrapped.raw_obs` (float64).

Action: Meta-World's own `Box(-1, 1, (4,))` = [dx, dy, dz, gripper], 1 unit = 1 cm of mocap motion per step,
gripper > 0 closes. Control runs at 80 Hz (dt 2.5 ms x frame_skip 5), fixed by Meta-World.
Reward: sparse `float(success)` by default; Meta-World's dense v2 reward with `shaped_reward=True`.
`info["is_success"]` is Meta-World's `info["success"]`; Meta-World's other info metrics are passed along.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from robotstack.core import keys
from robotstack.core.ee_action import EEActionSpec
from robotstack.core.errors import ConfigError, UnknownTaskError

__all__ = [
    "MetaWorldEnv",
    "MetaWorldExpert",
    "make_metaworld",
    "metaworld_task_names",
    "CAMERAS",
    "CONTROL_HZ",
]

CONTROL_HZ = 80.0  # Meta-World: timestep 2.5 ms x frame_skip 5; not configurable
DEFAULT_MAX_EPISODE_STEPS = 500  # Meta-World v3 max_path_length
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
ACTION_NAMES = ("dx", "dy", "dz", "gripper")
ARM_JOINTS = tuple(f"right_j{i}" for i in range(7))
GRIPPER_SCALE = 0.1  # Meta-World normalizes the claw distance by 0.1 m; undo it to get metres
N_OBJ = 14  # Meta-World's padded object slots (2 x (pos 3 + quat 4))


def _env_classes() -> dict[str, type]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS  # lazy: sim/ imports stay cheap without metaworld

    return dict(ALL_V3_ENVIRONMENTS)


def metaworld_task_names() -> list[str]:
    """All Meta-World v3 task names, e.g. 'pick-place-v3' (50 tasks)."""
    return sorted(_env_classes())


def _check_task(task_name: str) -> type:
    classes = _env_classes()
    if task_name not in classes:
        raise UnknownTaskError(
            f"unknown Meta-World task {task_name!r}; expected one of: {', '.join(sorted(classes))}"
        )
    return classes[task_name]


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with goal observable, Dict observations and seeded task variations.

    Args:
        task_name: Meta-World v3 name, e.g. 'reach-v3'.
        seed: seed used by the first `reset()` that passes no seed (None = OS entropy).
        cameras: camera names to render into `image_<camera>` each step; () = state only.
        image_size: square image side for `cameras` (pixels).
        max_episode_steps: time limit; `truncated` is True on the step that reaches it.
        terminate_on_success: end the episode (terminated=True) on the first successful step.
        shaped_reward: Meta-World's dense reward instead of sparse float(success).
        control_hz: must be None or 80 (Meta-World's fixed rate); kept for the common kwargs.
        action_mode: must be 'delta' (Meta-World's own mocap deltas); absolute EE targets are Panda-only.
        randomize: must be None/empty: domain randomization is not supported for Meta-World
            (object/goal placement is always randomized by the task variation).
        render_mode: None or 'rgb_array' (`render()` returns `render_size` RGB from `render_camera`).
        upright_cameras: turn the upside-down Meta-World corner cameras 180 deg about their optical axis
            (the same images LeRobot gets with `np.flip(img, (0, 1))`); False = Meta-World's raw views.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(CONTROL_HZ)}

    def __init__(
        self,
        task_name: str,
        seed: int | None = None,
        cameras: tuple[str, ...] | list[str] = (),
        image_size: int = 96,
        max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS,
        terminate_on_success: bool = True,
        shaped_reward: bool = False,
        control_hz: float | None = None,
        randomize: dict | None = None,
        action_mode: str = "delta",
        render_mode: str | None = None,
        render_camera: str = "corner2",
        render_size: int = 256,
        upright_cameras: bool = True,
    ) -> None:
        env_cls = _check_task(task_name)
        cameras = tuple(cameras)
        for cam in cameras + (render_camera,):
            if cam not in CAMERAS:
                raise ConfigError(f"cameras: unknown Meta-World camera {cam!r}; expected one of {CAMERAS}")
        if control_hz is not None and float(control_hz) != CONTROL_HZ:
            raise ConfigError(f"control_hz={control_hz!r}: Meta-World runs at a fixed {CONTROL_HZ:g} Hz")
        if action_mode != "delta":
            raise ConfigError(f"sim.make('mw:{task_name}') action_mode={action_mode!r}: Meta-World tasks take "
                              "only 'delta' actions (absolute end-effector targets exist for the Panda tasks)")
        if randomize:
            raise ConfigError(
                f"randomize={randomize!r}: domain randomization is not supported for Meta-World tasks "
                "(object and goal placement are already randomized per reset); pass None"
            )
        if int(max_episode_steps) < 1:
            raise ConfigError(f"max_episode_steps={max_episode_steps!r}: expected a positive int")
        if int(image_size) < 1 or int(render_size) < 1:
            raise ConfigError(f"image_size={image_size!r}, render_size={render_size!r}: expected positive ints")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode={render_mode!r}: expected None or 'rgb_array'")

        self.task_name = task_name
        self.cameras = cameras
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_success = bool(terminate_on_success)
        self.shaped_reward = bool(shaped_reward)
        self.render_mode = render_mode
        self.render_camera = render_camera
        self.render_size = int(render_size)
        self.action_names = ACTION_NAMES

        # Goal-observable, unfrozen task variations (what metaworld's *-goal-observable classes do, minus the
        # global np.random use): each reset draws `rand_vec` from `self._mw.np_random`, which we seed.
        mw = env_cls()
        mw._partially_observable = False
        del mw.sawyer_observation_space  # cached_property: recompute with the goal bounds
        mw._set_task_called = True
        mw._freeze_rand_vec = False
        mw.seeded_rand_vec = True
        mw.max_path_length = self.max_episode_steps  # its own guard raises past this
        self._mw = mw
        model = mw.model
        model.vis.quality.offsamples = 0  # fast offscreen rendering on llvmpipe (machine_notes §2)
        side = max(self.image_size, self.render_size)  # offscreen buffer must hold the largest image
        model.vis.global_.offwidth = max(int(model.vis.global_.offwidth), side)
        model.vis.global_.offheight = max(int(model.vis.global_.offheight), side)
        if upright_cameras:
            _make_fixed_cameras_upright(model)

        self._arm_qpos = np.array([model.jnt_qposadr[model.joint(j).id] for j in ARM_JOINTS])
        self._arm_qvel = np.array([model.jnt_dofadr[model.joint(j).id] for j in ARM_JOINTS])
        self._hand_body = model.body("hand").id
        self._renderers: dict[int, mujoco.Renderer] = {}

        f32 = np.float32
        obs_spaces: dict[str, spaces.Space] = {
            keys.JOINT_POS: spaces.Box(-np.inf, np.inf, (7,), f32),
            keys.JOINT_VEL: spaces.Box(-np.inf, np.inf, (7,), f32),
            keys.GRIPPER: spaces.Box(0.0, GRIPPER_SCALE, (1,), f32),
            keys.EEF_POS: spaces.Box(-np.inf, np.inf, (3,), f32),
            keys.EEF_QUAT: spaces.Box(-1.0, 1.0, (4,), f32),
            keys.OBJECT_STATE: spaces.Box(-np.inf, np.inf, (N_OBJ,), f32),
            keys.GOAL: spaces.Box(-np.inf, np.inf, (3,), f32),
        }
        for cam in cameras:
            obs_spaces[keys.image_key(cam)] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)

        self._pending_seed = seed
        self._t = 0
        self._needs_reset = True
        self.raw_obs = np.zeros(39, np.float64)

    # --- gym API ---------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        self._mw.np_random = self.np_random  # share: the task variation follows our seeded stream
        raw, _ = self._mw.reset()
        self.raw_obs = np.asarray(raw, np.float64).copy()
        self._t = 0
        self._needs_reset = False
        return self._obs(), {"is_success": False}

    def step(self, action):
        if self._needs_reset:
            raise RuntimeError(f"{self.task_name}: call reset() before step() (and after an episode ends)")
        action = np.clip(np.asarray(action, np.float32).reshape(4), -1.0, 1.0)
        raw, mw_reward, _, _, mw_info = self._mw.step(action)
        self.raw_obs = np.asarray(raw, np.float64).copy()
        self._t += 1
        success = bool(mw_info["success"])
        reward = float(mw_reward) if self.shaped_reward else float(success)
        terminated = success and self.terminate_on_success
        truncated = self._t >= self.max_episode_steps
        self._needs_reset = terminated or truncated
        info = {k: float(v) for k, v in mw_info.items() if k != "success"}
        info["is_success"] = success
        return self._obs(), reward, terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self.render_camera_image(self.render_camera, self.render_size)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
        self._mw.close()

    # --- robotstack extras -----------------------------------------------------------------------
    def task_spec(self) -> dict[str, Any]:
        """JSON-able description of this task (task, rates, action names, obs shapes, time limit)."""
        return {
            "task": f"mw:{self.task_name}",
            "suite": "metaworld",
            "control_hz": CONTROL_HZ,
            "action_names": list(self.action_names),
            "action_dim": 4,
            "action_mode": "delta",
            "obs_shapes": {k: list(s.shape) for k, s in self.observation_space.spaces.items()},
            "obs_dtypes": {k: np.dtype(s.dtype).name for k, s in self.observation_space.spaces.items()},
            "max_episode_steps": self.max_episode_steps,
            "terminate_on_success": self.terminate_on_success,
            "shaped_reward": self.shaped_reward,
            "cameras": list(self.cameras),
            "image_size": self.image_size,
            # what an export manifest carries (robotstack/core/manifest.py), so Meta-World policies export too:
            "robot": {"dof": 7, "kinematics": "sawyer"},  # the runtime's Panda IK refuses it (no Sawyer server)
            # success is Meta-World's evaluate_state (task-specific: contact, angles), not an obs distance
            "success": None,
            "ee_action": self.ee_action_spec().to_dict(),
            # no binary gripper dim: Meta-World's gripper action is a continuous grab effort (its experts send
            # e.g. 0.6); thresholding it to +-1 at export took CM-1 on mw:push from 97% (torch) to 30%
            "gripper_dims": [],
        }

    def ee_action_spec(self) -> EEActionSpec:
        """Meta-World's action contract in robotstack's terms: 1 unit = action_scale (1 cm) of mocap motion per
        step, no yaw, the mocap box as the workspace. Meta-World has no lead limit (the mocap target integrates
        the actions inside its box), so max_lead is the box diagonal: never binding. Gripper: the robot_gripper
        observation's open value (0.1, a claw distance in metres, see the table above)."""
        mw = self._mw
        lo, hi = np.asarray(mw.mocap_low, np.float64), np.asarray(mw.mocap_high, np.float64)
        return EEActionSpec(max_step_pos=float(mw.action_scale), max_step_yaw=0.0, use_yaw=False,
                            ws_lo=tuple(lo), ws_hi=tuple(hi), max_lead=float(np.linalg.norm(hi - lo)),
                            gripper_open=0.1)

    def render_camera_image(self, camera: str, size: int | None = None) -> np.ndarray:
        """(size, size, 3) uint8 RGB of `camera` for the current state (offsamples 0, shadows off)."""
        size = self.image_size if size is None else int(size)
        renderer = self._renderers.get(size)
        if renderer is None:
            renderer = mujoco.Renderer(self._mw.model, size, size)
            self._renderers[size] = renderer
        renderer.update_scene(self._mw.data, camera=camera)
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False  # the table mirror pass costs ~1.5x
        return renderer.render().copy()

    @property
    def elapsed_steps(self) -> int:
        return self._t

    def _obs(self) -> dict[str, np.ndarray]:
        raw, data = self.raw_obs, self._mw.data
        obs = {
            keys.JOINT_POS: data.qpos[self._arm_qpos].astype(np.float32),
            keys.JOINT_VEL: data.qvel[self._arm_qvel].astype(np.float32),
            keys.GRIPPER: np.array([raw[3] * GRIPPER_SCALE], np.float32),
            keys.EEF_POS: raw[0:3].astype(np.float32),
            keys.EEF_QUAT: data.xquat[self._hand_body].astype(np.float32),
            keys.OBJECT_STATE: raw[4:18].astype(np.float32),
            keys.GOAL: raw[36:39].astype(np.float32),
        }
        for cam in self.cameras:
            obs[keys.image_key(cam)] = self.render_camera_image(cam)
        return obs


def _make_fixed_cameras_upright(model: mujoco.MjModel) -> None:
    """Rotate world-fixed cameras whose image-up axis points below the horizon by 180 deg about their view axis.

    Meta-World's corner/corner2/corner3/corner4 cameras are defined upside down. The camera frame's y axis is
    the image's up direction; quat * (0, 0, 0, 1) turns the frame 180 deg about its z (optical) axis.
    """
    data = mujoco.MjData(model)
    mujoco.mj_kinematics(model, data)
    mujoco.mj_camlight(model, data)  # cam_xmat is filled here, not by mj_kinematics
    flip = np.array([0.0, 0.0, 0.0, 1.0])
    for cam in range(model.ncam):
        up_z = data.cam_xmat[cam].reshape(3, 3)[2, 1]
        if model.cam_bodyid[cam] == 0 and up_z < 0.0:
            out = np.empty(4)
            mujoco.mju_mulQuat(out, model.cam_quat[cam], flip)
            model.cam_quat[cam] = out


def make_metaworld(task_name: str, **kwargs) -> gym.Env:
    """Build Meta-World v3 task `task_name` (e.g. 'pick-place-v3'); kwargs as `MetaWorldEnv`.

    Unknown names raise `UnknownTaskError` listing the 50 valid names. The time limit lives inside the env
    (`max_episode_steps`), so the returned env is the `MetaWorldEnv` itself.
    """
    return MetaWorldEnv(task_name, **kwargs)


class MetaWorldExpert:
    """Meta-World's own scripted policy for the env's task, with optional suboptimality.

    `noise` in [0, 1]: Gaussian noise with std `noise` (in normalized action units; 0.3 = 3 mm/step of mocap
    jitter) on all 4 dims, then clipped to [-1, 1]; plus random pauses (with probability 0.02 * noise per step
    the arm holds still for 1-5 steps, gripper command kept). `noise=0` is the deterministic expert.
    After each `act`, `clean_action` is Meta-World's policy action before noise (DART labels, as NoisyExpert).

    `act(obs)` reads the env's raw 39-d Meta-World obs (`env.unwrapped.raw_obs`), so pass the env's latest
    observation; a raw (39,) array may be passed instead of the Dict.
    """

    PAUSE_PROB_AT_1 = 0.02
    MAX_PAUSE = 5

    def __init__(self, env: gym.Env, noise: float = 0.0, seed: int | None = None) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        base = env.unwrapped
        if not isinstance(base, MetaWorldEnv):
            raise TypeError(f"MetaWorldExpert needs a MetaWorldEnv, got {type(base).__name__}")
        if not 0.0 <= float(noise) <= 1.0:
            raise ConfigError(f"noise={noise!r}: expected a float in [0, 1]")
        self.env = base
        self.noise = float(noise)
        self.policy = ENV_POLICY_MAP[base.task_name]()
        self._rng = np.random.default_rng(seed)
        self._pause_left = 0
        self.clean_action: np.ndarray | None = None

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._pause_left = 0
        self.clean_action: np.ndarray | None = None

    def act(self, obs: Any = None) -> np.ndarray:
        raw = obs if isinstance(obs, np.ndarray) and obs.shape == (39,) else self.env.raw_obs
        with warnings.catch_warnings():  # metaworld.policies.move warns on saturated gains every step
            warnings.simplefilter("ignore", UserWarning)
            action = np.asarray(self.policy.get_action(raw), np.float64)
        self.clean_action = np.clip(action, -1.0, 1.0).astype(np.float32)  # DART label (see NoisyExpert)
        if self.noise > 0.0:
            action = action + self._rng.normal(0.0, self.noise, size=action.shape)
            if self._pause_left == 0 and self._rng.random() < self.PAUSE_PROB_AT_1 * self.noise:
                self._pause_left = int(self._rng.integers(1, self.MAX_PAUSE + 1))
            if self._pause_left > 0:
                self._pause_left -= 1
                action[:3] = 0.0
        return np.clip(action, -1.0, 1.0).astype(np.float32)
