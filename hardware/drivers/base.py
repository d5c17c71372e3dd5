"""The arm-driver interface: a small Protocol plus the plain data types every driver returns.

Modelled on lerobot's ``Robot`` (shared/specs/stack_anchors.md §4b): a driver describes itself while
disconnected (``info``), and ``command_joints`` returns what was actually sent after the driver's own final clamp.
Hard limits live in the lowest layer (polymetis, §4c): every driver clips joint targets to its hardware range even
though the servo core (hardware/servo.py) already enforces tighter limits with a margin.

Glossary: Dq arm joints, Do object-state dim (7 per simulated object: pos(3) + quat(4) wxyz).
Times: ``*_ns`` ints are ``time.monotonic_ns()`` of the process that runs the driver (the servo clock).
"""

from __future__ import annotations

import importlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from robotstack.core import keys
from robotstack.core import kinematics as kin
from robotstack.core.config import from_dict as read_config, to_dict
from robotstack.core.ee_action import GRIPPER_CLOSED, GRIPPER_OPEN
from robotstack.core.errors import ConfigError, DeviceUnavailableError, RobotstackError
# re-exported: the vendor drivers convert their SDK's orientation with these


PANDA_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
# Franka Panda datasheet velocity / acceleration limits (shared by the pybullet, MuJoCo-twin and franka drivers)
PANDA_DQ_MAX, PANDA_DDQ_MAX = kin.DQ_MAX, kin.DDQ_MAX
# the Franka Hand, in the one gripper unit (total opening of both fingers, m; robotstack/core/ee_action.py)
PANDA_GRIPPER_RANGE = (GRIPPER_CLOSED, GRIPPER_OPEN)


class DriverError(RobotstackError):
    """A driver call failed: not connected, a vendor SDK returned an error code, or a bad argument."""


