"""The end-effector action contract, written once for the sim env, the on-robot runtime and the servo's box.

An action is ``[dx, dy, dz, (dyaw,) gripper]`` in [-1, 1] (values outside are clipped). Each control step it moves
a Cartesian TCP target (world / robot base frame, metres) by ``a[:3] * max_step_pos`` and, for tasks with a yaw
dim, the target yaw by ``a[3] * max_step_yaw`` rad. Then:
- the target may lead the measured TCP by at most ``max_lead`` m (no wind-up while contact blocks the hand);
- the target stays inside the workspace box ``[ws_lo, ws_hi]`` (the z floor keeps fingertips off the table);
- the yaw stays within ``+-yaw_limit`` (joint 7 leaves about +-2.2 rad around the home yaw; keep a margin).
The gripper is binary: ``gripper > 0`` closes (opening 0), ``<= 0`` opens fully (``gripper_open``).

Gripper unit: ONE unit everywhere, the total opening between the fingers in metres (the sum of both finger
joints), which is what the ``robot_gripper`` observation reports and what arm servers take. Only the MuJoCo
Panda's finger actuators want a per-finger value: ``per_finger_opening`` converts at that one place.

Action modes (``EEActionSpec.mode``; issue 10 item 3):
- ``delta`` (the default, velocity-style): as above, the action moves the target by a step.
- ``absolute`` (position control, diffusion_policy's choice): the action ``[x, y, z, (yaw,) gripper]`` IS the
  target: xyz normalised to [-1, 1] over the workspace box (-1 = ws_lo, +1 = ws_hi), yaw absolute, normalised over
  ``+-yaw_limit``. The same safety applies: the target may lead the measured TCP by at most ``max_lead`` (a far
  target is pulled onto the max-lead sphere around the TCP, so the hand approaches it at a bounded pace), and the
  yaw target may move at most ``max_step_yaw`` per step (the yaw rate delta mode has: a jump of up to 3.2 rad in
  one step would spin joint 7 at once). Yaw is absolute rather than delta so the whole action is a target that a
  chunk does not drift from. The gripper dim is the same in both modes.
``absolute_from_delta`` turns a delta intent into the absolute action that targets ``measured TCP + step``
(the scripted experts plan in deltas and emit either mode through it).

The step itself (``step_target``) is a pure function; the sim env and the runtime's ``EEActionMapper`` hold the
target state and turn it into joint targets with ``kinematics.solve_ik``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from robotstack.core.errors import ConfigError
from robotstack.core.kinematics import FINGER_MAX

DELTA, ABSOLUTE = "delta", "absolute"
ACTION_MODES = (DELTA, ABSOLUTE)
KINDS = {DELTA: "ee_delta", ABSOLUTE: "ee_absolute"}  # the dict's "kind" per mode
KIND = KINDS[DELTA]
POS_NAMES = ("dx", "dy", "dz")
YAW_NAME = "dyaw"
ABS_POS_NAMES = ("x", "y", "z")
ABS_YAW_NAME = "yaw"
GRIPPER_NAME = "gripper"
GRIPPER_CONVENTION = "positive_closes"  # the only one: gripper > 0 closes, <= 0 opens

MAX_STEP_POS = 0.02  # m per unit action per control step
MAX_STEP_YAW = 0.15  # rad per unit action per control step
YAW_LIMIT = 1.6  # rad
MAX_LEAD = 0.04  # m
WS_LO = (0.25, -0.4, 0.012)  # TCP workspace box, robot base frame (m)
WS_HI = (0.8, 0.4, 0.45)
GRIPPER_OPEN = 2 * FINGER_MAX  # total opening of both fingers (m) when open
GRIPPER_CLOSED = 0.0


def action_names(use_yaw: bool, mode: str = DELTA) -> tuple[str, ...]:
    if mode == ABSOLUTE:
        return ABS_POS_NAMES + ((ABS_YAW_NAME,) if use_yaw else ()) + (GRIPPER_NAME,)
    return POS_NAMES + ((YAW_NAME,) if use_yaw else ()) + (GRIPPER_NAME,)


def check_mode(mode: Any, where: str = "action_mode") -> str:
    if mode not in ACTION_MODES:
        raise ConfigError(f"{where}={mode!r}: expected one of {list(ACTION_MODES)}")
    return mode


def per_finger_opening(opening: float) -> float:
    """Total opening (m) -> the per-finger joint value of a symmetric two-finger gripper (the MuJoCo Panda's)."""
    return opening / 2


@dataclass(frozen=True)
class EEActionSpec:
    """The whole contract as data (it travels in checkpoints and export manifests via to_dict / from_dict).

    Field order keeps the runtime's former ``ActionScale(max_step_pos, max_step_yaw, use_yaw, ...)`` positions.
    """

    max_step_pos: float = MAX_STEP_POS
    max_step_yaw: float = MAX_STEP_YAW  # unused (may be 0) when use_yaw is False
    use_yaw: bool = True
    ws_lo: tuple = WS_LO
    ws_hi: tuple = WS_HI
    max_lead: float = MAX_LEAD
    yaw_limit: float = YAW_LIMIT
    gripper_open: float = GRIPPER_OPEN
    mode: str = DELTA  # "delta" or "absolute" (module docstring)
    _lo: np.ndarray = field(init=False, repr=False, compare=False)
    _hi: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def bad(key: str, value: Any, expected: str):
            return ConfigError(f"EEActionSpec.{key}={value!r}: expected {expected}")

        for key in ("max_step_pos", "max_lead", "yaw_limit", "gripper_open"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
                raise bad(key, v, "a finite number > 0")
            object.__setattr__(self, key, float(v))
        v = self.max_step_yaw
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0 or (
                self.use_yaw and v == 0):
            raise bad("max_step_yaw", v, "a finite number > 0 (>= 0 when use_yaw is False)")
        object.__setattr__(self, "max_step_yaw", float(v))
        if not isinstance(self.use_yaw, (bool, np.bool_)):
            raise bad("use_yaw", self.use_yaw, "true or false")
        object.__setattr__(self, "use_yaw", bool(self.use_yaw))
        box = []
        for key in ("ws_lo", "ws_hi"):
            v = getattr(self, key)
            try:
                arr = np.asarray(v, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise bad(key, v, "3 numbers (x, y, z) in metres") from None
            if arr.shape != (3,) or not np.all(np.isfinite(arr)):
                raise bad(key, v, "3 finite numbers (x, y, z) in metres")
            object.__setattr__(self, key, tuple(float(x) for x in arr))
            box.append(arr)
        if not np.all(box[0] < box[1]):
            raise bad("ws_lo", self.ws_lo, f"below ws_hi={self.ws_hi} on every axis")
        check_mode(self.mode, "EEActionSpec.mode")
        object.__setattr__(self, "_lo", box[0])
        object.__setattr__(self, "_hi", box[1])

    @property
    def names(self) -> tuple[str, ...]:
        return action_names(self.use_yaw, self.mode)

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) as fresh (3,) arrays."""
        return self._lo.copy(), self._hi.copy()

    # --- serialization (keys carry their units; every key is required except action_mode, whose absence -- a dict
    # written before the modes existed -- reads as delta; unknown keys are refused) ------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KINDS[self.mode],
            "action_mode": self.mode,
            "names": list(self.names),
            "max_step_pos_m": self.max_step_pos,
            "max_step_yaw_rad": self.max_step_yaw,
            "max_lead_m": self.max_lead,
            "yaw_limit_rad": self.yaw_limit,
            "workspace_lo_m": list(self.ws_lo),
            "workspace_hi_m": list(self.ws_hi),
            "gripper_open_m": self.gripper_open,
            "gripper_convention": GRIPPER_CONVENTION,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "ee_action") -> "EEActionSpec":
        """Strict reader of ``to_dict``'s output; ``where`` names the source (file / manifest key) in errors."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {sorted(DICT_KEYS)}, got {type(d).__name__}")
        missing, unknown = sorted(DICT_KEYS - OPTIONAL_KEYS - set(d)), sorted(set(d) - DICT_KEYS)
        if missing or unknown:
            raise ConfigError(f"{where}: missing key(s) {missing}, unknown key(s) {unknown}; "
                              f"expected {sorted(DICT_KEYS)} ({sorted(OPTIONAL_KEYS)} optional)")
        mode = check_mode(d.get("action_mode", DELTA), f"{where}.action_mode")
        if d["kind"] != KINDS[mode]:
            raise ConfigError(f"{where}.kind={d['kind']!r}: expected {KINDS[mode]!r} (action_mode {mode!r})")
        if d["gripper_convention"] != GRIPPER_CONVENTION:
            raise ConfigError(f"{where}.gripper_convention={d['gripper_convention']!r}: expected "
                              f"{GRIPPER_CONVENTION!r}")
        names = tuple(d["names"]) if isinstance(d["names"], (list, tuple)) else None
        if names not in (action_names(True, mode), action_names(False, mode)):
            raise ConfigError(f"{where}.names={d['names']!r}: expected {list(action_names(True, mode))} or "
                              f"{list(action_names(False, mode))} (action_mode {mode!r})")
        try:
            return cls(max_step_pos=d["max_step_pos_m"], max_step_yaw=d["max_step_yaw_rad"],
                       use_yaw=len(names) == 5, ws_lo=d["workspace_lo_m"], ws_hi=d["workspace_hi_m"],
                       max_lead=d["max_lead_m"], yaw_limit=d["yaw_limit_rad"], gripper_open=d["gripper_open_m"],
                       mode=mode)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


DICT_KEYS = frozenset(EEActionSpec().to_dict())
OPTIONAL_KEYS = frozenset({"action_mode"})
SPEC_FIELDS = tuple(f.name for f in fields(EEActionSpec) if f.init)


@dataclass(frozen=True)
class EETarget:
    """Target state the action integrates into: TCP position (3,) m, yaw rad, gripper opening m (total)."""

    pos: np.ndarray
    yaw: float
    gripper: float


def gripper_command(spec: EEActionSpec, a_gripper: float) -> float:
    """Binary gripper: action > 0 closes (opening 0), otherwise fully open; returns the total opening (m)."""
    return GRIPPER_CLOSED if a_gripper > 0 else spec.gripper_open


def initial_target(spec: EEActionSpec, tcp_pos, tcp_yaw: float, gripper: float | None = None) -> EETarget:
    """Target at reset: where the hand is (inside the box and yaw limit), so the first step does not jump."""
    pos = np.clip(np.asarray(tcp_pos, dtype=np.float64), spec._lo, spec._hi)
    yaw = float(np.clip(tcp_yaw, -spec.yaw_limit, spec.yaw_limit))
    return EETarget(pos, yaw, spec.gripper_open if gripper is None else float(gripper))


def encode_absolute(spec: EEActionSpec, pos, yaw: float, gripper: float) -> np.ndarray:
    """Absolute-mode action (Da,) for a TCP target ``pos`` (m, clipped to the box), ``yaw`` (rad, clipped to the
    limit; ignored without a yaw dim) and the gripper action value."""
    p = np.clip(np.asarray(pos, dtype=np.float64), spec._lo, spec._hi)
    a = np.empty(spec.dim)
    a[:3] = 2.0 * (p - spec._lo) / (spec._hi - spec._lo) - 1.0
    if spec.use_yaw:
        a[3] = float(np.clip(yaw, -spec.yaw_limit, spec.yaw_limit)) / spec.yaw_limit
    a[-1] = gripper
    return a


def decode_absolute(spec: EEActionSpec, a: np.ndarray) -> tuple[np.ndarray, float]:
    """Absolute-mode action (clipped to [-1, 1]) -> (TCP target position (3,) m, yaw target rad)."""
    pos = spec._lo + (a[:3] + 1.0) * 0.5 * (spec._hi - spec._lo)
    return pos, float(a[3]) * spec.yaw_limit if spec.use_yaw else 0.0


def absolute_from_delta(spec: EEActionSpec, a_delta, tcp_measured, yaw_measured: float) -> np.ndarray:
    """A delta intent -> the absolute action targeting measured TCP + step (and measured yaw + yaw step).

    Anchored on what is measured (the observation), not on the env's internal target, so the absolute action is
    a function of what a policy sees. ``spec`` is the absolute-mode spec; ``a_delta`` is laid out as delta mode."""
    a = np.clip(np.asarray(a_delta, dtype=np.float64).reshape(-1), -1.0, 1.0)
    if a.shape != (spec.dim,):
        raise ValueError(f"delta action shape {a.shape}: expected ({spec.dim},)")
    pos = np.asarray(tcp_measured, dtype=np.float64) + a[:3] * spec.max_step_pos
    yaw = float(yaw_measured) + (a[3] * spec.max_step_yaw if spec.use_yaw else 0.0)
    return encode_absolute(spec, pos, yaw, a[-1])


def hold_action(spec: EEActionSpec, target: EETarget) -> np.ndarray:
    """The action that keeps ``target`` where it is (fingers open): zeros in delta mode, the target itself in
    absolute mode (whose zero would be the centre of the box)."""
    if spec.mode == ABSOLUTE:
        return encode_absolute(spec, target.pos, target.yaw, -1.0)
    a = np.zeros(spec.dim)
    a[-1] = -1.0
    return a


def step_target(spec: EEActionSpec, target: EETarget, action, tcp_measured) -> EETarget:
    """One control step of the contract: (target, action (Da,), measured TCP (3,)) -> next target."""
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    if a.shape != (spec.dim,):
        raise ValueError(f"action shape {a.shape}: expected ({spec.dim},) for names {list(spec.names)}")
    a = np.clip(a, -1.0, 1.0)
    tcp = np.asarray(tcp_measured, dtype=np.float64)
    if spec.mode == ABSOLUTE:
        return _step_absolute(spec, target, a, tcp)
    pos = target.pos + a[:3] * spec.max_step_pos
    lead = pos - tcp
    n = np.linalg.norm(lead)
    if n > spec.max_lead:  # blocked by contact: do not let the target run away from the hand
        pos = tcp + lead * (spec.max_lead / n)
    pos = np.clip(pos, spec._lo, spec._hi)
    yaw = target.yaw
    if spec.use_yaw:
        yaw = float(np.clip(yaw + a[3] * spec.max_step_yaw, -spec.yaw_limit, spec.yaw_limit))
    return EETarget(pos, yaw, gripper_command(spec, a[-1]))


def _step_absolute(spec: EEActionSpec, target: EETarget, a: np.ndarray, tcp: np.ndarray) -> EETarget:
    pos, yaw = decode_absolute(spec, a)
    lead = pos - tcp
    n = np.linalg.norm(lead)
    if n > spec.max_lead:  # a far target: pull it onto the max-lead sphere around the hand (same rule as delta)
        pos = tcp + lead * (spec.max_lead / n)
    pos = np.clip(pos, spec._lo, spec._hi)
    if spec.use_yaw:  # the yaw rate of delta mode: at most max_step_yaw per step
        yaw = float(np.clip(np.clip(yaw, target.yaw - spec.max_step_yaw, target.yaw + spec.max_step_yaw),
                            -spec.yaw_limit, spec.yaw_limit))
    else:
        yaw = target.yaw
    return EETarget(pos, yaw, gripper_command(spec, a[-1]))
