"""Exported policy -> onnxruntime, with the observation history; torch-free (checked by tests/runtime).

Artifact dir: ``policy.onnx`` + ``manifest.json``. The graph takes one input per observation key, shaped
(1, To, *obs_shape) float32 (images uint8 (1, To, H, W, 3)), and returns actions (1, N, Da) with normalization
inside the graph. Exporter artifacts (``robotstack.export``) are read through their own manifest; the plain
format below (one graph, these exact keys) serves hand-built policies:

    onnx              graph file name (default policy.onnx)
    obs               {key: {"shape": [...], "dtype": "float32"}}
    n_obs_steps (To), n_action_steps (Ta), horizon (T)
    control_hz        policy rate (Hz); task: {"name": ...} (optional)
    action            {"names": [...], "dim": Da, "max_step_pos_m", "max_step_yaw_rad", "kind": "ee_delta"}
    output            ONNX output name (default: the first output); "action_start": first executed index (default 0)
    robot             {"dof": 7, "kinematics": "panda"}                       (optional)
    sha256            of policy.onnx (checked when present)

Glossary: To observation history, Ta executed actions per inference, T predicted horizon, Da action dim.
"""

from __future__ import annotations

import collections
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robotstack.core import keys as K
from robotstack.core.errors import RobotstackError


class ArtifactError(RobotstackError):
    """The artifact is missing, malformed, or does not match the arm it is deployed on."""


@dataclass
class PolicySpec:
    path: Path
    onnx_path: Path
    obs: dict[str, tuple[int, ...]]
    obs_dtypes: dict[str, str]
    n_obs_steps: int
    n_action_steps: int
    horizon: int
    control_hz: float
    action_names: list[str]
    action_dim: int
    max_step_pos: float
    max_step_yaw: float
    action_kind: str = "ee_delta"
    output: str | None = None
    action_start: int = 0
    dof: int | None = None
    task: str = ""
    policy_id: str = ""
    input_names: dict[str, str] = field(default_factory=dict)  # obs key -> graph input name
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def use_yaw(self) -> bool:
        return "dyaw" in self.action_names


EXPORT_FORMAT = "robotstack.artifact"  # robotstack/export/artifact.py (the exporter's own loader runs those)
SIM_STEP_POS, SIM_STEP_YAW = 0.02, 0.15  # sim/base_env.py defaults, used when a manifest has no action scale


def _export_spec(root: Path, man: dict, control_hz: float | None) -> PolicySpec:
    """PolicySpec of an artifact written by robotstack.export (obs spec shapes carry To first)."""
    mpath = root / "manifest.json"
    spec_obs = man["obs"]["spec"]
    act = man["action"]
    To = int(act["To"])
    obs = {k: tuple(int(x) for x in v["shape"][1:]) for k, v in spec_obs.items()}
    rate = man.get("control_rate_hz") or control_hz
    if not rate:
        raise ArtifactError(f"{mpath}: control_rate_hz is null; re-export with a control rate or pass --control-hz")
    Da = int(act["dim"])
    if Da not in (4, 5):
        raise ArtifactError(f"{mpath}: action.dim {Da}: this runtime drives env actions [dx, dy, dz, (dyaw,) gripper]")
    names = ["dx", "dy", "dz"] + (["dyaw"] if Da == 5 else []) + ["gripper"]
    scale = man.get("action_scale") or {}
    src = man.get("source") or {}
    return PolicySpec(path=root, onnx_path=root / man["graphs"]["policy"]["file"], obs=obs,
                      obs_dtypes={k: v["dtype"] for k, v in spec_obs.items()}, n_obs_steps=To,
                      n_action_steps=int(act["Ta"]), horizon=int(act["T"]), control_hz=float(rate),
                      action_names=names, action_dim=Da,
                      max_step_pos=float(scale.get("max_step_pos_m", SIM_STEP_POS)),
                      max_step_yaw=float(scale.get("max_step_yaw_rad", SIM_STEP_YAW)), output="action",
                      task=str(src.get("task") or ""), policy_id=str(src.get("policy") or root.name), manifest=man)


def load_spec(artifact_dir: str | Path, control_hz: float | None = None) -> PolicySpec:
    """Parse and check manifest.json (no onnxruntime yet). Errors name the file and the key."""
    root = Path(artifact_dir)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: not found (an artifact dir holds policy.onnx + manifest.json)")
    try:
        man = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mpath}: not valid JSON ({e})") from None
    if man.get("format") == EXPORT_FORMAT:
        from robotstack.export.artifact import read_manifest  # the exporter's own checks, torch-free

        return _export_spec(root, read_manifest(root), control_hz)
    return _plain_spec(root, mpath, man)