@dataclass(frozen=True)
class ArmInfo:
    """What an arm is, known without connecting (lerobot's observation/action features, plus limits)."""

    name: str
    dof: int
    joint_names: tuple[str, ...]
    q_min: np.ndarray  # (Dq,) rad, hardware range
    q_max: np.ndarray  # (Dq,) rad
    dq_max: np.ndarray  # (Dq,) rad/s
    ddq_max: np.ndarray  # (Dq,) rad/s^2
    gripper_range: tuple[float, float] | None  # finger opening in metres (min, max); None = no gripper
    nominal_rate_hz: float  # the rate the vendor interface is meant to be commanded at
    simulated: bool = False
    kinematics: str | None = None  # "panda": robotstack.core.kinematics applies (FK/IK in the base frame)
    object_names: tuple[str, ...] = ()  # simulated objects reported in ArmState.object_state, in order
    vendor: str = ""  # SDK / engine, for logs

    def __post_init__(self) -> None:
        for k in ("q_min", "q_max", "dq_max", "ddq_max"):
            arr = np.asarray(getattr(self, k), dtype=np.float64)
            if arr.shape != (self.dof,):
                raise ValueError(f"ArmInfo {self.name}: {k} has shape {arr.shape}, expected ({self.dof},)")
            object.__setattr__(self, k, arr)
        if len(self.joint_names) != self.dof:
            raise ValueError(f"ArmInfo {self.name}: {len(self.joint_names)} joint names for dof={self.dof}")
        if np.any(self.q_min >= self.q_max) or np.any(self.dq_max <= 0) or np.any(self.ddq_max <= 0):
            raise ValueError(f"ArmInfo {self.name}: limits must satisfy q_min < q_max, dq_max > 0, ddq_max > 0")

    def features(self) -> dict[str, tuple[int, ...]]:
        """State keys (robotstack.core.keys) -> shape that read_state fills (lerobot observation_features)."""
        out = {keys.JOINT_POS: (self.dof,), keys.JOINT_VEL: (self.dof,), keys.EEF_POS: (3,), keys.EEF_QUAT: (4,)}
        if self.gripper_range is not None:
            out[keys.GRIPPER] = (1,)
        if self.object_names:
            out[keys.OBJECT_STATE] = (7 * len(self.object_names),)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (for logs, Status details and `robotstack serve-arm --describe`)."""
        return {
            "name": self.name, "vendor": self.vendor, "dof": self.dof, "joint_names": list(self.joint_names),
            "q_min": self.q_min.tolist(), "q_max": self.q_max.tolist(), "dq_max": self.dq_max.tolist(),
            "ddq_max": self.ddq_max.tolist(),
            "gripper_range": None if self.gripper_range is None else list(self.gripper_range),
            "nominal_rate_hz": self.nominal_rate_hz, "simulated": self.simulated, "kinematics": self.kinematics,
            "object_names": list(self.object_names), "features": {k: list(v) for k, v in self.features().items()},
        }


@dataclass
class ArmState:
    """One sample of the arm. Arrays are float64 copies the caller may keep."""

    joint_pos: np.ndarray  # (Dq,) rad
    joint_vel: np.ndarray  # (Dq,) rad/s
    timestamp_ns: int  # when sampled (servo clock)
    joint_effort: np.ndarray | None = None  # (Dq,) Nm (vendor-specific meaning, see the driver docstring)
    gripper: float | None = None  # finger opening, m
    eef_pos: np.ndarray | None = None  # (3,) m, base frame (TCP)
    eef_quat: np.ndarray | None = None  # (4,) w, x, y, z
    object_state: np.ndarray | None = None  # (Do,) simulated objects: pos(3) + quat(4) each
    sim_time: float | None = None  # seconds of simulated time (simulated drivers)

    def as_obs(self) -> dict[str, np.ndarray]:
        """float32 observation dict with robotstack.core.keys names (the env/store convention)."""
        out = {keys.JOINT_POS: self.joint_pos, keys.JOINT_VEL: self.joint_vel}
        if self.gripper is not None:
            out[keys.GRIPPER] = np.array([self.gripper])
        if self.eef_pos is not None:
            out[keys.EEF_POS] = self.eef_pos
        if self.eef_quat is not None:
            out[keys.EEF_QUAT] = self.eef_quat
        if self.object_state is not None:
            out[keys.OBJECT_STATE] = self.object_state
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}


@dataclass(frozen=True)
class SentCommand:
    """What a driver actually sent: after its final hardware clamp, in the units of ArmInfo."""

    q: np.ndarray  # (Dq,) rad
    gripper: float | None  # m, None when nothing was sent to a gripper this call
    time_ns: int  # when it left (servo clock)
    clipped: bool = False  # the driver's own range clamp changed the request


@runtime_checkable
class ArmDriver(Protocol):
    """Every arm backend. Real drivers no-op ``step``; simulated ones advance physics by ``dt``."""

    info: ArmInfo

    @property
    def is_connected(self) -> bool: ...

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def read_state(self) -> ArmState: ...

    def command_joints(self, q_target: np.ndarray, gripper_target: float | None = None) -> SentCommand: ...

    def step(self, dt: float) -> None: ...

    def reset(self, seed: int | None = None, object_poses: dict[str, Any] | None = None) -> ArmState: ...

    def halt(self) -> None: ...  # stop motion now (vendor stop); simulated drivers hold the current position


# --- helpers shared by the drivers ------------------------------------------------------------------------
def import_sdk(module: str, *, vendor: str, package: str, extra: str) -> Any:
    """Import a vendor SDK lazily; a missing one is a DeviceUnavailableError naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DeviceUnavailableError(
            f"the {vendor} driver needs the {package!r} package (import {module!r} failed: {exc}); "
            f"install it with: pip install 'robotstack[{extra}]'"
        ) from exc


def as_joint_vector(q: Any, dof: int, where: str) -> np.ndarray:
    """(Dq,) finite float64 copy, or a DriverError that names the argument and the expected shape."""
    arr = np.array(q, dtype=np.float64).reshape(-1)
    if arr.shape != (dof,):
        raise DriverError(f"{where}: got shape {np.shape(q)}, expected ({dof},)")
    if not np.all(np.isfinite(arr)):
        raise DriverError(f"{where}: contains NaN/Inf: {arr.tolist()}")
    return arr


def clip_to_range(q: np.ndarray, info: ArmInfo) -> tuple[np.ndarray, bool]:
    """The final hardware clamp every driver applies before sending."""
    out = np.minimum(np.maximum(q, info.q_min), info.q_max)
    return out, bool(np.any(out != q))


def clip_gripper(width: float | None, info: ArmInfo) -> float | None:
    if width is None or info.gripper_range is None:
        return None
    lo, hi = info.gripper_range
    return float(min(max(float(width), lo), hi))


