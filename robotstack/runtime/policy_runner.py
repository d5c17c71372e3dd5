"""Exported policy -> onnxruntime, with the observation history; torch-free (checked by tests/runtime).

The artifact is what `robotstack export` writes (schema: robotstack/core/manifest.py), loaded by the only loader
(runtime/artifact.py). There is no other format and no default: a manifest without what the runtime needs (control
rate, action contract, robot, task) is refused by the reader with the missing field named.

Glossary: To observation history, Ta executed actions per inference, T predicted horizon, Da action dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robotstack.core import keys as K
from robotstack.core.ee_action import EEActionSpec
from robotstack.core.errors import ArtifactError, ConfigError
from robotstack.core.kinematics import NAME as RUNTIME_KINEMATICS
from robotstack.core.manifest import MANIFEST, Manifest
from robotstack.core.rotations import canonical_tcp_quat
from robotstack.runtime.artifact import ArtifactPolicy



@dataclass
class PolicySpec:
    path: Path
    obs: dict[str, tuple[int, ...]]  # per-step shapes (without To)
    obs_dtypes: dict[str, str]
    n_obs_steps: int
    n_action_steps: int
    horizon: int
    control_hz: float
    action_names: list[str]
    ee_action: dict[str, Any]  # the action contract: EEActionSpec.to_dict()
    dof: int | None = None
    kinematics: str = RUNTIME_KINEMATICS
    task: str = ""
    success: list | None = None  # robotstack.core.success criterion
    policy_id: str = ""
    manifest: Manifest | None = None

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def use_yaw(self) -> bool:
        return self.action_scale().use_yaw  # "dyaw" (delta) or "yaw" (absolute mode)

    @property
    def max_step_pos(self) -> float:
        return float(self.ee_action["max_step_pos_m"])

    @property
    def max_step_yaw(self) -> float:
        return float(self.ee_action["max_step_yaw_rad"])

    def action_scale(self) -> EEActionSpec:
        return EEActionSpec.from_dict(self.ee_action)


def check_ee_action(ee: dict, action_names: list[str], where: str) -> dict:
    """The manifest's action contract, read strictly by core/ee_action.py (no sim defaults fill gaps), and the
    graph's action names must be the ones that contract drives."""
    try:
        contract = EEActionSpec.from_dict(ee, where=f"{where}: ee_action")
    except ConfigError as exc:
        raise ArtifactError(str(exc)) from None
    if list(action_names) != list(contract.names):
        raise ArtifactError(f"{where}: action.names {list(action_names)} do not match ee_action.names "
                            f"{list(contract.names)}")
    return ee


def spec_of(artifact: ArtifactPolicy) -> PolicySpec:
    """PolicySpec of a loaded artifact (obs spec shapes carry To first)."""
    m = artifact.manifest
    where = str(artifact.path / MANIFEST)
    act, spec = m.action, m.obs["spec"]
    return PolicySpec(path=artifact.path, obs={k: tuple(int(x) for x in v["shape"][1:]) for k, v in spec.items()},
                      obs_dtypes={k: v["dtype"] for k, v in spec.items()}, n_obs_steps=int(act["To"]),
                      n_action_steps=int(act["Ta"]), horizon=int(act["T"]), control_hz=float(m.control_rate_hz),
                      action_names=list(act["names"]), ee_action=check_ee_action(m.ee_action, act["names"], where),
                      dof=int(m.robot["dof"]), kinematics=str(m.robot["kinematics"]), task=m.task["name"],
                      success=m.task["success"],
                      policy_id=str(m.source.get("policy") or artifact.path.name), manifest=m)


# --- what an arm provides ----------------------------------------------------------------------------------
_STATE_FIELDS = {K.JOINT_POS: "joint_pos", K.JOINT_VEL: "joint_vel", K.GRIPPER: "gripper", K.EEF_POS: "eef_pos",
                 K.EEF_QUAT: "eef_quat", K.OBJECT_STATE: "object_state", K.GOAL: "goal"}


def state_features(state) -> dict[str, tuple[int, ...]]:
    """Observation key -> shape that a RobotState message provides."""
    out = {}
    for key, f in _STATE_FIELDS.items():
        v = getattr(state, f, None)
        if v is not None:
            out[key] = tuple(np.shape(v))
    for cam, frame in (state.cameras or {}).items():
        out[K.image_key(cam)] = tuple(frame.image.shape)
    return out


