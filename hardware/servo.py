"""Servo core: the hardware-side safety layer between timestamped targets and an ArmDriver, plus its loop runner.

Copied ideas: diffusion_policy's RTDEInterpolationController (its own fixed-rate loop interpolates toward the
latest timestamped target and applies speed limits), polymetis (hard limits in the lowest layer, revert to a safe
behaviour when the client goes quiet), SERL (bound the reference error so a blocked arm does not wind up).

``ServoCore`` is pure logic (no threads, no sleeping; every call takes ``now_ns`` on the servo clock):
  submit(target)   accept or reject one target; Cartesian targets go through kinematics.solve_ik once here.
                   Rejected: stale (expired validity window), out of order (seq or send time not newer than the
                   last accepted), outside the workspace box, IK failure, wrong shape/NaN, wrong mode, STOP.
  tick(q_measured) one command per period: interpolate toward the target with synchronized, velocity- and
                   acceleration-limited motion (arrive at target_time_ns when given, else as fast as the limits
                   allow), then clamp: max step per tick, max lead over the measured position, joint range minus
                   a margin, workspace box (the command never moves the TCP further outside it).
  watchdogs        target expired -> HOLD (decelerate at the acceleration limit, then hold);
                   heartbeats armed and none for ``heartbeat_timeout_s`` -> STOP (hold; refuse targets until
                   reset() or request_mode()); estop(True) latches STOP until estop(False) and then reset().
``ServoLoop`` runs driver.read_state -> core.tick -> driver.command_joints -> driver.step -> hook at a fixed
rate (absolute deadlines, hybrid sleep + spin via robotstack.core.timing.RateKeeper, SCHED_FIFO when permitted).

Clocks: every ``*_ns`` here is ``time.monotonic_ns()`` of the servo process. The networking layer converts the
client's send / target / expiry times with its clock-offset estimate before calling ``submit``.
Glossary: Dq arm joints.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import numpy as np

from hardware.drivers.base import ArmDriver, ArmInfo, ArmState
from robotstack.core import ee_action
from robotstack.core.config import from_dict as read_config
from robotstack.core.errors import ConfigError
from robotstack.core.joint_motion import DEFAULT_ACCEL_SCALE, DEFAULT_VELOCITY_SCALE, JointMotion
from robotstack.core.rotations import quat_to_mat
from robotstack.core.timing import RateKeeper

log = logging.getLogger(__name__)

MODES = ("servo", "hold", "stop")  # servo: follow targets; hold: hold, refuse targets; stop: latched hold
# reject reasons (snake_case: they travel in Status.rejects)
STOPPED, MODE_HOLD, NO_HEARTBEAT, INVALID, STALE, OUT_OF_ORDER = (
    "stopped", "mode_hold", "no_heartbeat", "invalid", "stale", "out_of_order")
NO_KINEMATICS, ORIENTATION, IK_FAILED, WORKSPACE = "no_kinematics", "orientation", "ik_failed", "workspace"
# requests (not targets): a home pose outside the joint range, an unknown mode; FUTURE: sent after it arrived
JOINT_LIMIT, UNKNOWN_MODE, FUTURE = "joint_limit", "unknown_mode", "future"
REJECT_REASONS = (STOPPED, MODE_HOLD, NO_HEARTBEAT, INVALID, STALE, OUT_OF_ORDER, NO_KINEMATICS, ORIENTATION,
                  IK_FAILED, WORKSPACE, JOINT_LIMIT, UNKNOWN_MODE, FUTURE)
# limit clamps, counted per tick (or per target for target_*)
CLAMP_KINDS = ("target_joint_limit", "target_workspace", "target_unreachable", "acceleration", "max_step", "lead",
               "joint_limit", "workspace")
# upper bound on the distance from any Panda joint axis to the TCP (m): |dTCP| <= TCP_REACH_M * sum|dq|
TCP_REACH_M = 1.3
# the action contract's TCP box (core/ee_action.py WS_LO/WS_HI) plus a margin (m, per axis, below / above): targets
# the env and the runtime can reach always pass. Rounded to um so the box reads as plain numbers.
_BOX_MARGIN_LO, _BOX_MARGIN_HI = (0.05, 0.05, 0.007), (0.05, 0.05, 0.15)
PANDA_WORKSPACE = (tuple(round(v - m, 6) for v, m in zip(ee_action.WS_LO, _BOX_MARGIN_LO)),
                   tuple(round(v + m, 6) for v, m in zip(ee_action.WS_HI, _BOX_MARGIN_HI)))
Box = tuple[tuple[float, float, float], tuple[float, float, float]]  # (lo xyz, hi xyz)


@dataclass
class ServoConfig:
    """Servo limits and watchdogs. Every safety limit is on by default (design.md §6: no default-off limits)."""

    rate_hz: float = 1000.0
    joint_margin: float = 0.05  # rad kept inside the driver's hardware range
    velocity_scale: float = DEFAULT_VELOCITY_SCALE  # fraction of ArmInfo.dq_max the servo may use
    accel_scale: float = DEFAULT_ACCEL_SCALE  # fraction of ArmInfo.ddq_max
    max_step: float | None = None  # rad per tick, every joint; None: the velocity limit times the period
    max_lead: float = 0.3  # rad the command may lead the measured joint position (no wind-up when blocked)
    workspace: Box | str | None = "default"  # ((lo x,y,z), (hi x,y,z)) TCP box, base frame; "default":
    # PANDA_WORKSPACE for kinematics="panda", none otherwise (set the vendor controller's safety planes for those)
    workspace_mode: str = "reject"  # Cartesian targets outside the box: "reject" or "clamp" into it
    heartbeat_timeout_s: float = 0.5
    require_heartbeat: bool = True  # refuse targets until a first heartbeat arrives
    initial_mode: str = "servo"
    ik_iters: int = 30
    ik_tol_m: float = 0.005  # a Cartesian target IK reaches within this distance counts as reached
    # A target inside the box that the arm cannot reach pointing down (the pocket above the base: x < ~0.3 m near
    # y = 0 at z ~0.03-0.2 m; the far corners) is executed at the nearest pose the IK finds when that pose ends
    # within this distance of it (counted clamps["target_unreachable"]), the way the sim env and the controller's own
    # IK carry such a residual; farther it is rejected `ik_failed`. 0: reject every target IK ends farther than
    # ik_tol_m from.
    # 5 cm: the runtime's targets lead the TCP by at most 4 cm (ee_action.MAX_LEAD), so a hand at the edge of the
    # reachable set sees residuals under that, while a target far out of reach is still refused.
    ik_nearest_max_m: float = 0.05
    orientation_tol_rad: float = 0.35  # Cartesian quat may tilt this far from pointing down (IK keeps it down)

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "servo config") -> "ServoConfig":
        """Strict read (robotstack.core.config): unknown keys and wrong types fail naming the key."""
        return read_config(cls, d or {}, where)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(key, expected):
            raise ConfigError(f"servo config: {key}={getattr(self, key)!r}: expected {expected}")

        if not self.rate_hz > 0:
            bad("rate_hz", "> 0")
        for k in ("velocity_scale", "accel_scale"):
            if not 0 < getattr(self, k) <= 1:
                bad(k, "in (0, 1]")
        for k in ("joint_margin", "max_lead", "heartbeat_timeout_s", "ik_tol_m", "orientation_tol_rad"):
            if not getattr(self, k) > 0 and not (k == "joint_margin" and self.joint_margin == 0):
                bad(k, "> 0")
        if not self.ik_nearest_max_m >= 0:
            bad("ik_nearest_max_m", ">= 0")
        if self.max_step is not None and not self.max_step > 0:
            bad("max_step", "None or > 0")
        if self.workspace_mode not in ("reject", "clamp"):
            bad("workspace_mode", "'reject' or 'clamp'")
        if self.initial_mode not in ("servo", "hold"):
            bad("initial_mode", "'servo' or 'hold'")


IK_STALL_M = 1e-3  # Cartesian targets: stop IK once within 1 mm and no longer converging (kinematics.solve_ik)


@dataclass(frozen=True)
class ServoTarget:
    """One target. Joint (``q``) or Cartesian (``pos`` + optional ``quat`` wxyz or ``yaw``), times on the servo
    clock. ``target_time_ns``: reach it then (None: as fast as the limits allow); ``expires_ns``: after this the
    target is stale and the servo holds."""

    seq: int
    sent_ns: int
    expires_ns: int
    q: np.ndarray | None = None
    pos: np.ndarray | None = None
    quat: np.ndarray | None = None
    yaw: float | None = None
    gripper: float | None = None
    target_time_ns: int | None = None
    source: Any = None  # who sent it (the server passes its connection): seq order is kept per source

    @classmethod
    def joint(cls, q, *, seq: int, sent_ns: int, expires_ns: int, gripper: float | None = None,
              target_time_ns: int | None = None, source: Any = None) -> "ServoTarget":
        return cls(seq=seq, sent_ns=sent_ns, expires_ns=expires_ns, q=np.asarray(q, dtype=np.float64),
                   gripper=gripper, target_time_ns=target_time_ns, source=source)

    @classmethod
    def cartesian(cls, pos, *, seq: int, sent_ns: int, expires_ns: int, quat=None, yaw: float | None = None,
                  gripper: float | None = None, target_time_ns: int | None = None,
                  source: Any = None) -> "ServoTarget":
        return cls(seq=seq, sent_ns=sent_ns, expires_ns=expires_ns, pos=np.asarray(pos, dtype=np.float64),
                   quat=None if quat is None else np.asarray(quat, dtype=np.float64), yaw=yaw, gripper=gripper,
                   target_time_ns=target_time_ns, source=source)

    @property
    def kind(self) -> str:
        return "joint" if self.q is not None else "cartesian"


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None = None  # one of REJECT_REASONS when rejected
    detail: str = ""
    q: np.ndarray | None = None  # the joint goal that was stored (after IK and clamps)


@dataclass
class ServoCounters:
    ticks: int = 0
    late_ticks: int = 0  # set by ServoLoop (woke past the tolerance)
    skipped_ticks: int = 0  # grid slots slept through (never caught up)
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    clamps: dict[str, int] = field(default_factory=dict)
    stale_holds: int = 0  # targets that expired while active
    hold_ticks: int = 0
    stop_ticks: int = 0
    stops: dict[str, int] = field(default_factory=dict)  # entries into STOP by reason

    def as_dict(self) -> dict[str, Any]:
        return {f.name: (dict(getattr(self, f.name)) if isinstance(getattr(self, f.name), dict)
                         else getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True)
class TickOutput:
    q: np.ndarray  # (Dq,) joint command for this tick
    gripper: float | None  # None: leave the gripper as it is
    state: str  # "tracking" | "holding" | "stopped"
    mode: str
    target_seq: int | None  # seq of the target that shaped this command (None when holding)


@dataclass
class _Active:
    q: np.ndarray
    gripper: float | None
    expires_ns: int | None  # None: internal target (go home), never stale
    target_time_ns: int | None
    seq: int | None
    applied: bool = False


class ServoCore:
    def __init__(self, info: ArmInfo, config: ServoConfig | dict | None = None, *, home_q=None):
        self.info = info
        self.config = config if isinstance(config, ServoConfig) else ServoConfig.from_dict(config)
        self.config.validate()
        c = self.config
        self.period = 1.0 / c.rate_hz
        self.period_ns = int(round(1e9 / c.rate_hz))
        self.q_lo = info.q_min + c.joint_margin
        self.q_hi = info.q_max - c.joint_margin
        if np.any(self.q_lo >= self.q_hi):
            raise ConfigError(f"servo config: joint_margin={c.joint_margin} leaves no range for {info.name}")
        self.rate = float(c.rate_hz)
        self.v_max = info.dq_max * c.velocity_scale
        self.a_max = info.ddq_max * c.accel_scale
        self._a_dt = self.a_max * self.period
        self.motion = JointMotion(self.v_max, self.a_max, self.rate)
        self._hb_timeout_ns = c.heartbeat_timeout_s * 1e9
        self.max_step = (self.v_max * self.period if c.max_step is None
                         else np.minimum(np.full(info.dof, c.max_step), self.v_max * self.period))
        self._kin = None
        if info.kinematics == "panda":
            from robotstack.core import kinematics

            self._kin = kinematics
        ws = c.workspace
        if isinstance(ws, str):
            if ws != "default":
                raise ConfigError(f"servo config: workspace={ws!r}: expected 'default', None or (lo, hi)")
            ws = PANDA_WORKSPACE if self._kin is not None else None
        if ws is not None:
            lo, hi = (np.asarray(v, dtype=np.float64) for v in ws)
            if lo.shape != (3,) or hi.shape != (3,) or np.any(lo >= hi):
                raise ConfigError(f"servo config: workspace={ws!r}: expected ((x, y, z) lo, (x, y, z) hi), lo < hi")
            if self._kin is None:
                raise ConfigError(f"servo config: a workspace box needs a kinematics model; {info.name} has none "
                                  "(use the vendor controller's safety planes)")
            ws = (lo, hi)
        self.workspace = ws
        self.home_q = np.asarray(home_q if home_q is not None else
                                 (self._kin.HOME_Q if self._kin is not None else (info.q_min + info.q_max) / 2),
                                 dtype=np.float64)
        self._lock = threading.RLock()
        # ((pos bytes, yaw), q_ref, q or the reject Verdict, clamped?) of the last Cartesian target solved
        self._ik_last: tuple | None = None
        self.resyncs = 0  # teleports seen (resync); the loop re-reads the state when its hook caused one
        self.counters = ServoCounters(rejected={r: 0 for r in REJECT_REASONS}, clamps={k: 0 for k in CLAMP_KINDS})
        self.mode = c.initial_mode
        self.estop_engaged = False
        self.faults: set[str] = set()
        self.hold_reason = "no_target"
        self.state = "holding"
        self._active: _Active | None = None
        # source -> (seq, sent_ns) of its last accepted target. Per source: a restarted client (a new connection)
        # starts at any seq, and one sender's seq 2**64-1 cannot lock the others out.
        self._order: dict[Any, tuple[int, int]] = {}
        self._last_hb_ns: int | None = None
        self._q_cmd: np.ndarray | None = None
        self._v_cmd = np.zeros(info.dof)
        self._p_cmd_out = 0.0  # how far the current command's TCP is outside the box (m)
        self._ws_slack = 0.0  # how far the TCP may still move before the box must be checked again (m)
        self._grip_cmd: float | None = None
        self.last_target_seq: int | None = None
        self.last_target_sent_ns: int | None = None
        self.last_target_applied_ns: int | None = None

    # --- inputs from the controller ---------------------------------------------------------------------
    def heartbeat(self, now_ns: int | None = None) -> None:
        with self._lock:
            self._last_hb_ns = time.monotonic_ns() if now_ns is None else now_ns

    def submit(self, target: ServoTarget, now_ns: int | None = None) -> Verdict:
        now = time.monotonic_ns() if now_ns is None else now_ns
        with self._lock:
            verdict = self._judge(target, now)
            if verdict.accepted:
                self.counters.accepted += 1
            else:
                self.counters.rejected[verdict.reason] = self.counters.rejected.get(verdict.reason, 0) + 1
            return verdict

    def _reject(self, reason: str, detail: str = "") -> Verdict:
        return Verdict(False, reason, detail)

    def _judge(self, t: ServoTarget, now: int) -> Verdict:
        if self.mode == "stop":
            return self._reject(STOPPED, "estop engaged" if self.estop_engaged else
                                f"stopped ({', '.join(sorted(self.faults)) or 'requested'}); reset first")
        if self.mode == "hold":
            return self._reject(MODE_HOLD, "mode is hold; request mode 'servo' to follow targets")
        if self.config.require_heartbeat and self._last_hb_ns is None:
            return self._reject(NO_HEARTBEAT, "no heartbeat received yet")
        if now >= t.expires_ns:
            return self._reject(STALE, f"expired {(now - t.expires_ns) / 1e6:.1f} ms ago")
        last = self._order.get(t.source)
        if last is not None and (t.seq <= last[0] or t.sent_ns < last[1]):
            return self._reject(OUT_OF_ORDER, f"seq {t.seq} / sent {t.sent_ns} not newer than seq {last[0]} "
                                              f"/ sent {last[1]} from the same sender")
        grip = None
        if t.gripper is not None:
            if not np.isfinite(t.gripper):
                return self._reject(INVALID, "gripper is not finite")
            if self.info.gripper_range is not None:
                grip = float(np.clip(t.gripper, *self.info.gripper_range))
        if t.q is not None:
            q = np.asarray(t.q, dtype=np.float64).reshape(-1)
            if q.shape != (self.info.dof,) or not np.all(np.isfinite(q)):
                return self._reject(INVALID, f"joint target shape {np.shape(t.q)} (want ({self.info.dof},)) or NaN")
        elif t.pos is not None:
            v = self._solve_cartesian(t)
            if isinstance(v, Verdict):
                return v
            q = v
        else:
            return self._reject(INVALID, "target has neither q nor pos")
        q_c = np.minimum(np.maximum(q, self.q_lo), self.q_hi)
        if np.any(q_c != q):
            self.counters.clamps["target_joint_limit"] += 1
        if self.workspace is not None and t.q is not None:
            p = self._kin.forward_kinematics(q_c)[2]
            if self._outside(p) > 1e-9:
                return self._reject(WORKSPACE, f"joint target puts the TCP at {np.round(p, 3).tolist()}, outside "
                                               f"{self._box_str()}")
        self._active = _Active(q=q_c, gripper=grip, expires_ns=t.expires_ns, target_time_ns=t.target_time_ns,
                               seq=t.seq)
        self._order[t.source] = (t.seq, t.sent_ns)
        if len(self._order) > 1024:  # bounded when sources churn without forget_source
            del self._order[next(iter(self._order))]
        self.last_target_seq, self.last_target_sent_ns = t.seq, t.sent_ns
        return Verdict(True, q=q_c.copy())

    def _solve_cartesian(self, t: ServoTarget) -> np.ndarray | Verdict:
        kin = self._kin
        if kin is None:
            return self._reject(NO_KINEMATICS, f"{self.info.name} has no kinematics model; send joint targets")
        pos = np.asarray(t.pos, dtype=np.float64).reshape(-1)
        if pos.shape != (3,) or not np.all(np.isfinite(pos)):
            return self._reject(INVALID, f"pos shape {np.shape(t.pos)} (want (3,)) or NaN")
        if self.workspace is not None and self._outside(pos) > 0:
            if self.config.workspace_mode == "reject":
                return self._reject(WORKSPACE, f"pos {np.round(pos, 3).tolist()} outside {self._box_str()}")
            pos = np.clip(pos, *self.workspace)
            self.counters.clamps["target_workspace"] += 1
        yaw = t.yaw
        if t.quat is not None:
            qw = np.asarray(t.quat, dtype=np.float64).reshape(-1)
            n = np.linalg.norm(qw) if qw.shape == (4,) else 0.0
            if not np.isfinite(n) or abs(n - 1) > 1e-3:
                return self._reject(INVALID, "quat must be a unit (w, x, y, z) quaternion")
            R = quat_to_mat(qw / n)
            tilt = float(np.arccos(np.clip(-R[2, 2], -1.0, 1.0)))
            if tilt > self.config.orientation_tol_rad:
                return self._reject(ORIENTATION, f"TCP tilted {np.degrees(tilt):.0f} deg from pointing down; the IK "
                                                 f"supports {np.degrees(self.config.orientation_tol_rad):.0f} deg")
            yaw = kin.tcp_yaw(R)
        elif yaw is not None and not np.isfinite(yaw):
            return self._reject(INVALID, "yaw is not finite")
        if self._active is not None:
            q_ref = self._active.q
        elif self._q_cmd is not None:
            q_ref = self._q_cmd
        else:
            q_ref = self.home_q
        key = (pos.tobytes(), yaw)
        last = self._ik_last
        if last is not None and last[0] == key and (np.array_equal(last[1], q_ref) or (
                not isinstance(last[2], Verdict) and np.array_equal(last[2], q_ref))):
            # a re-sent target (controllers re-send at ~100 Hz) keeps its solution, or its reject, without new IK
            if isinstance(last[2], Verdict):
                return last[2]
            if last[3]:
                self.counters.clamps["target_unreachable"] += 1
            return last[2].copy()
        q = kin.solve_ik(q_ref, pos, yaw, iters=self.config.ik_iters, stall_m=IK_STALL_M)
        err = float(np.linalg.norm(kin.forward_kinematics(q)[2] - pos))
        clamped = err > self.config.ik_tol_m
        if clamped and err > self.config.ik_nearest_max_m:
            v = self._reject(IK_FAILED, f"IK ended {err * 1000:.1f} mm from {np.round(pos, 3).tolist()} (executes "
                                        f"the nearest pose within {self.config.ik_nearest_max_m * 1000:.0f} mm)")
            self._ik_last = (key, q_ref.copy(), v, False)
            return v
        if clamped:
            self.counters.clamps["target_unreachable"] += 1
        self._ik_last = (key, q_ref.copy(), q.copy(), clamped)
        return q

    def estop(self, engage: bool = True, reason: str = "", now_ns: int | None = None) -> None:
        """engage: latch STOP (hold, refuse targets). Release clears the latch flag only: reset() resumes."""
        with self._lock:
            if engage:
                self.estop_engaged = True
                self._enter_stop("estop")
            else:
                self.estop_engaged = False

    def reset(self, clear_faults: bool = True, go_home: bool = False, home_q=None,
              now_ns: int | None = None) -> tuple[bool, str]:
        """Leave STOP (when the e-stop is released and faults are cleared), forget the target and the seq order
        (a restarted client counts from 0 again), disarm the heartbeat watchdog until the next heartbeat.
        go_home: move to ``home_q`` (default: the configured home) under the servo limits."""
        with self._lock:
            if self.estop_engaged:
                return False, "e-stop is engaged; release it before reset"
            if go_home and home_q is not None:
                bad = self.check_home(home_q)
                if bad is not None:
                    return False, bad[1]
            if clear_faults:
                self.faults.clear()
            elif self.faults:
                return False, f"faults {sorted(self.faults)} remain (reset with clear_faults=True)"
            self.mode = self.config.initial_mode
            self._active = None
            self._order.clear()
            self._last_hb_ns = None
            if go_home:
                home = self.home_q if home_q is None else np.asarray(home_q, dtype=np.float64).reshape(-1)
                self._active = _Active(q=np.clip(home, self.q_lo, self.q_hi), gripper=None, expires_ns=None,
                                       target_time_ns=None, seq=None)
            return True, "reset" + (" and going home" if go_home else "")

    def check_home(self, home_q) -> tuple[str, str] | None:
        """(reason, detail) when a requested home pose is not Dq finite joint angles inside the servo's joint range
        (hardware range minus the margin); None when it is fine. Checked whole, before anything moves."""
        home = np.asarray(home_q, dtype=np.float64).reshape(-1)
        if home.shape != (self.info.dof,) or not np.all(np.isfinite(home)):
            return INVALID, f"home_joint_pos has shape {home.shape} or non-finite values; expected ({self.info.dof},)"
        out = np.flatnonzero((home < self.q_lo) | (home > self.q_hi))
        if out.size:
            j = int(out[0])
            return JOINT_LIMIT, (f"home_joint_pos[{j}]={home[j]:.4g} rad outside [{self.q_lo[j]:.4g}, "
                                 f"{self.q_hi[j]:.4g}] (joint range minus the {self.config.joint_margin} rad margin)")
        return None

    def count_reject(self, reason: str) -> None:
        """Count a request rejected outside submit() (the server's request and clock checks)."""
        with self._lock:
            self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + 1

    def forget_source(self, source: Any) -> None:
        """A sender went away (its connection closed): its seq order is dropped."""
        with self._lock:
            self._order.pop(source, None)

    def request_mode(self, mode: str) -> tuple[bool, str, str]:
        """-> (accepted, mode in force, detail). Leaving STOP this way clears the heartbeat fault."""
        with self._lock:
            if mode not in MODES:
                self.counters.rejected[UNKNOWN_MODE] += 1
                return False, self.mode, f"unknown mode {mode!r}; expected one of {list(MODES)}"
            if mode == "stop":
                self._enter_stop("requested")
                return True, self.mode, ""
            if self.estop_engaged:
                return False, self.mode, "e-stop is engaged; release it and reset"
            if self.mode == "stop":
                self.faults.discard("heartbeat_lost")
                self.faults.discard("requested")
                if self.faults:
                    return False, self.mode, f"faults {sorted(self.faults)} need a reset"
                self._order.clear()
                self._last_hb_ns = None
            self.mode = mode
            if mode == "hold":
                self._active = None
            return True, self.mode, ""

    def resync(self) -> None:
        """Forget the commanded trajectory and the active target: the next tick starts from the measured joints at
        rest. For an arm server after a simulated driver teleported the arm (episode reset); real arms never do."""
        with self._lock:
            self._q_cmd = None
            self._v_cmd = np.zeros(self.info.dof)
            self._active = None
            self.resyncs += 1

    def _enter_stop(self, reason: str) -> None:
        if self.mode != "stop" or reason not in self.faults:
            self.counters.stops[reason] = self.counters.stops.get(reason, 0) + 1
        self.mode = "stop"
        self.faults.add(reason)
        self._active = None

    # --- the tick --------------------------------------------------------------------------------------------
    def tick(self, q_measured, now_ns: int) -> TickOutput:
        """One command. Written with ufuncs and array methods only: on 7-vectors numpy's Python-level wrappers
        (np.clip, np.any, boolean indexing) cost more than the arithmetic, and this runs at 1 kHz."""
        q_meas = np.asarray(q_measured, dtype=np.float64)
        mn, mx = np.minimum, np.maximum
        c = self.counters
        with self._lock:
            c.ticks += 1
            if (self._last_hb_ns is not None and self.mode != "stop"
                    and now_ns - self._last_hb_ns > self._hb_timeout_ns):
                self._enter_stop("heartbeat_lost")
            if self._q_cmd is None:
                self._q_cmd = q_meas.copy()
                if self.workspace is not None:
                    self._p_cmd_out, self._ws_slack = self._box_distances(self._q_cmd)
            q, v = self._q_cmd, self._v_cmd
            act = self._active
            if act is not None and act.expires_ns is not None and now_ns > act.expires_ns:
                c.stale_holds += 1
                self._active = act = None
                self.hold_reason = "stale"
            if self.mode == "stop":
                act = None
            if act is None:  # HOLD / STOP: decelerate at the acceleration limit, then hold
                step = (v - mn(mx(v, -self._a_dt), self._a_dt)) * self.period
                self.state = "stopped" if self.mode == "stop" else "holding"
                if self.mode != "servo":
                    self.hold_reason = self.mode
                if self.mode == "stop":
                    c.stop_ticks += 1
                else:
                    c.hold_ticks += 1
            else:
                if not act.applied:
                    act.applied = True
                    if act.seq is not None:
                        self.last_target_applied_ns = now_ns
                remaining = None if act.target_time_ns is None else (act.target_time_ns - now_ns) * 1e-9
                step, limited = self.motion.step(act.q - q, v, remaining)
                if limited:
                    c.clamps["acceleration"] += 1
                self.state = "tracking"
                if act.gripper is not None:
                    self._grip_cmd = act.gripper
            lim = mn(mx(step, -self.max_step), self.max_step)
            if (abs(lim - step) > 1e-12).any():
                c.clamps["max_step"] += 1
            q_next = q + lim
            # bound the lead over the measured position, still moving at most max_step from the last command
            lead = self.config.max_lead
            led = mn(mx(q_next, q_meas - lead), q_meas + lead)
            if (led != q_next).any():
                c.clamps["lead"] += 1
                q_next = mn(mx(led, q - self.max_step), q + self.max_step)
            # joint range minus margin: never move further out (a start outside the band is not yanked in)
            q_lim = mn(mx(q_next, mn(self.q_lo, q)), mx(self.q_hi, q))
            if (q_lim != q_next).any():
                c.clamps["joint_limit"] += 1
                q_next = q_lim
            if self.workspace is not None and (q_next != q).any():
                # the TCP moves at most REACH * sum|dq|: skip FK while that cannot reach a face of the box
                moved = TCP_REACH_M * float(abs(q_next - q).sum())
                if moved < self._ws_slack:
                    self._ws_slack -= moved
                else:
                    out, slack = self._box_distances(q_next)
                    if out > 1e-9 and out > self._p_cmd_out + 1e-9:
                        c.clamps["workspace"] += 1
                        q_next = q.copy()
                    else:
                        self._p_cmd_out, self._ws_slack = out, slack
            self._v_cmd = (q_next - q) * self.rate
            self._q_cmd = q_next
            if act is not None and act.seq is None and not (q_next != act.q).any() and not (q_next != q).any():
                self._active = None  # internal go-home target reached, at rest
                self.hold_reason = "home"
            return TickOutput(q=q_next.copy(), gripper=self._grip_cmd, state=self.state, mode=self.mode,
                              target_seq=None if act is None else act.seq)

    # --- helpers -----------------------------------------------------------------------------------------------
    def _outside(self, p: np.ndarray) -> float:
        lo, hi = self.workspace
        return float(np.linalg.norm(p - np.clip(p, lo, hi)))

    def _box_distances(self, q: np.ndarray) -> tuple[float, float]:
        """(distance of the TCP outside the box, distance inside to the nearest face) for joints q."""
        p = self._kin.forward_kinematics(q)[2]
        lo, hi = self.workspace
        return self._outside(p), max(0.0, float(min((p - lo).min(), (hi - p).min())))

    def _box_str(self) -> str:
        lo, hi = self.workspace
        return f"box lo {lo.tolist()} hi {hi.tolist()}"

    @property
    def q_cmd(self) -> np.ndarray | None:
        return None if self._q_cmd is None else self._q_cmd.copy()

    @property
    def v_cmd(self) -> np.ndarray:
        return self._v_cmd.copy()

    def heartbeat_age_s(self, now_ns: int | None = None) -> float | None:
        if self._last_hb_ns is None:
            return None
        return ((time.monotonic_ns() if now_ns is None else now_ns) - self._last_hb_ns) * 1e-9

    def status(self, now_ns: int | None = None) -> dict[str, Any]:
        """Plain dict for the Status / RobotState messages and logs."""
        with self._lock:
            return {
                "mode": self.mode, "state": self.state, "hold_reason": self.hold_reason,
                "estop": self.estop_engaged, "faults": sorted(self.faults),
                "last_target_seq": self.last_target_seq, "last_target_sent_ns": self.last_target_sent_ns,
                "last_target_applied_ns": self.last_target_applied_ns,
                "heartbeat_age_s": self.heartbeat_age_s(now_ns), "counters": self.counters.as_dict(),
            }


# --- loop runner ------------------------------------------------------------------------------------------------
@dataclass
class TickRecord:
    """What the hook sees each tick (the networking layer publishes ``state`` and reads targets here). The hook runs
    right after the state is read, before ``core.tick``: the state goes out at once, and a target taken in the hook
    is followed in the same tick."""

    index: int
    now_ns: int  # tick start (servo clock; virtual in run_simulated)
    period_ns: int  # since the previous tick start (0 on the first tick)
    late_ns: int  # how far past its deadline this tick woke
    state: ArmState
    core: ServoCore


Hook = Callable[[TickRecord], None]


class ServoLoop:
    """Fixed-rate loop: read_state -> hook -> core.tick -> command_joints -> step(period), once per period.

    Deadlines are absolute (RateKeeper: sleep to 200 us before the deadline, then spin); a late tick is counted
    and the grid skips ahead (never a burst of catch-up ticks). ``realtime=True`` asks for SCHED_FIFO on the
    loop thread and carries on without it when not permitted (``realtime_error`` says why). A driver exception
    stops the loop, halts the driver and is re-raised by ``run`` / ``join``; a hook exception is counted and
    logged (a dead network shows up as missing heartbeats, which the watchdog turns into STOP).
    """

    def __init__(self, driver: ArmDriver, core: ServoCore | None = None, *, hook: Hook | None = None,
                 realtime: bool = True, rt_priority: int = 50, stats_window: int = 120_000,
                 cpus: set[int] | None = None):
        self.driver = driver
        self.core = core if core is not None else ServoCore(driver.info)
        self.hook = hook
        self.realtime, self.rt_priority = bool(realtime), int(rt_priority)
        self.cpus = None if not cpus else set(cpus)  # pin the loop's thread (only it) while it runs
        self.period = self.core.period
        self.period_ns = self.core.period_ns
        self._t_start = np.zeros(stats_window, dtype=np.int64)
        self._t_work = np.zeros(stats_window, dtype=np.int64)
        self._late = np.zeros(stats_window, dtype=np.int64)
        self._n = 0
        self.realtime_active = False
        self.realtime_error: str | None = None
        self.hook_errors = 0
        self.last_hook_error: BaseException | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sim_now_ns = 0  # virtual clock of run_simulated

    # --- one tick ----------------------------------------------------------------------------------------------
    def _tick(self, now_ns: int, period_ns: int, late_ns: int) -> TickRecord:
        state = self.driver.read_state()
        resyncs = self.core.resyncs
        rec = TickRecord(self._n, now_ns, period_ns, late_ns, state, self.core)
        # the hook (publish this tick's state, take new targets) runs right after the state is read: nothing (the
        # servo step, the command, a simulated arm's physics step of ~0.4 ms in PyBullet) sits between sampling the
        # state and sending it, and a target taken here is followed by this tick's core.tick, not the next one's
        if self.hook is not None:
            try:
                self.hook(rec)
            except Exception as exc:  # noqa: BLE001 - counted, logged, never fatal to the servo
                self.hook_errors += 1
                self.last_hook_error = exc
                if self.hook_errors == 1 or self.hook_errors % 1000 == 0:
                    log.warning("servo hook raised (%d so far): %r", self.hook_errors, exc)
        if self.core.resyncs != resyncs:  # the hook teleported the arm (a sim reset): tick from where it is now
            state = self.driver.read_state()
        out = self.core.tick(state.joint_pos, now_ns)
        self.driver.command_joints(out.q, out.gripper)
        self.driver.step(self.period)
        return rec

    def _record(self, start_ns: int, work_ns: int, late_ns: int) -> None:
        i = self._n % len(self._t_start)
        self._t_start[i], self._t_work[i], self._late[i] = start_ns, work_ns, late_ns
        self._n += 1

    # --- runners -----------------------------------------------------------------------------------------------
    def run(self, duration_s: float | None = None, max_ticks: int | None = None) -> dict[str, Any]:
        """Block in this thread until ``stop()``, ``duration_s`` or ``max_ticks``; returns ``stats()``."""
        sched_prev = self._enter_realtime()
        rk = RateKeeper(self.core.config.rate_hz)
        rk.reset()
        end = None if duration_s is None else rk.start + duration_s
        ticks = 0
        prev = None
        try:
            while not self._stop.is_set():
                rk.wait()
                start = time.monotonic_ns()
                late = start - int((rk.start + rk.ticks * rk.period) * 1e9)
                self._tick(start, 0 if prev is None else start - prev, late)
                prev = start
                self._record(start, time.monotonic_ns() - start, late)
                ticks += 1
                if (max_ticks is not None and ticks >= max_ticks) or (end is not None and start * 1e-9 >= end):
                    break
        except BaseException as exc:
            self.error = exc
            self.core.estop(True, f"driver error: {exc!r}")
            try:
                self.driver.halt()
            except Exception:  # noqa: BLE001 - the original error is what matters
                log.exception("driver.halt() failed after a loop error")
            raise
        finally:
            self.core.counters.late_ticks += rk.late_ticks
            self.core.counters.skipped_ticks += rk.skipped_ticks
            self._leave_realtime(sched_prev)
        return self.stats()

    def run_simulated(self, n_ticks: int, t0_ns: int | None = None) -> dict[str, Any]:
        """As fast as the CPU allows on a virtual clock (``sim_now_ns``, one period per tick, continued across
        calls; ``t0_ns`` restarts it): sim rollouts and tests. Heartbeats/targets must use that clock."""
        if t0_ns is not None:
            self.sim_now_ns = int(t0_ns)
        for _ in range(n_ticks):
            now = self.sim_now_ns
            w0 = time.perf_counter_ns()
            self._tick(now, self.period_ns, 0)
            self._record(now, time.perf_counter_ns() - w0, 0)
            self.sim_now_ns += self.period_ns
        return self.stats()

    def start(self, duration_s: float | None = None, max_ticks: int | None = None) -> threading.Thread:
        """Run in a daemon thread (SCHED_FIFO applies to that thread only)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("servo loop already running")
        self._stop.clear()

        def target():
            try:
                self.run(duration_s, max_ticks)
            except BaseException:  # noqa: BLE001 - kept in self.error, re-raised by join()
                pass

        self._thread = threading.Thread(target=target, name="servo-loop", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> dict[str, Any]:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.stats()

    # --- SCHED_FIFO --------------------------------------------------------------------------------------------
    def _enter_realtime(self):
        if self.cpus is not None:  # pid 0 = this thread on Linux: threads started before (libzmq I/O) stay free
            self._affinity_prev = os.sched_getaffinity(0)
            os.sched_setaffinity(0, self.cpus)
        if not self.realtime:
            return None
        try:
            prev = (os.sched_getscheduler(0), os.sched_getparam(0))
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.rt_priority))
            self.realtime_active = True
            return prev
        except (PermissionError, OSError, AttributeError) as exc:  # not root / no CAP_SYS_NICE / not Linux
            self.realtime_active = False
            self.realtime_error = f"{type(exc).__name__}: {exc}"
            log.info("SCHED_FIFO not available, running with normal scheduling (%s)", self.realtime_error)
            return None

    def _leave_realtime(self, prev) -> None:
        if self.cpus is not None:
            os.sched_setaffinity(0, self._affinity_prev)
        if prev is None:
            return
        try:
            os.sched_setscheduler(0, prev[0], prev[1])
        except (PermissionError, OSError):
            pass

    # --- stats -------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Period / work / lateness percentiles in microseconds over the last ``stats_window`` ticks."""
        n = min(self._n, len(self._t_start))
        idx = (np.arange(self._n - n, self._n) % len(self._t_start)) if n else np.zeros(0, dtype=int)
        starts, work, late = self._t_start[idx], self._t_work[idx], self._late[idx]
        periods = np.diff(starts) / 1e3 if n > 1 else np.zeros(0)

        def pct(x):
            if len(x) == 0:
                return {}
            p = np.percentile(x, [50, 99, 99.9])
            return {"p50": float(p[0]), "p99": float(p[1]), "p999": float(p[2]), "max": float(np.max(x)),
                    "mean": float(np.mean(x))}

        return {
            "ticks": self._n, "rate_hz": self.core.config.rate_hz, "period_us": pct(periods),
            "jitter_us": pct(np.abs(periods - self.period * 1e6)) if len(periods) else {},
            "work_us": pct(work / 1e3), "late_us": pct(late / 1e3),
            "late_ticks": self.core.counters.late_ticks, "skipped_ticks": self.core.counters.skipped_ticks,
            "realtime": self.realtime_active, "realtime_error": self.realtime_error,
            "cpus": None if self.cpus is None else sorted(self.cpus),
            "hook_errors": self.hook_errors,
        }