def check_connected(connected: bool, info: ArmInfo) -> None:
    """The one error every driver raises when used before ``connect()``."""
    if not connected:
        raise DriverError(f"{info.name}: not connected; call connect() first")


def send_command(info: ArmInfo, q_target: Any, gripper_target: float | None, send_q: Callable[[np.ndarray], Any],
                 send_gripper: Callable[[float], Any] | None = None) -> SentCommand:
    """The body of every driver's ``command_joints``, written once: the final hardware clamp, the backend's
    joint call (``send_q``), the clamped gripper opening to ``send_gripper`` (None: no gripper to drive), and
    the record of what was actually sent. Backends differ only in the two callables."""
    q, clipped = clip_to_range(as_joint_vector(q_target, info.dof, "command_joints q_target"), info)
    send_q(q)
    grip = clip_gripper(gripper_target, info)
    if grip is not None and send_gripper is not None:
        send_gripper(grip)
    return SentCommand(q=q, gripper=grip, time_ns=now_ns(), clipped=clipped)


def read_only_reset(driver: "ArmDriver", vendor: str, object_poses: dict | None) -> ArmState:
    """``reset`` of a real arm: it is never teleported, so reset only reads the state (go home through the
    servo, under its limits); object poses are refused."""
    if object_poses:
        raise DriverError(f"{vendor}: object_poses cannot be set on a real robot")
    return driver.read_state()


class AsyncGripper:
    """Runs a slow, blocking gripper API off the servo thread.

    Vendor gripper calls are network round trips (franka ``Gripper.move`` blocks until the motion ends), far too
    slow for a 1 kHz loop. ``request(width)`` only records the latest wish; a worker thread sends it when it
    differs from the last sent width by more than ``min_change`` and polls the width at ``poll_hz``.
    """

    def __init__(self, move: Callable[[float], Any], read: Callable[[], float], *, min_change: float = 0.001,
                 poll_hz: float = 20.0, name: str = "gripper"):
        self._move, self._read = move, read
        self.min_change, self.poll_s = float(min_change), 1.0 / poll_hz
        self._wanted: float | None = None
        self._sent: float | None = None
        self.width: float | None = None
        self.error: BaseException | None = None
        self.moves = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        try:
            self.width = float(self._read())
        except Exception as exc:  # a gripper that does not answer is reported, the arm still runs
            self.error = exc
        self._thread.start()

    def request(self, width: float) -> bool:
        """Record the wish; True when it will be sent (differs enough from the last sent width)."""
        self._wanted = float(width)
        due = self._sent is None or abs(self._wanted - self._sent) > self.min_change
        if due:
            self._wake.set()
        return due

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                wanted = self._wanted
                if wanted is not None and (self._sent is None or abs(wanted - self._sent) > self.min_change):
                    self._sent = wanted
                    self._move(wanted)
                    self.moves += 1
                self.width = float(self._read())
            except Exception as exc:  # keep the last error for read_state/status; never kill the servo
                self.error = exc


def panda_info(name: str, *, simulated: bool, object_names=(), vendor: str = "", rate_hz: float = 1000.0,
               q_min=None, q_max=None, gripper_range=PANDA_GRIPPER_RANGE) -> ArmInfo:
    """ArmInfo of a Franka Panda; joint range defaults to the URDF's (robotstack.core.kinematics)."""
    return ArmInfo(
        name=name, dof=7, joint_names=PANDA_JOINTS,
        q_min=kin.JOINT_LOWER if q_min is None else q_min, q_max=kin.JOINT_UPPER if q_max is None else q_max,
        dq_max=PANDA_DQ_MAX, ddq_max=PANDA_DDQ_MAX, gripper_range=gripper_range, nominal_rate_hz=rate_hz,
        simulated=simulated, kinematics="panda", object_names=tuple(object_names), vendor=vendor,
    )


def now_ns() -> int:
    return time.monotonic_ns()


SHAPE_SIZES = {"box": 3, "sphere": 1, "cylinder": 2}  # half-size values per primitive


@dataclass
class ObjectPart:
    """One primitive of a compound object, in the body frame."""

    shape: str
    size: tuple[float, ...]
    pos: tuple[float, float, float] = (0.0, 0.0, 0.0)
    quat: tuple[float, float, float, float] = (1.0, 0.0, 0.0, 0.0)  # wxyz