def state_obs(state) -> dict[str, np.ndarray]:
    """RobotState -> observation dict in the env convention (float32 state keys, uint8 images)."""
    out = {}
    for key, f in _STATE_FIELDS.items():
        v = getattr(state, f, None)
        if v is not None:
            out[key] = np.asarray(v, dtype=np.float32)
    if K.EEF_QUAT in out:  # the sign the sim's observation uses, whatever convention the arm server's driver has
        out[K.EEF_QUAT] = canonical_tcp_quat(out[K.EEF_QUAT]).astype(np.float32)
    for cam, frame in (state.cameras or {}).items():
        out[K.image_key(cam)] = np.asarray(frame.image)
    return out


def check_arm(spec: PolicySpec, state, arm_name: str = "arm") -> None:
    """Refuse an artifact the arm cannot serve: joint count, action spec, observation keys and shapes."""
    problems = []
    dof = len(state.joint_pos)
    if spec.dof is not None and int(spec.dof) != dof:
        problems.append(f"the policy was exported for {spec.dof} joints, the arm has {dof}")
    if spec.kinematics != RUNTIME_KINEMATICS:  # e.g. a Meta-World (Sawyer) policy: its actions mean nothing here
        problems.append(f"the policy was trained for {spec.kinematics!r} kinematics; the runtime maps end-effector "
                        f"actions with {RUNTIME_KINEMATICS!r} kinematics only")
    if dof != 7:
        problems.append(f"ee_delta actions need the Panda kinematics (7 joints); the arm has {dof}")
    if state.eef_pos is None:
        problems.append("ee_delta actions need the TCP position (state.eef_pos), which the arm does not report")
    have = state_features(state)
    for key, shape in spec.obs.items():
        if key not in have:
            problems.append(f"observation {key!r} {list(shape)} is not provided by the arm (it provides "
                            f"{sorted(have)})")
        elif tuple(have[key]) != tuple(shape):
            problems.append(f"observation {key!r}: the policy expects shape {list(shape)}, the arm sends "
                            f"{list(have[key])}")
    if problems:
        raise ArtifactError(f"artifact {spec.path} does not match {arm_name}: " + "; ".join(problems))


class PolicyRunner:
    """The artifact + observation history. ``push(obs)`` once per policy step, ``infer()`` -> (Ta, Da)."""

    def __init__(self, artifact_dir: str | Path, threads: int = 1, seed: int = 0, best_of_n: int | None = None):
        # best_of_n None: the artifact's critic.n (best-of-N when it carries a critic), else 1
        self.artifact = ArtifactPolicy(artifact_dir, seed=seed, threads=threads, best_of_n=best_of_n)
        self.spec = spec = spec_of(self.artifact)
        self._dtypes = {k: np.dtype(spec.obs_dtypes[k]) for k in spec.obs}
        self.history: dict[str, np.ndarray] = {}  # key -> (To, *shape), oldest first
        self._filled = False
        self.reset()
        self.push({k: np.zeros(shape, self._dtypes[k]) for k, shape in spec.obs.items()})
        self.infer()  # warm-up: the first run allocates (tens of ms), not the first control step
        self.reset()

    def reset(self) -> None:
        """Forget the history (the next push fills all To slots, diffusion_policy pads by repeating) and the
        warm-start state (rti, cm_warm)."""
        self.history = {k: np.zeros((self.spec.n_obs_steps, *shape), self._dtypes[k])
                        for k, shape in self.spec.obs.items()}
        self._filled = False
        self.artifact.reset()

    def reset_warm_start(self) -> None:
        """Forget the warm-start state only (rti, cm_warm; after a human takeover); the history stays."""
        self.artifact.reset()

    def push(self, obs: dict[str, np.ndarray]) -> None:
        # fixed arrays shifted in place (To is 1-3): infer() hands them to the artifact without a per-step stack
        for k, h in self.history.items():
            v = np.asarray(obs[k], dtype=self._dtypes[k]).reshape(self.spec.obs[k])
            if not self._filled:
                h[:] = v
            else:
                h[:-1] = h[1:]
                h[-1] = v
        self._filled = True

    def copy_history_from(self, other: "PolicyRunner") -> bool:
        """Take over another runner's history when keys, shapes and To agree (hot swap without a warm-up)."""
        if other.spec.obs != self.spec.obs or other.spec.n_obs_steps != self.spec.n_obs_steps:
            return False
        self.history = {k: v.copy() for k, v in other.history.items()}
        self._filled = other._filled
        return True

    def infer(self) -> np.ndarray:
        """Actions to execute: (Ta, Da) float64."""
        if not self._filled:
            raise ArtifactError(f"{self.spec.path}: infer() before any push() (no observation yet)")
        out = self.artifact.act(self.history)
        return np.asarray(out, dtype=np.float64)[: self.spec.n_action_steps]