def _require(man: dict, key: str, mpath: Path):
    if key not in man:
        raise ArtifactError(f"{mpath}: missing key {key!r}")
    return man[key]


def _plain_spec(root: Path, mpath: Path, man: dict) -> PolicySpec:
    """The plain format (one graph, fixed key names; see the module docstring): hand-built or third-party
    policies. Exporter artifacts take `_export_spec` instead."""
    onnx_path = root / man.get("onnx", "policy.onnx")
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path}: not found (named by {mpath})")
    raw_obs = _require(man, "obs", mpath)
    if not isinstance(raw_obs, dict) or not raw_obs:
        raise ArtifactError(f"{mpath}: key 'obs' must be {{key: {{shape, dtype}}}} and non-empty")
    obs = {k: tuple(int(x) for x in v["shape"]) for k, v in raw_obs.items()}
    dtypes = {k: v.get("dtype") or ("uint8" if K.is_image_key(k) else "float32") for k, v in raw_obs.items()}
    action = _require(man, "action", mpath)
    names = list(action.get("names") or [])
    dim = int(action.get("dim", len(names)))
    if not names or len(names) != dim:
        raise ArtifactError(f"{mpath}: action.names {names} and action.dim {dim} must be given and agree")
    control_hz = _require(man, "control_hz", mpath)
    if not control_hz or float(control_hz) <= 0:
        raise ArtifactError(f"{mpath}: control_hz missing or not > 0")
    To, Ta = int(man.get("n_obs_steps", 1)), int(man.get("n_action_steps", 1))
    T = int(man.get("horizon", Ta))
    if To < 1 or Ta < 1 or T < Ta:
        raise ArtifactError(f"{mpath}: need To >= 1, Ta >= 1, T >= Ta; got To={To} Ta={Ta} T={T}")
    task = man.get("task") if isinstance(man.get("task"), dict) else {}
    spec = PolicySpec(
        path=root, onnx_path=onnx_path, obs=obs, obs_dtypes=dtypes, n_obs_steps=To, n_action_steps=Ta, horizon=T,
        control_hz=float(control_hz), action_names=names, action_dim=dim,
        max_step_pos=float(action.get("max_step_pos_m", SIM_STEP_POS)),
        max_step_yaw=float(action.get("max_step_yaw_rad", SIM_STEP_YAW)),
        action_kind=str(action.get("kind", "ee_delta")), output=man.get("output"),
        action_start=int(man.get("action_start", 0)), dof=(man.get("robot") or {}).get("dof"),
        task=str(task.get("name", "")), policy_id=str(man.get("policy_id", root.name)),
        input_names=dict(man.get("input_names") or {}), manifest=man)
    if spec.action_kind != "ee_delta":
        raise ArtifactError(f"{mpath}: action.kind {spec.action_kind!r}: this runtime drives 'ee_delta' actions "
                            "([dx, dy, dz, (dyaw,) gripper] in [-1, 1])")
    want = ["dx", "dy", "dz"] + (["dyaw"] if spec.use_yaw else []) + ["gripper"]
    if names != want:
        raise ArtifactError(f"{mpath}: action.names {names}: expected {want}")
    sha = man.get("sha256")
    if isinstance(sha, str):
        got = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        if got != sha:
            raise ArtifactError(f"{onnx_path}: sha256 {got[:12]}... != manifest {sha[:12]}... (file changed?)")
    return spec


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
    for cam, frame in (state.cameras or {}).items():
        out[K.image_key(cam)] = np.asarray(frame.image)
    return out


