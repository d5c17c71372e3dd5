"""The control core: one loop that runs a policy against an arm server, with safety, takeover, hot swap, telemetry.

Loop: event-driven. It sleeps on the state socket (poll with a timeout) and wakes when a state arrives, or at the
latest when the current target is due for a re-send (``command_hz``, default 100 Hz) or a heartbeat is due:
  every wake    newest state (conflated SUB) -> stale-state check -> heartbeat every ``heartbeat_every_s`` ->
                re-send the current joint target every 1/``command_hz`` with a short validity (``target_expiry_s``,
                default 30 ms): if this process dies the server's target goes stale within that and the servo holds
  policy step   on the first state that arrives at or after the policy's next slot (``control_hz`` grid), at once:
                a teleop device that is engaged overrides the policy (the step is flagged as an intervention);
                otherwise take the next scheduled action, inferring a new chunk when the schedule is empty (then the
                observation goes into the history first; runtime/scheduler.py: actions
                timestamped from the observation time, those already past dropped, ``exec_latency_s`` latency
                compensation) -> safety (NaN/Inf or out of range -> hold and stop; max change per step) ->
                action_map (TCP target, IK) -> joint target reached at the action's time, sent at once
  off the path  after the step's target is sent: the observation goes into the history (To) unless inference needed
                it already, the step is recorded and judged (success); chunk policies infer the next chunk when the
                schedule is empty and
                the IK of the next scheduled action is computed ahead (action_map.prepare); at the step it is used
                only when its inputs turn out identical (bit-exact), else IK runs on the step
  stops         e-stop request (terminal key, Ctrl-C) -> EStop to the server; safety stop -> mode hold; state
                stale or the server stopping -> the loop ends and says why
  hot swap      ``request_swap(runner)``: at the next policy step the new policy takes over the observation history
                (or starts a fresh one), the schedule is cleared and outputs are blended over ``blend_steps`` steps;
                targets continue from the current TCP target, so the switch cannot jump

Everything a step produced is kept for the episode store (``--record``): observations, actions (applied, raw policy
output), targets, intervention flags and the measured timestamps of runtime/telemetry.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robotstack.core import keys as K
from robotstack.runtime.action_map import EEActionMapper
from robotstack.runtime.client import ArmClient, ArmUnavailable
from robotstack.runtime.collector import LoopCollector
from robotstack.runtime.policy_runner import ArtifactError, PolicySpec, check_arm, state_obs
from robotstack.runtime.safety import Safety, SafetyConfig, SafetyStop
from robotstack.runtime.scheduler import ActionScheduler
from robotstack.runtime.telemetry import Telemetry


TARGET_KINDS = ("joint", "cartesian", "auto")


@dataclass
class ControllerConfig:
    command_hz: float = 100.0
    target_expiry_s: float = 0.03
    exec_latency_s: float = 0.010
    heartbeat_every_s: float = 0.1
    deadline_s: float = 0.010
    blend_steps: int = 5
    status_every_s: float = 0.5
    ik_iters: int = 8
    # IK of the next scheduled action computed after a step's target is sent (chunk policies), not on the step
    ik_ahead: bool = True
    # Chunk policies (Ta > 1): infer the next chunk right after the target of the step that emptied the schedule
    # is sent, from that step's observation, so no later step waits for inference (state->target is then
    # recv + action map + send). The first action of a chunk inferred this way is past when the next step comes and
    # is dropped by the scheduler like any late action: Ta - 1 actions are used per chunk. Single-step policies
    # (Ta = 1) must react to the newest state, so their inference stays on the step.
    infer_ahead: bool = True
    # "joint": IK here, joint targets on the wire (IK of a step whose plan missed runs between state arrival and
    # send). "cartesian": the TCP target itself goes out (CartesianTarget) and the arm server's servo solves IK in
    # its own loop, so no IK sits between state arrival and target send; the server must have the arm's kinematics
    # (the Panda drivers do; a server without them rejects with no_kinematics, docs/protocol.md). "auto": cartesian
    # when the server's `describe` offers cartesian_target, else joint (decided in connect()).
    targets: str = "joint"
    # Python's automatic garbage collection off during an episode; the young generations are collected after each
    # policy step's send instead (a collection on the path cost 0.2-2.7 ms, runtime/collector.py)
    own_gc: bool = True
    # Shortly (rehearse_lead_s) before the state that the next policy step acts on is due, decode the last state
    # frame and encode the last target once (results discarded) so that code is in the CPU's caches when the state
    # comes (ClientTransport.rehearse; ~70 µs a step, no spinning). Four A/B pairs: recv -> action p50 -0.09 ms,
    # state -> target p50 -0.12 ms (README, bench/results/controller_ab_2026-11-30.json). 1.5 ms: the wait's poll
    # wakes on whole milliseconds; measured, the rehearsal landed 0.04-1.8 ms (p10-p90) before the state. 0 = off
    rehearse_lead_s: float = 0.0015
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        if self.targets not in TARGET_KINDS:
            raise ValueError(f"controller targets={self.targets!r}: expected one of {list(TARGET_KINDS)}")


@dataclass
class EpisodeResult:
    steps: int
    success: bool | None
    stop_reason: str  # "duration", "max_steps", "success", "device_save", or why it stopped
    interventions: int
    seconds: float
    frames: dict[str, np.ndarray] | None = None
    source: str = "policy"
    ok: bool = True  # False when a stop (safety, e-stop, lost arm) ended it
    safety: dict[str, int] = field(default_factory=dict)  # safety events of this episode, by code


def teleop_spec(task_spec: dict) -> PolicySpec:
    """A PolicySpec for a person driving (record --arm): action spec and rate from the sim task spec."""
    return PolicySpec(path=Path("."), obs={}, obs_dtypes={}, n_obs_steps=1, n_action_steps=1, horizon=1,
                      control_hz=float(task_spec["control_hz"]), action_names=list(task_spec["action_names"]),
                      ee_action=dict(task_spec["ee_action"]), task=task_spec["task"], success=task_spec["success"],
                      policy_id="teleop")


class Controller:
    def __init__(self, client: ArmClient, policy: Any | None, config: ControllerConfig | None = None, *,
                 spec: PolicySpec | None = None, takeover: Any | None = None, human_only: bool = False,
                 success_fn: Callable[[dict], bool] | None = None, status_fn: Callable[[str], None] | None = None):
        self.client = client
        self.policy = policy
        self.spec = spec if spec is not None else policy.spec
        self.cfg = config or ControllerConfig()
        self.takeover = takeover
        self.human_only = human_only
        self.success_fn = success_fn
        self.status_fn = status_fn
        self.safety = Safety(self.cfg.safety)
        self.telemetry = Telemetry(deadline_s=self.cfg.deadline_s)
        self.telemetry.safety = self.safety.events
        self._estop = threading.Event()
        self._estop_reason = ""
        self._swap_lock = threading.Lock()
        self._pending: Any | None = None
        self._old: Any | None = None  # previous policy while blending
        self._blend_k = 0
        self.swaps = 0
        self.quit = False  # a device asked to quit
        # the target kind in use: "auto" is decided by connect() (joint until then)
        self.targets = "joint" if self.cfg.targets == "auto" else self.cfg.targets
        self._state_period_ns = 0  # the server's state period (describe), for rehearse_lead_s

    # --- setup ------------------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 3.0) -> None:
        """First state, a heartbeat, and the artifact-vs-arm check (refuses a mismatch before anything moves)."""
        st = self.client.wait_state(timeout_s)
        # first contact: the control connection may still be in its CURVE handshake (the server's ZAP thread) after
        # state flows, so this one request gets the whole connect timeout, later heartbeats the short one
        self.client.heartbeat(timeout_s=timeout_s)
        if self.cfg.targets == "auto" or self.cfg.rehearse_lead_s:
            desc = self.client.describe(timeout_s=timeout_s)
            self._state_period_ns = desc.state_period_ns
            if self.cfg.targets == "auto":
                self.targets = "cartesian" if "cartesian_target" in desc.targets else "joint"
        if self.policy is not None:
            check_arm(self.spec, st, f"the arm at {self.client.endpoints.state}")
        elif len(st.joint_pos) != 7 or st.eef_pos is None:
            raise ArtifactError("teleop through the arm needs a 7-joint Panda-kinematics arm reporting eef_pos")

    def request_estop(self, reason: str) -> None:
        """Thread-safe: the loop sends EStop at its next tick and stops."""
        self._estop_reason = reason
        self._estop.set()

    def request_swap(self, new_policy: Any) -> None:
        """Thread-safe hot swap. The new policy must drive the same action spec and be served by the arm."""
        s, n = self.spec, new_policy.spec
        if (n.action_names != s.action_names or abs(n.control_hz - s.control_hz) > 1e-9
                or abs(n.max_step_pos - s.max_step_pos) > 1e-12):
            raise ArtifactError(f"hot swap refused: {n.path} drives {n.action_names} at {n.control_hz} Hz "
                                f"(step {n.max_step_pos} m), the running policy {s.action_names} at {s.control_hz} Hz "
                                f"(step {s.max_step_pos} m)")
        if self.client.state is not None:
            check_arm(n, self.client.state, "the arm")
        with self._swap_lock:
            self._pending = new_policy

    # --- one episode ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def keep_alive(self):
        """Heartbeats while the caller does slow work between episodes (e.g. saving the episode to the store: a
        zarr commit can take longer than the server's heartbeat timeout on a busy machine), so the server's
        watchdog does not STOP the arm between episodes. The client is used only by this thread meanwhile."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.cfg.heartbeat_every_s):
                try:
                    self.client.heartbeat(timeout_s=0.2)
                except ArmUnavailable:
                    return  # the next episode's reset reports the lost arm

        thread = threading.Thread(target=beat, name="keep-alive", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def run_episode(self, *, duration_s: float | None = None, max_steps: int | None = None, reset: bool = True,
                    seed: int | None = None) -> EpisodeResult:
        c, cfg, spec = self.client, self.cfg, self.spec
        if reset:  # the first state stamped after the reset's reply shows the arm (and scene) after it
            done = c.reset(go_home=True)
            c.wait_state(2.0, newer_than_ns=c.to_local(done.server_time_ns))
        st = c.state
        if st.mode == "stop":
            c.reset(go_home=False)
        c.heartbeat()
        st = c.wait_state(1.0)
        mapper = self._mapper = EEActionMapper(spec.action_scale(), ik_iters=cfg.ik_iters)
        mapper.reset(st.joint_pos, None if st.gripper is None else float(st.gripper[0]))
        q_target, grip = np.array(st.joint_pos, dtype=np.float64), mapper.gripper
        cartesian = self.targets == "cartesian"
        tcp_target = np.append(mapper.target_pos, mapper.target_yaw)  # (x, y, z, yaw): the measured TCP at first
        if self.policy is not None:
            self.policy.reset()
        self.safety.reset()
        self._events_at_start = dict(self.safety.events)
        sched = ActionScheduler(1.0 / spec.control_hz, cfg.exec_latency_s)
        dt_ns = int(round(1e9 / spec.control_hz))
        tele = self.telemetry
        tick_ns = int(round(1e9 / cfg.command_hz))
        hb_ns = int(cfg.heartbeat_every_s * 1e9)
        tele._last_tick_ns = None  # the pause between episodes is not a loop period
        t0 = time.monotonic_ns()
        t_target = t0
        next_policy, last_hb, last_status = t0, t0, t0
        last_state_ns = t0
        step, interventions = 0, 0
        taken_over = False
        frames: list[dict[str, Any]] = []
        success: bool | None = None if self.success_fn is None else False
        reason, ok = "", True
        expiry_ns = int(cfg.target_expiry_s * 1e9)
        last_sent = time.monotonic_ns() - tick_ns  # send a target at once
        lead_ns = int(cfg.rehearse_lead_s * 1e9)
        state_period_ns = self._state_period_ns
        rehearse_at = None  # when to rehearse before the next policy step's state (None: done, or off)
        collector = LoopCollector(cfg.own_gc)
        collector.start()
        try:
            if self._infers_ahead():
                # the first chunk ahead of need too, on the state the episode starts from: no step of the episode
                # waits for inference (the first one used to; best-of-32 made that step ~8 ms)
                self._observe(st)
                sched.load(self.safety.check_output(self._infer(), "policy"), c.to_local(st.state_time_ns),
                           time.monotonic_ns())
            while True:
                # block on the state socket: a state wakes us at once; otherwise the re-send or heartbeat deadline
                wake_by = min(last_sent + tick_ns, last_hb + hb_ns)
                if rehearse_at is not None:
                    wake_by = min(wake_by, rehearse_at)
                new = c.poll_state(max(0, wake_by - time.monotonic_ns()) * 1e-9)
                now = time.monotonic_ns()
                if new is None and rehearse_at is not None and now >= rehearse_at:
                    c.rehearse()  # a wake for this alone: not a loop tick; the loop's deadlines are checked next pass
                    rehearse_at = None
                    continue
                tele.tick(now, new is not None or now - wake_by <= tick_ns // 2)
                if self._estop.is_set():
                    c.estop(self._estop_reason or "operator e-stop")
                    self.safety.count("estop")
                    reason, ok = f"e-stop: {self._estop_reason or 'operator'}", False
                    break
                if new is not None:
                    last_state_ns = now
                    if new.last_target_seq is not None:
                        tele.applied(new.last_target_seq, c.to_local(new.last_target_applied_ns))
                    if new.estop or new.mode == "stop":
                        detail = self._server_detail()
                        self.safety.count("server_stop")
                        reason, ok = f"arm server stopped ({'e-stop' if new.estop else 'stop'}): {detail}", False
                        break
                else:
                    self.safety.check_state_age((now - last_state_ns) * 1e-9)
                stepped = False
                if new is not None and now >= next_policy:  # the policy step acts on the state that just arrived
                    stepped = True
                    st = c.state
                    t_state, t_recv = c.to_local(st.state_time_ns), c.state_recv_ns
                    self._maybe_swap()
                    obs = None  # this step's observation: built after the send, unless inference needs it first
                    cmd = self.takeover.poll() if self.takeover is not None else None
                    raw = np.full(spec.action_dim, np.nan)
                    t_act = t_state + dt_ns
                    if cmd is not None and ("quit" in cmd.events or (self.human_only and "start_or_save" in
                                                                     cmd.events and step > 0)):
                        self.quit = "quit" in cmd.events
                        reason = "device_quit" if self.quit else "device_save"
                        break
                    if cmd is not None and (cmd.engaged or self.human_only):
                        action = mapper.device_action(cmd.action(spec.action_dim).astype(np.float64),
                                                      st.eef_pos, st.joint_pos)
                        intervention = not self.human_only
                        interventions += int(intervention)
                        tele.interventions += int(intervention)
                        sched.clear()
                        taken_over = True
                    else:
                        intervention = False
                        if taken_over:  # the person let go: the policy starts from the arm where it is now
                            self._end_takeover()
                            taken_over = False
                        if len(sched) == 0:  # inference on the path (no chunk was inferred ahead)
                            obs = self._observe(st)
                            chunk = self.safety.check_output(self._infer(), "policy")
                            sched.load(chunk, t_state, now)
                        dropped, action, t_act = sched.pop_due(now)
                        raw = action.copy()
                        for a in dropped:  # keep the predicted path: integrate the skipped steps (no IK)
                            mapper.advance(self.safety.limit_change(a), st.eef_pos)
                    t_infer = time.monotonic_ns()
                    action = self.safety.limit_change(action)
                    if cartesian:  # no IK here: the server solves it
                        mapper.advance(action, st.eef_pos)
                        grip = mapper.gripper
                    else:
                        q_target, grip = mapper.step(action, st.eef_pos)
                    tcp_target = np.append(mapper.target_pos, mapper.target_yaw)
                    t_target = t_act
                    step += 1
                    next_policy += dt_ns
                    while next_policy <= now:  # skip slots we slept through, never burst
                        next_policy += dt_ns
                    if lead_ns and state_period_ns:  # the first state at or after next_policy, from this one's phase
                        due = t_recv + -(-(next_policy - t_recv) // state_period_ns) * state_period_ns
                        rehearse_at = due - lead_ns
                if not stepped and now - last_sent < tick_ns:
                    if now - last_hb >= hb_ns:
                        c.heartbeat(timeout_s=0.1)
                        last_hb = now
                    continue
                if cartesian:
                    seq = c.send_cartesian_target(tcp_target[:3], tcp_target[3], grip, max(t_target, now),
                                                  now + expiry_ns, now)
                else:
                    seq = c.send_joint_target(q_target, grip, max(t_target, now), now + expiry_ns, now)
                t_sent = time.monotonic_ns()
                last_sent = now
                if now - last_hb >= hb_ns:  # after the target: a heartbeat round trip never delays a step's send
                    c.heartbeat(timeout_s=0.1)
                    last_hb = now
                if stepped:  # the rest of the policy step, off the state -> target path
                    if obs is None:
                        obs = self._observe(st)
                    row = tele.begin_step(t_state, t_recv, t_infer)
                    tele.sent(row, seq, t_sent)
                    frames.append({"obs": obs, "action": action.astype(np.float32), "raw": raw.astype(np.float32),
                                   "intervention": intervention, "tcp_target": tcp_target.astype(np.float32),
                                   # NaN with Cartesian targets: the server solved IK (one store schema either way)
                                   "q_target": np.full(len(q_target), np.nan, np.float32) if cartesian
                                   else q_target.astype(np.float32),
                                   "grip": np.float32(grip), "row": row, "policy_id": self._policy_id()})
                    if self.success_fn is not None and self.success_fn(obs):
                        success, reason = True, "success"
                    if len(sched) == 0 and not intervention and self._infers_ahead():
                        chunk = self.safety.check_output(self._infer(), "policy")  # ahead of need, off the step
                        sched.load(chunk, t_state, time.monotonic_ns())
                    if cfg.ik_ahead and not cartesian and not intervention and self.policy is not None:
                        nxt = sched.peek_due(next_policy)
                        if nxt is not None:
                            *skipped, a_next = self.safety.preview_changes([*nxt[0], nxt[1]])
                            mapper.prepare(skipped, a_next, st.eef_pos)
                    collector.after_step()
                if reason == "success":
                    break
                if max_steps is not None and step >= max_steps:
                    reason = "max_steps"
                    break
                if duration_s is not None and now - t0 >= duration_s * 1e9:
                    reason = "duration"
                    break
                if self.status_fn is not None and now - last_status >= cfg.status_every_s * 1e9:
                    last_status = now
                    self.status_fn(tele.status_line(f"step {step} t {(now - t0) * 1e-9:5.1f} s"))
        except SafetyStop as e:
            reason, ok = f"safety stop: {e}", False
            self._hold()
        except ArmUnavailable as e:
            reason, ok = f"arm lost: {e}", False
        except KeyboardInterrupt:
            c.estop("operator Ctrl-C")
            self.safety.count("estop")
            reason, ok = "e-stop: Ctrl-C", False
            self._result = self._finish(frames, t0, step, success, reason, interventions, ok)
            raise
        finally:
            collector.stop()
        return self._finish(frames, t0, step, success, reason, interventions, ok)

    # --- helpers ----------------------------------------------------------------------------------------
    def _infers_ahead(self) -> bool:
        """Chunks are inferred ahead of need (off the state -> target path): a chunk policy, no swap pending."""
        return (self.cfg.infer_ahead and self.policy is not None and self.spec.n_action_steps > 1
                and self._pending is None)

    def _observe(self, st) -> dict[str, np.ndarray]:
        """This step's observation into the policies' histories (once per step). Called after the target is sent
        when the step's action was already scheduled: the history only feeds the next inference."""
        obs = state_obs(st)
        if self.policy is not None:
            self.policy.push(obs)
            if self._old is not None:
                self._old.push(obs)
        return obs

    def _infer(self) -> np.ndarray:
        a = self.policy.infer()
        if self._old is not None:
            self._blend_k += 1
            w = self._blend_k / (self.cfg.blend_steps + 1)
            old = self._old.infer()
            n = min(len(a), len(old))
            a = a.copy()
            a[:n] = (1 - w) * old[:n] + w * a[:n]
            if self._blend_k >= self.cfg.blend_steps:
                self._old = None
        return a

    def _end_takeover(self) -> None:
        """After a human takeover: RTI's warm start (the previous chunk, denoised partway) describes a path from
        before the person moved the arm; start the next call from noise. The observation history is kept (it was
        pushed on every takeover step, so it shows the arm as the person left it)."""
        for p in (self.policy, self._old):
            reset = getattr(p, "reset_warm_start", None)
            if reset is not None:
                reset()
        self.safety.count("takeover_end")

    def _maybe_swap(self) -> None:
        with self._swap_lock:
            new, self._pending = self._pending, None
        if new is None:
            return
        new.reset()
        if self.policy is not None and hasattr(new, "copy_history_from"):
            new.copy_history_from(self.policy)
        self._old = self.policy if self.cfg.blend_steps > 0 else None
        self._blend_k = 0
        self.policy, self.spec = new, new.spec
        self.swaps += 1
        self.safety.count("hot_swap")

    def _policy_id(self) -> str:
        return "teleop" if self.policy is None else str(getattr(self.spec, "policy_id", ""))

    def _hold(self) -> None:
        try:
            self.client.mode("hold", timeout_s=0.2)
        except ArmUnavailable:
            pass

    def _server_detail(self) -> str:
        try:
            st = self.client.heartbeat(timeout_s=0.2)
            return f"faults {st.faults}; {st.detail}"
        except ArmUnavailable as e:
            return str(e)

    def _finish(self, frames, t0, step, success, reason, interventions, ok) -> EpisodeResult:
        m = getattr(self, "_mapper", None)
        if m is not None:
            self.telemetry.ik_ahead += m.ik_ahead_hits
            self.telemetry.ik_on_step += m.ik_on_step
            m.ik_ahead_hits = m.ik_on_step = 0
        source = "human" if self.human_only else ("intervention" if interventions else "policy")
        start = getattr(self, "_events_at_start", {})
        events = {k: v - start.get(k, 0) for k, v in self.safety.events.items() if v - start.get(k, 0)}
        res = EpisodeResult(steps=step, success=success, stop_reason=reason, interventions=interventions,
                            seconds=(time.monotonic_ns() - t0) * 1e-9, frames=self._frames(frames, t0), source=source,
                            ok=ok, safety=events)
        return res

    def _frames(self, frames: list[dict], t0: int) -> dict[str, np.ndarray] | None:
        if not frames:
            return None
        rows = self.telemetry.rows
        out: dict[str, list] = {}
        for f in frames:
            for k, v in f["obs"].items():
                out.setdefault(k, []).append(v)
            r = rows[f["row"]]
            out.setdefault("policy_action", []).append(f["raw"])
            out.setdefault("target_tcp", []).append(f["tcp_target"])  # (x, y, z, yaw) sent or solved for
            out.setdefault("target_joint_pos", []).append(f["q_target"])
            out.setdefault("target_gripper", []).append(np.array([f["grip"]], np.float32))
            out.setdefault("step_times", []).append(((r - t0) * 1e-9).astype(np.float64))  # (5,) see COLS
            out.setdefault("latency_ms", []).append(np.array(
                [r[1] - r[0], r[2] - r[1], r[3] - r[0], r[4] - r[3], r[4] - r[0]], np.float32) * 1e-6)
            out.setdefault(K.ACTION, []).append(f["action"])
            out.setdefault(K.INTERVENTION, []).append(f["intervention"])
        return {k: np.stack(v) if k != K.INTERVENTION else np.asarray(v, bool) for k, v in out.items()}


# per-frame extras written next to the observations (step_times / latency_ms columns)
STEP_TIME_COLS = ("t_state", "t_recv", "t_infer", "t_sent", "t_applied")
LATENCY_COLS = ("state_to_recv", "inference", "state_to_target", "target_to_applied", "state_to_applied")