@dataclass
class ObjectSpec:
    """One simulated object (a plain dict from the caller, read by robotstack.core.config). Sizes are MuJoCo
    half-sizes.

    shape: "box" (size = 3 half extents), "sphere" (size = [radius]), "cylinder" (size = [radius, half height]),
    "compound" (``parts`` = list of ObjectPart dicts {shape, size, pos, quat}, e.g. the T-block's two boxes).
    pose: [x, y, z, qw, qx, qy, qz] (or [x, y, z]); mass 0 = static; collide False = visual-only marker.
    """

    name: str
    shape: str
    size: tuple[float, ...] = ()
    parts: tuple[dict[str, Any], ...] = ()  # ObjectPart dicts (drivers read them as dicts)
    pose: np.ndarray = field(default_factory=lambda: np.array([0.0, 0, 0, 1, 0, 0, 0]))
    mass: float = 0.1
    friction: float = 1.0
    rgba: tuple[float, float, float, float] = (0.8, 0.3, 0.3, 1.0)
    collide: bool = True

    SHAPES = {**SHAPE_SIZES, "compound": 0}

    @property
    def dynamic(self) -> bool:
        return self.mass > 0 and self.collide

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "ObjectSpec":
        return read_config(cls, d, where)

    def __post_init__(self) -> None:  # domain checks; keys and types are the reader's job
        where = f"object {self.name!r}"
        if self.shape not in self.SHAPES:
            raise ConfigError(f"{where}: shape={self.shape!r}: expected one of {sorted(self.SHAPES)}")
        if self.shape != "compound" and len(self.size) != self.SHAPES[self.shape]:
            raise ConfigError(f"{where}: size={list(self.size)}: {self.shape} needs {self.SHAPES[self.shape]} "
                              "half-size value(s)")
        if self.shape == "compound" and not self.parts:
            raise ConfigError(f"{where}: parts: a compound object needs at least one part")
        parts = [read_config(ObjectPart, p, where, path=f"parts[{i}]") for i, p in enumerate(self.parts)]
        for i, part in enumerate(parts):
            if part.shape not in SHAPE_SIZES:
                raise ConfigError(f"{where}: parts[{i}].shape={part.shape!r}: expected box, sphere or cylinder")
            if len(part.size) != SHAPE_SIZES[part.shape]:
                raise ConfigError(f"{where}: parts[{i}].size: {part.shape} needs {SHAPE_SIZES[part.shape]} value(s)")
        self.parts = tuple(to_dict(p) for p in parts)
        pose = np.asarray(self.pose, dtype=np.float64).reshape(-1)
        if pose.shape == (3,):
            pose = np.concatenate([pose, [1.0, 0.0, 0.0, 0.0]])
        if pose.shape != (7,) or not np.all(np.isfinite(pose)) or abs(np.linalg.norm(pose[3:]) - 1) > 1e-3:
            raise ConfigError(f"{where}: pose={pose.tolist()}: expected [x, y, z] or [x, y, z, qw, qx, qy, qz] "
                              "with a unit quaternion")
        self.pose = pose
        if self.mass < 0:
            raise ConfigError(f"{where}: mass={self.mass}: expected >= 0 (0 = static)")


def parse_objects(objects) -> list[ObjectSpec]:
    specs = [ObjectSpec.from_dict(d, f"objects[{i}]") for i, d in enumerate(objects or ())]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"objects: duplicate name(s) {dup}")
    return specs


def pose_of(value, where: str) -> np.ndarray:
    """[x, y, z] or [x, y, z, qw, qx, qy, qz] -> (7,) with a unit quaternion."""
    pose = np.asarray(value, dtype=np.float64).reshape(-1)
    if pose.shape == (3,):
        pose = np.concatenate([pose, [1.0, 0.0, 0.0, 0.0]])
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise DriverError(f"{where}: expected [x, y, z(, qw, qx, qy, qz)], got {np.asarray(value).tolist()}")
    n = np.linalg.norm(pose[3:])
    if abs(n - 1.0) > 1e-3:
        raise DriverError(f"{where}: quaternion norm {n:.4f}, expected 1")
    pose[3:] /= n
    return pose