def check_arm(spec: PolicySpec, state, arm_name: str = "arm") -> None:
    """Refuse an artifact the arm cannot serve: joint count, action spec, observation keys and shapes."""
    problems = []
    dof = len(state.joint_pos)
    if spec.dof is not None and int(spec.dof) != dof:
        problems.append(f"the policy was exported for {spec.dof} joints, the arm has {dof}")
    if spec.action_kind == "ee_delta" and dof != 7:
        problems.append(f"ee_delta actions need the Panda kinematics (7 joints); the arm has {dof}")
    if spec.action_kind == "ee_delta" and state.eef_pos is None:
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
    """onnxruntime session + observation history. ``push(obs)`` once per policy step, ``infer()`` -> (n, Da)."""

    def __init__(self, artifact_dir: str | Path, threads: int = 1, control_hz: float | None = None, seed: int = 0):
        import onnxruntime as ort

        self.spec = spec = load_spec(artifact_dir, control_hz)
        self.exported = None
        self._dtypes = {k: np.uint8 if spec.obs_dtypes.get(k) == "uint8" else np.float32 for k in spec.obs}
        if spec.manifest.get("format") == EXPORT_FORMAT:
            # the exporter's torch-free loader: sha256, graph I/O vs manifest, noise inputs, RTI state
            from robotstack.export.artifact import ArtifactError as ExportArtifactError
            from robotstack.export.artifact import load_artifact

            try:
                self.exported = load_artifact(spec.path, seed=seed, threads=threads)
            except ExportArtifactError as e:
                raise ArtifactError(str(e)) from None
            self.history = {}
            self.reset()
            self.push({k: np.zeros(shape, self._dtypes[k]) for k, shape in spec.obs.items()})
            self.infer()
            self.reset()
            return
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads  # share 2 cores with the servo; latency, not throughput
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(spec.onnx_path), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ArtifactError(f"{spec.onnx_path}: onnxruntime cannot load it: {e}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.feed_names = {k: spec.input_names.get(k, k) for k in spec.obs}
        missing = sorted(set(self.feed_names.values()) - set(inputs))
        extra = sorted(set(inputs) - set(self.feed_names.values()))
        if missing or extra:
            raise ArtifactError(f"{spec.onnx_path}: graph inputs {sorted(inputs)} do not match the manifest obs keys "
                                f"{sorted(self.feed_names.values())} (missing {missing}, unexpected {extra})")
        outputs = [o.name for o in self.session.get_outputs()]
        if spec.output is not None and spec.output not in outputs:
            raise ArtifactError(f"{spec.onnx_path}: output {spec.output!r} not in the graph outputs {outputs}")
        self.output = spec.output or outputs[0]
        self.history: dict[str, collections.deque] = {}
        self.reset()
        self.push({k: np.zeros(shape, self._dtypes[k]) for k, shape in spec.obs.items()})
        self.infer()  # warm-up: the first run allocates (tens of ms), not the first control step
        self.reset()

    def reset(self) -> None:
        """Forget the history; the next push fills all To slots (diffusion_policy pads by repeating)."""
        self.history = {k: collections.deque(maxlen=self.spec.n_obs_steps) for k in self.spec.obs}
        if self.exported is not None:
            self.exported.reset()

    def push(self, obs: dict[str, np.ndarray]) -> None:
        for k, dq in self.history.items():
            v = np.asarray(obs[k], dtype=self._dtypes[k]).reshape(self.spec.obs[k])
            if not dq:
                dq.extend([v] * self.spec.n_obs_steps)
            else:
                dq.append(v)

    def copy_history_from(self, other: "PolicyRunner") -> bool:
        """Take over another runner's history when keys, shapes and To agree (hot swap without a warm-up)."""
        if other.spec.obs != self.spec.obs or other.spec.n_obs_steps != self.spec.n_obs_steps:
            return False
        self.history = {k: collections.deque(list(v), maxlen=self.spec.n_obs_steps) for k, v in other.history.items()}
        return True

    def infer(self) -> np.ndarray:
        """Actions to execute: (Ta, Da) float64 (Ta = 1 for single-step policies)."""
        if self.exported is not None:
            out = self.exported.act({k: np.stack(dq) for k, dq in self.history.items()})[None]
            return np.asarray(out, dtype=np.float64)[0, : self.spec.n_action_steps]
        feed = {self.feed_names[k]: np.stack(dq)[None] for k, dq in self.history.items()}
        out = self.session.run([self.output], feed)[0]
        out = np.asarray(out, dtype=np.float64)
        if out.ndim == 2:  # (1, Da): a single-step graph without the time axis
            out = out[:, None, :]
        if out.ndim != 3 or out.shape[0] != 1 or out.shape[2] != self.spec.action_dim:
            raise ArtifactError(f"{self.spec.onnx_path}: output shape {out.shape}, expected (1, N, "
                                f"{self.spec.action_dim})")
        s = self.spec.action_start
        return out[0, s:s + self.spec.n_action_steps]
