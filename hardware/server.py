"""Arm server: one process per arm. Owns the driver and the 1 kHz ServoLoop and speaks the wire protocol.

Everything network-facing runs in the servo loop's per-tick hook (one thread owns the sockets):

    control   drain up to ``max_requests_per_tick`` requests: heartbeat / estop / reset -> Status,
              mode_request -> ModeReply (answered within the tick they arrive in)
    command   the newest target (PULL is conflated): sender times -> server clock (``ClockMap``), then
              ``ServoCore.submit`` (stale / out-of-order / outside limits are rejected and counted there)
    state     published every ``round(rate / state_rate_hz)`` ticks, with the last applied target echoed
              (``last_target_seq`` / ``last_target_sent_ns`` (client clock) / ``last_target_applied_ns``)
    watchdogs ServoCore's: a stale target -> hold (decelerate, hold); no heartbeat *and* no target for
              ``heartbeat_timeout_s`` -> STOP (latched, fault ``heartbeat_lost``); each transition is logged once and
              shows in Status (``faults``, ``detail``) and in the published ``mode``

Published ``mode`` (RobotState.mode / Status.mode) is the mode in force: ``servo`` (tracking a target), ``hold``
(holding: no target yet, the target went stale, or mode hold was requested), ``stop`` (latched stop).

Clocks: a target's times are on the sender's CLOCK_MONOTONIC. ``ClockMap`` estimates server - client as the smallest
(receive - send) seen over the last few seconds (the fastest frame carries the least queueing), so a mapped expiry
is early by at most the one-way latency — conservative, never late. Same host: the estimate is the loopback
latency (~50 us).

Simulated drivers (``info.simulated``) teleport on ``reset(go_home=True)``: the arm to the next scene's start
joints (or home), the objects to the scene's poses, the goal to the scene's goal (``scenes`` is plain data the CLI
derives from the MuJoCo task; hardware/ never imports sim/). Real arms move home under the servo limits.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.drivers.base import ArmDriver
from hardware.protocol import messages as m
from hardware.protocol.keys import CurveServerKeys
from hardware.protocol.transport import ControlRequest, Endpoints, Received, ServerTransport
from hardware.servo import FUTURE, MODES, REJECT_REASONS, ServoConfig, ServoCore, ServoLoop, ServoTarget, TickRecord
from robotstack.core.config import from_dict as read_config
from robotstack.core.errors import ConfigError
from robotstack.core.timing import parse_cpus, usable_cpus

log = logging.getLogger("robotstack.hardware.server")


def _name(text: str) -> str:
    """A joint name as a protocol name ([a-z][a-z0-9_]{0,31})."""
    s = re.sub(r"[^a-z0-9_]", "_", text.lower())[:32]
    return s if s[:1].isalpha() else f"j{s}"[:32]


class ClockMap:
    """Client clock -> server clock: offset = min(recv - send) over a sliding window of ``window_s``."""

    def __init__(self, window_s: float = 5.0):
        self.window_ns = int(window_s * 1e9)
        self._samples: collections.deque[tuple[int, int]] = collections.deque()  # (recv_ns, recv - send)
        self.offset_ns: int | None = None

    def update(self, send_ns: int, recv_ns: int) -> None:
        d = recv_ns - send_ns
        s = self._samples
        while s and (s[-1][1] >= d):  # monotone deque: keeps the running minimum of the window
            s.pop()
        s.append((recv_ns, d))
        while s[0][0] < recv_ns - self.window_ns:
            s.popleft()
        self.offset_ns = s[0][1]

    def to_server(self, t_client_ns: int) -> int:
        return t_client_ns + (self.offset_ns or 0)

    def is_future(self, send_ns: int, recv_ns: int, tol_ns: int) -> bool:
        """The frame claims a send time later than the estimate allows (recv - send below the minimum seen, by
        more than tol_ns). An estimate whose samples all aged out is dropped first, so a client whose clock
        really stepped is locked out for one window at most."""
        if self._samples and self._samples[-1][0] < recv_ns - self.window_ns:
            self.clear()
        return self.offset_ns is not None and recv_ns - send_ns < self.offset_ns - tol_ns

    def clear(self) -> None:
        self._samples.clear()
        self.offset_ns = None


@dataclass
class ArmServerConfig:
    """Read by the one strict reader (robotstack.core.config); ``__post_init__`` holds only the domain checks."""

    robot_id: str = "arm"
    state_rate_hz: float = 200.0
    max_requests_per_tick: int = 8
    realtime: bool = True  # SCHED_FIFO for the servo thread when permitted
    # pin the servo loop's thread (only it: libzmq's I/O thread must stay free to run on another core, or it waits
    # behind the SCHED_FIFO servo for ~0.5 ms before a published state leaves), e.g. "0"; "" = no pinning
    servo_cpus: str = ""
    # a frame sent later than it arrived is rejected ("future"). Same host: one clock, so any send time ahead of
    # the receive time (plus this slack) is; another host: one ahead of that connection's clock estimate.
    future_tol_local_s: float = 0.001
    future_tol_remote_s: float = 0.005

    @classmethod
    def from_dict(cls, d: dict | None, where: str = "arm server config") -> "ArmServerConfig":
        return read_config(cls, d or {}, where)

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> None:
            raise ConfigError(f"arm server config: {key}={getattr(self, key)!r}: expected {expected}")

        if not m.ROBOT_ID_RE.fullmatch(self.robot_id):
            bad("robot_id", f"a protocol robot id ({m.ROBOT_ID_RE.pattern})")
        if not self.state_rate_hz > 0:
            bad("state_rate_hz", "> 0")
        if not self.max_requests_per_tick >= 1:
            bad("max_requests_per_tick", ">= 1")
        for key in ("future_tol_local_s", "future_tol_remote_s"):
            if not getattr(self, key) >= 0:
                bad(key, ">= 0")
        if self.servo_cpus:
            try:
                usable_cpus(self.servo_cpus)
            except ValueError as e:
                raise ConfigError(f"arm server config: servo_cpus: {e}") from None


class ArmServer:
    """``ArmServer(driver, endpoints, keys).run()`` blocks until ``stop()`` (or ``duration_s``)."""

    def __init__(self, driver: ArmDriver, endpoints: Endpoints = Endpoints(), keys: CurveServerKeys | None = None, *,
                 servo: ServoConfig | dict | None = None, config: ArmServerConfig | dict | None = None,
                 scenes: list[dict[str, Any]] | None = None):
        self.driver = driver
        self.cfg = config if isinstance(config, ArmServerConfig) else ArmServerConfig.from_dict(config)
        self.core = ServoCore(driver.info, servo, home_q=getattr(driver, "home_q", None))
        self.loop = ServoLoop(driver, self.core, hook=self._hook, realtime=self.cfg.realtime,
                              cpus=parse_cpus(self.cfg.servo_cpus) if self.cfg.servo_cpus else None)
        self.state_every = max(1, int(round(self.core.config.rate_hz / self.cfg.state_rate_hz)))
        self.scenes = list(scenes or [])
        self.scene_index = -1  # the next go_home reset uses scene 0
        self.goal: np.ndarray | None = None
        self.clocks: dict[tuple[str, int], ClockMap] = {}  # per command connection (peer key, fd)
        self.transport = ServerTransport(self.cfg.robot_id, endpoints, keys)  # binds now: errors surface early
        self.endpoints = endpoints
        self._accepted: tuple[int, int, int] | None = None  # (seq, client send_ns, accepted at server ns)
        self._applied_echo: tuple[int, int, int] | None = None  # last fully applied (seq, sent_ns, applied_ns)
        self._last_watch: tuple = ()
        self._stop = threading.Event()
        self.ready = threading.Event()  # set at the first servo tick: sockets are being served from now on
        self.events: list[tuple[int, str]] = []  # (server ns, text) watchdog / safety transitions, for status
        if self.scenes and not driver.info.simulated:
            raise ValueError("scenes are only for simulated drivers (a real arm is never teleported)")

    # --- lifecycle ---------------------------------------------------------------------------------------
    def run(self, duration_s: float | None = None) -> dict[str, Any]:
        if not self.driver.is_connected:
            self.driver.connect()
        if self.scenes:
            self._apply_scene()
        log.info("arm server %s up: %s | state %s, command %s, control %s | servo %.0f Hz, state %.0f Hz, "
                 "CURVE %s", self.cfg.robot_id, self.driver.info.name, self.endpoints.state, self.endpoints.command,
                 self.endpoints.control, self.core.config.rate_hz, self.core.config.rate_hz / self.state_every,
                 "on" if self.transport.auth is not None else "off (loopback)")
        try:
            stats = self.loop.run(duration_s)
        finally:
            try:
                self.driver.halt()
            except Exception:  # noqa: BLE001
                log.exception("driver.halt() failed at shutdown")
        return stats

    def stop(self) -> None:
        self.loop.stop()

    def close(self) -> None:
        self.transport.close()
        if self.driver.is_connected:
            self.driver.disconnect()

    # --- the per-tick hook -----------------------------------------------------------------------------------
    def _hook(self, rec: TickRecord) -> None:
        now = rec.now_ns
        tr = self.transport
        if rec.index == 0:
            self.ready.set()
        if rec.index % self.state_every == 0:  # first: nothing this tick receives may delay the state going out
            self._publish(rec)
        for conn in tr.closed_connections():  # forget their clocks and seq order (fds get reused)
            for key in [k for k in self.clocks if k[1] == conn]:
                del self.clocks[key]
                self.core.forget_source(key)
        for _ in range(self.cfg.max_requests_per_tick):
            req = tr.recv_control(0)
            if req is None:
                break
            self._answer(req, now)
        got = tr.recv_command(0)
        if got is not None:
            self._submit(got, time.monotonic_ns(), tick_ns=now)
        self._watch(now)

    def _future(self, got: Received, clock: ClockMap | None = None) -> bool:
        """Count and log a frame sent after it arrived (a broken or hostile sender clock); True to drop it."""
        send, recv = got.header.send_time_ns, got.recv_time_ns
        if got.local:
            bad = send > recv + self.cfg.future_tol_local_s * 1e9
        else:
            bad = clock is not None and clock.is_future(send, recv, int(self.cfg.future_tol_remote_s * 1e9))
        if bad:
            self.core.count_reject(FUTURE)
            self._reject_log(FUTURE, f"{got.header.type} seq {got.header.seq} from {got.peer or 'loopback client'} "
                                     f"sent {(send - recv) / 1e6:+.1f} ms after it arrived (clock)")
        return bad

    def _submit(self, got: Received, now: int, tick_ns: int) -> None:
        """``now``: arrival (staleness); ``tick_ns``: this tick's start, the servo's time for applying it (the echo
        below compares it with ``last_target_applied_ns``, which the same tick's core.tick stamps with it)."""
        h, t = got.header, got.msg
        key = (got.peer, got.conn)
        clock = self.clocks.get(key)
        if clock is None:
            clock = self.clocks[key] = ClockMap()
            if len(self.clocks) > 1024:  # bounded even if close events were missed
                del self.clocks[next(iter(self.clocks))]
        if self._future(got, clock):
            return
        if got.local:  # one CLOCK_MONOTONIC on the same host (docs/protocol.md §5): an old frame stays old
            cm = int
        else:
            clock.update(h.send_time_ns, got.recv_time_ns)
            cm = clock.to_server
        grip = None if t.gripper is None else float(t.gripper[0])
        common = dict(seq=h.seq, sent_ns=cm(h.send_time_ns), expires_ns=cm(t.expires_ns), gripper=grip,
                      target_time_ns=cm(t.target_time_ns), source=key)
        if isinstance(t, m.JointTarget):
            st = ServoTarget.joint(np.array(t.positions, dtype=np.float64), **common)
        else:
            st = ServoTarget.cartesian(np.array(t.pos, dtype=np.float64), quat=np.array(t.quat, dtype=np.float64),
                                       **common)
        verdict = self.core.submit(st, now)
        if verdict.accepted:
            self.core.heartbeat(now)  # a flowing target stream is a sign of life too (docs/protocol.md)
            self._accepted = (h.seq, h.send_time_ns, tick_ns)
        else:  # the first few of each reason (then every 100th) with the detail, so a log says why
            self._reject_log(verdict.reason, f"target seq {h.seq} rejected: {verdict.detail}")

    def _echo(self) -> tuple[int, int, int] | None:
        acc, applied = self._accepted, self.core.last_target_applied_ns
        if acc is not None and applied is not None and applied >= acc[2] and self.core.last_target_seq == acc[0]:
            self._applied_echo = (acc[0], acc[1], applied)
        return self._applied_echo

    def effective_mode(self) -> str:
        c = self.core
        if c.mode == "servo" and c.state == "holding":
            return "hold"
        return c.mode

    def _publish(self, rec: TickRecord) -> None:
        s = rec.state
        echo = self._echo()
        msg = m.RobotState(
            joint_pos=s.joint_pos, joint_vel=s.joint_vel, state_time_ns=s.timestamp_ns, mode=self.effective_mode(),
            estop=self.core.estop_engaged, joint_effort=s.joint_effort,
            gripper=None if s.gripper is None else np.array([s.gripper]), eef_pos=s.eef_pos, eef_quat=s.eef_quat,
            object_state=s.object_state, goal=self.goal,
            last_target_seq=None if echo is None else echo[0], last_target_sent_ns=None if echo is None else echo[1],
            last_target_applied_ns=None if echo is None else echo[2])
        self.transport.publish_state(msg)

    # --- control requests ------------------------------------------------------------------------------------
    def _answer(self, req: ControlRequest, now: int) -> None:
        msg, core = req.msg, self.core
        ok, detail = True, ""
        if self._future(req):  # same host only: control requests carry no times the server acts on
            return
        if isinstance(msg, m.Heartbeat):
            core.heartbeat(now)
        elif isinstance(msg, m.EStop):
            core.estop(msg.engage, msg.reason, now)
            (log.warning if msg.engage else log.info)("e-stop %s by %s: %s", "ENGAGED" if msg.engage else "released",
                                                      req.peer or "loopback client", msg.reason or "(no reason)")
            self._event(now, f"estop {'engaged' if msg.engage else 'released'}: {msg.reason}")
        elif isinstance(msg, m.Reset):
            ok, detail = self._reset(msg, now)
            # the reply's server_time_ns is taken after the reset: this tick's state was read before it, so a client
            # waits for a state stamped later than the reply (docs/protocol.md §4) to see the reset's result
            now = time.monotonic_ns()
        elif isinstance(msg, m.Describe):
            self.transport.reply(req, self.describe(req.header.seq))
            return
        elif isinstance(msg, m.ModeRequest):
            accepted, mode, detail = core.request_mode(msg.mode)
            if accepted:
                log.info("mode -> %s (requested by %s)", mode, req.peer or "loopback client")
            self.transport.reply(req, m.ModeReply(reply_to_seq=req.header.seq, accepted=accepted, mode=mode,
                                                  detail=detail[:m.MAX_TEXT]))
            return
        self.transport.reply(req, self.status(now, reply_to=req.header.seq, ok=ok, detail=detail))

    def _reset(self, msg: m.Reset, now: int) -> tuple[bool, str]:
        if msg.home_joint_pos is not None:  # checked whole before anything moves, teleports included
            bad = self.core.check_home(msg.home_joint_pos)
            if bad is not None:
                self.core.count_reject(bad[0])
                self._reject_log(bad[0], f"reset refused: {bad[1]}")
                return False, f"rejected ({bad[0]}): {bad[1]}"
        sim_teleport = msg.go_home and self.driver.info.simulated
        ok, detail = self.core.reset(clear_faults=msg.clear_faults, go_home=msg.go_home and not sim_teleport,
                                     home_q=msg.home_joint_pos, now_ns=now)
        if ok and sim_teleport:
            detail = self._apply_scene(home_q=msg.home_joint_pos)
        if ok:
            self._accepted = self._applied_echo = None
            log.info("reset: %s", detail)
        return ok, detail

    def _apply_scene(self, home_q=None) -> str:
        """Simulated drivers only: teleport the arm and objects to the next scene (or home), set its goal."""
        poses, detail = None, "teleported home"
        if self.scenes:
            self.scene_index += 1
            scene = self.scenes[self.scene_index % len(self.scenes)]
            known = set(getattr(self.driver, "_bodies", {})) or set(self.driver.info.object_names)
            poses = {k: v for k, v in scene.get("object_poses", {}).items() if k in known}
            self.goal = None if scene.get("goal") is None else np.asarray(scene["goal"], dtype=np.float64)
            if home_q is None and scene.get("start_q") is not None:
                home_q = scene["start_q"]
            detail = f"scene {self.scene_index} (seed {scene.get('seed')})"
        if home_q is not None and hasattr(self.driver, "home_q"):
            self.driver.home_q = np.asarray(home_q, dtype=np.float64).reshape(-1)
        self.driver.reset(object_poses=poses)
        self.core.resync()
        return detail

    def describe(self, reply_to: int = 0) -> m.Description:
        c, info = self.core, self.driver.info
        ws = c.workspace
        reasons = list(dict.fromkeys([*m.REASONS, *REJECT_REASONS]))
        return m.Description(
            reply_to_seq=reply_to, arm=info.name[:m.MAX_TEXT], joint_names=[_name(n) for n in info.joint_names],
            joint_min=c.q_lo, joint_max=c.q_hi, joint_vel_max=c.v_max, joint_acc_max=c.a_max,
            workspace_lo=None if ws is None else ws[0], workspace_hi=None if ws is None else ws[1],
            gripper_range=None if info.gripper_range is None else np.asarray(info.gripper_range, dtype=np.float64),
            servo_period_ns=c.period_ns, state_period_ns=c.period_ns * self.state_every,
            heartbeat_timeout_ns=int(c.config.heartbeat_timeout_s * 1e9),
            require_heartbeat=bool(c.config.require_heartbeat), simulated=bool(info.simulated), modes=list(MODES),
            mode=self.effective_mode(),
            targets=[m.JointTarget.TYPE] + ([m.CartesianTarget.TYPE] if c._kin is not None else []),
            reject_reasons=reasons[:m.MAX_LIST])

    def status(self, now: int | None = None, reply_to: int | None = None, ok: bool = True,
               detail: str = "") -> m.Status:
        now = time.monotonic_ns() if now is None else now
        c = self.core
        rejects = collections.Counter(self.transport.rejects.counts)
        for k, v in c.counters.rejected.items():
            if v:
                rejects[k] += v
        hb = c.heartbeat_age_s(now)
        text = (f"{c.state} ({c.hold_reason}); heartbeat age {'-' if hb is None else f'{hb * 1e3:.0f} ms'}; "
                f"ticks {c.counters.ticks}; stale holds {c.counters.stale_holds}; stops {c.counters.stops}")
        clamped = {k: v for k, v in c.counters.clamps.items() if v and k.startswith("target_")}
        if clamped:  # targets executed altered (joint range, box, nearest reachable pose): not rejects, but shown
            text += "; targets clamped: " + ", ".join(f"{k} {v}" for k, v in sorted(clamped.items()))
        if detail:
            text = f"{detail}; {text}"
        return m.Status(reply_to_seq=reply_to, ok=ok and c.mode != "stop", mode=self.effective_mode(),
                        estop=c.estop_engaged, faults=sorted(c.faults)[:m.MAX_LIST], server_time_ns=now,
                        last_target_seq=c.last_target_seq, rejects=dict(list(rejects.items())[:m.MAX_LIST]),
                        detail=text[:m.MAX_TEXT])

    # --- watchdog transitions -> logs ---------------------------------------------------------------------------
    def _watch(self, now: int) -> None:
        c = self.core
        key = (c.mode, c.state, c.hold_reason)
        if key == self._last_watch:
            return
        prev, self._last_watch = self._last_watch, key
        if not prev:
            return
        if c.mode == "stop" and prev[0] != "stop":
            text = f"STOP: {', '.join(sorted(c.faults)) or 'requested'}"
            log.warning(text)
        elif c.state == "holding" and c.hold_reason == "stale":
            text = "target stale -> holding (no fresh target from the controller)"
            log.warning(text)
        elif c.state == "tracking" and prev[1] != "tracking":
            text = "tracking targets"
            log.info(text)
        else:
            text = f"{c.mode}/{c.state} ({c.hold_reason})"
            log.info(text)
        self._event(now, text)

    def _reject_log(self, reason: str, text: str) -> None:
        n = self.core.counters.rejected.get(reason, 0)
        if n <= 3 or n % 100 == 0:  # a flood of bad frames must not flood the log (or slow the servo thread)
            log.warning("%s (%s, %d so far)", text, reason, n)

    def _event(self, now: int, text: str) -> None:
        self.events.append((now, text))
        del self.events[:-100]

