"""What runs between state arrival and target send: IK computed ahead must give bit-for-bit the joint target IK on
the step gives; the scheduler's peek agrees with its pop; the controller reacts to state arrival."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.protocol import parse_bind
from robotstack.core import kinematics as kin
from robotstack.runtime.action_map import EEActionMapper
from robotstack.runtime.client import ArmClient
from robotstack.runtime.controller import Controller
from robotstack.runtime.policy_runner import PolicyRunner
from robotstack.runtime.scheduler import ActionScheduler

Q0 = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8])


def _mapper(spec) -> EEActionMapper:
    m = EEActionMapper(spec.action_scale())
    m.reset(Q0, 0.04)
    return m


def test_ik_ahead_is_bit_exact_and_falls_back_when_inputs_change(policies):
    spec = PolicyRunner(policies["slow_x"]).spec
    tcp = kin.forward_kinematics(Q0)[2]
    skipped, a = [np.array([0.3, 0.1, 0.0, -1.0])], np.array([0.2, -0.1, 0.05, -1.0])
    on_step, ahead = _mapper(spec), _mapper(spec)
    on_step.advance(skipped[0], tcp)
    q_ref, _ = on_step.step(a, tcp)
    ahead.prepare(skipped, a, tcp)
    ahead.advance(skipped[0], tcp)
    q, _ = ahead.step(a, tcp)
    np.testing.assert_array_equal(q, q_ref)
    assert (ahead.ik_ahead_hits, ahead.ik_on_step, on_step.ik_on_step) == (1, 0, 1)
    # a different action at the step than the one prepared: the plan is not used, IK runs on the step
    other, ref = _mapper(spec), _mapper(spec)
    other.prepare([], a, tcp)
    q2, _ = other.step(-a, tcp)
    np.testing.assert_array_equal(q2, ref.step(-a, tcp)[0])
    assert (other.ik_ahead_hits, other.ik_on_step) == (0, 1)


def test_peek_due_agrees_with_pop_due():
    s = ActionScheduler(0.05, 0.01)
    s.load(np.arange(8, dtype=np.float64)[:, None] * np.ones((1, 4)), t_obs_ns=0, now_ns=0)
    for now in (0, 45_000_000, 95_000_000, 180_000_000):
        dropped, a = s.peek_due(now)
        d2, a2, _ = s.pop_due(now)
        assert len(dropped) == len(d2) and np.array_equal(a, a2)


def test_controller_steps_on_state_arrival_with_ik_off_the_path(shared_server, policies):
    client = ArmClient(parse_bind(shared_server.addr))
    try:
        runner = PolicyRunner(policies["slow_x"])
        ctl = Controller(client, runner)
        ctl.connect()
        res = ctl.run_episode(max_steps=12)
        assert res.ok
        rows = ctl.telemetry.rows[: ctl.telemetry.n]
        # local clock only (t_state is the server's sample time mapped by an estimated offset): every step's target
        # was sent after the state it acts on was received
        assert np.all(rows[:, 3] >= rows[:, 1])
        tel = ctl.telemetry.summary()
        assert tel["ik_ahead"] + tel["ik_on_step"] == 12
        if runner.spec.n_action_steps > 1:  # chunk policy: the next action is known, its IK can run ahead (how
            assert tel["ik_ahead"] > 0       # often depends on the max-lead clamp, see docs/runtime.md)
    finally:
        client.close()


class _TimedHeartbeats(ArmClient):
    """An ArmClient that notes when each heartbeat round trip starts (this process's clock)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.hb_starts: list[int] = []

    def heartbeat(self, timeout_s=None):
        import time

        self.hb_starts.append(time.monotonic_ns())
        return super().heartbeat(timeout_s)


def test_target_send_time_excludes_the_heartbeat_round_trip(shared_server, policies):
    """t_sent is taken when the target leaves, not after the heartbeat that may follow it (that made a
    heartbeat's round trip look like state->target latency on every other step)."""
    from robotstack.runtime.controller import ControllerConfig

    client = _TimedHeartbeats(parse_bind(shared_server.addr))
    try:
        ctl = Controller(client, PolicyRunner(policies["slow_x"]), ControllerConfig(heartbeat_every_s=0.0))
        ctl.connect()
        assert ctl.run_episode(max_steps=8).ok
        rows = ctl.telemetry.rows[: ctl.telemetry.n]  # columns t_state, t_recv, t_infer, t_sent, t_applied
        hb = np.array(client.hb_starts)
        assert len(rows) == 8 and len(hb) >= 8
        # with a heartbeat due on every loop, one follows each step's send: none may start between the state's
        # arrival and t_sent
        inside = [int(np.sum((hb >= t_recv) & (hb <= t_sent))) for t_recv, t_sent in rows[:, [1, 3]]]
        assert inside == [0] * 8
    finally:
        client.close()


# One timeline of what the controller did, shared by the two classes below: ("push", i) observation i into the
# history, ("infer", pushes so far), ("send", 0) a target left.
class _LoggedRunner(PolicyRunner):
    def __init__(self, path, log: list):
        self.log, self.pushes = log, 0
        super().__init__(path)

    def push(self, obs):
        super().push(obs)
        self.pushes += 1
        self.log.append(("push", self.pushes))

    def infer(self):
        self.log.append(("infer", self.pushes))
        return super().infer()


class _LoggedClient(ArmClient):
    def __init__(self, *a, log: list, log_states: bool = False, **kw):
        super().__init__(*a, **kw)
        self.log, self.log_states = log, log_states

    def send_cartesian_target(self, *a, **kw):
        self.log.append(("send", 0))
        return super().send_cartesian_target(*a, **kw)

    def poll_state(self, *a, **kw):
        st = super().poll_state(*a, **kw)
        if st is not None and self.log_states:
            self.log.append(("state", 0))
        return st


def test_a_scheduled_step_sends_its_target_before_any_bookkeeping(shared_server, policies):
    """State arrival -> target send carries only what the target needs: when the step's action was scheduled
    (inferred ahead), the observation goes into the history after the send; the first chunk is inferred before
    the first step, on the state the episode starts from. Every inference sees the newest observation."""
    from robotstack.runtime.controller import ControllerConfig

    log: list[tuple[str, int]] = []
    client = _LoggedClient(parse_bind(shared_server.addr), log=log)
    try:
        runner = _LoggedRunner(policies["slow_x"], log)
        log.clear()  # (loading ran a warm-up call)
        runner.pushes = 0
        assert runner.spec.n_action_steps > 1  # a chunk policy: most steps are scheduled ahead
        ctl = Controller(client, runner, ControllerConfig(targets="cartesian"))
        ctl.connect()
        assert ctl.run_episode(max_steps=12).ok
    finally:
        client.close()
    sends = [i for i, (kind, _) in enumerate(log) if kind == "send"]
    pushes = [i for i, (kind, _) in enumerate(log) if kind == "push"]
    assert log[:2] == [("push", 1), ("infer", 1)], log  # the first chunk, before the first step
    assert len(pushes) == 1 + 12
    # step n's target is the first send after push n - 1; its push came after that send unless it inferred
    step_send = {n: next(k for k in sends if k > pushes[n - 1]) for n in range(1, len(pushes))}
    for n, send in step_send.items():
        if send > pushes[n]:  # inferred on the path (a stalled machine can run a chunk out): push, infer, send
            assert [e[0] for e in log[pushes[n]: send]] == ["push", "infer"], log[pushes[n]: send + 1]
    assert step_send[1] < pushes[1], log  # the first step sends at once: its chunk was inferred before it
    assert sum(send < pushes[n] for n, send in step_send.items()) >= 6, log  # most steps scheduled ahead
    for k, (kind, seen) in enumerate(log):
        if kind == "infer":  # every inference sees the observation of the step it acts on (pushed since that send)
            last_send = max([i for i in sends if i < k], default=-1)
            pushed = [log[i][1] for i in range(last_send + 1, k) if log[i][0] == "push"]
            assert pushed == [seen], (k, log)


def test_no_garbage_collection_runs_between_a_state_and_its_target(shared_server, policies):
    """With a young collection due at every allocation, none runs from a state's arrival to the next target send:
    the loop collects after a step's send instead; automatic collection is back on after the episode."""
    import gc

    from robotstack.runtime.controller import ControllerConfig

    log: list[tuple[str, int]] = []
    client = _LoggedClient(parse_bind(shared_server.addr), log=log, log_states=True)
    on_gc = lambda phase, info: log.append(("gc", info["generation"])) if phase == "start" else None  # noqa: E731
    threshold = gc.get_threshold()
    try:
        ctl = Controller(client, PolicyRunner(policies["slow_x"]), ControllerConfig(targets="cartesian"))
        ctl.connect()
        gc.set_threshold(1, 1_000_000, 1_000_000)  # gen 0 at any allocation; never an older generation
        gc.callbacks.append(on_gc)
        assert ctl.run_episode(max_steps=12).ok
    finally:
        if on_gc in gc.callbacks:
            gc.callbacks.remove(on_gc)
        gc.set_threshold(*threshold)
        client.close()
    assert gc.isenabled()
    kinds = [k for k, _ in log]
    kinds = kinds[kinds.index("send"):]  # the loop (before it: reset and the first state, no target due)
    assert kinds.count("gc") >= 12, kinds  # the loop did collect: once per step at least
    open_state = False  # a state arrived and no target has left since
    for k in kinds:
        if k == "state":
            open_state = True
        elif k == "send":
            open_state = False
        elif k == "gc":
            assert not open_state, kinds


@pytest.mark.parametrize("lead_s", [0.0015, 0.0])
def test_the_path_is_rehearsed_while_waiting_for_a_step_state(shared_server, policies, lead_s):
    """rehearse_lead_s: while waiting for the state that a policy step acts on, the client re-runs the last decode
    and encode (the A/B in the README: ~80% of steps get one on a quiet machine); 0: never. The episode's steps and
    targets are unaffected."""
    from robotstack.runtime.controller import ControllerConfig

    log: list[tuple[str, int]] = []
    client = _LoggedClient(parse_bind(shared_server.addr), log=log, log_states=True)
    rehearse = client.rehearse
    client.rehearse = lambda: (log.append(("rehearse", 0)), rehearse())
    try:
        ctl = Controller(client, PolicyRunner(policies["slow_x"]),
                         ControllerConfig(targets="cartesian", rehearse_lead_s=lead_s))
        ctl.connect()
        res = ctl.run_episode(max_steps=20)
    finally:
        client.close()
    assert res.ok and res.steps == 20
    kinds = [k for k, _ in log]
    assert (kinds.count("rehearse") >= 1) == bool(lead_s), kinds


def test_cartesian_targets_drive_the_arm_like_joint_targets(shared_server, policies):
    """targets="cartesian": the controller sends the TCP target and does no IK; the server's servo solves it.
    The same policy moves the PyBullet arm's TCP the same way as with joint targets (IK here)."""
    from robotstack.runtime.controller import ControllerConfig

    ends = {}
    for kind in ("joint", "cartesian"):
        client = ArmClient(parse_bind(shared_server.addr))
        try:
            ctl = Controller(client, PolicyRunner(policies["plus_x"]), ControllerConfig(targets=kind))
            ctl.connect()
            res = ctl.run_episode(max_steps=16)
            assert res.ok, res.stop_reason
            st = client.heartbeat(timeout_s=1.0)
            bad = {k: v for k, v in st.rejects.items() if k in ("ik_failed", "no_kinematics", "orientation",
                                                                "workspace", "invalid") and v}
            assert not bad, bad  # (stale ones can happen on a loaded machine; not what this test is about)
            f = res.frames
            assert f["target_tcp"].shape == (16, 4) and f["target_joint_pos"].shape == (16, 7)
            assert np.isnan(f["target_joint_pos"]).all() == (kind == "cartesian")  # the server solved IK
            tel = ctl.telemetry.summary()
            if kind == "cartesian":
                assert tel["ik_ahead"] + tel["ik_on_step"] == 0  # no IK in the controller at all
            start, end = f["robot_eef_pos"][0], client.wait_state(1.0).eef_pos
            ends[kind] = (start, np.asarray(end), f["target_tcp"][-1, :3])
        finally:
            client.close()
    for kind, (start, end, target) in ends.items():
        assert end[0] - start[0] > 0.05, (kind, start, end)  # +x at 0.5 of the max step for 16 steps
        assert np.linalg.norm(end - target) < 0.05, (kind, end, target)
    # both ways move the TCP alike (each episode starts at its scene's home pose: compare displacements)
    moved = {kind: end - start for kind, (start, end, _) in ends.items()}
    assert np.linalg.norm(moved["joint"] - moved["cartesian"]) < 0.015, moved


def test_cartesian_targets_into_the_unreachable_pocket_move_the_arm_to_its_edge(shared_server, policies):
    """A policy that drives the hand back over the base and down, through the pocket in the action box that a
    pointing-down hand cannot reach (x ~0.25-0.3 m near y = 0, z ~0.03-0.2 m). The server used to reject each of
    those Cartesian targets (`ik_failed`, the arm frozen at its last reachable target; 3,039 rejects in one push
    deployment); now it executes the nearest pose its IK finds, counted as the clamp `target_unreachable`, which the
    status detail reports."""
    from robotstack.runtime.controller import ControllerConfig

    client = ArmClient(parse_bind(shared_server.addr))
    try:
        before = client.heartbeat(timeout_s=1.0).rejects.get("ik_failed", 0)
        ctl = Controller(client, PolicyRunner(policies["back_down"]), ControllerConfig(targets="cartesian"))
        ctl.connect()
        res = ctl.run_episode(max_steps=45)
        assert res.ok, res.stop_reason
        st = client.heartbeat(timeout_s=1.0)
        assert st.rejects.get("ik_failed", 0) == before, st.rejects
        assert "target_unreachable" in st.detail, st.detail
        # the hand went back and down through the pocket (which is not all the way down: a folded arm reaches the
        # box floor again) to the box's near face
        start, end = res.frames["robot_eef_pos"][0], np.asarray(client.wait_state(1.0).eef_pos)
        assert end[0] < 0.27 and start[0] - end[0] > 0.1 and start[2] - end[2] > 0.1, (start, end)
    finally:
        client.close()


def test_controller_refuses_an_unknown_target_kind():
    from robotstack.runtime.controller import ControllerConfig

    with pytest.raises(ValueError, match="targets='pose'"):
        ControllerConfig(targets="pose")


def test_first_state_after_the_reset_reply_shows_the_reset(shared_server, policies):
    """A sim reset teleports the arm to the next scene inside a servo tick whose state was read before it; the
    reset's reply time marks the first state that shows the result (docs/protocol.md `reset`). Each of 8 episodes
    starts from a state stamped after its reset reply, never at the pose the previous episode left the arm in."""
    client = ArmClient(parse_bind(shared_server.addr))
    try:
        ctl = Controller(client, PolicyRunner(policies["plus_x"]))
        ctl.connect()
        for _ in range(8):
            res = ctl.run_episode(max_steps=6)
            assert res.ok
            left_at = client.wait_state(1.0).eef_pos.copy()
            done = client.reset(go_home=True)
            st = client.wait_state(2.0, newer_than_ns=client.to_local(done.server_time_ns))
            assert np.linalg.norm(st.eef_pos - left_at) > 0.02, (st.eef_pos, left_at)
    finally:
        client.close()


def test_auto_targets_follow_what_the_server_offers(shared_server, policies):
    """targets="auto" (deploy's default): Cartesian when the server's describe lists cartesian_target (the Panda
    drivers do)."""
    from robotstack.runtime.controller import ControllerConfig

    client = ArmClient(parse_bind(shared_server.addr))
    try:
        assert "cartesian_target" in client.describe(timeout_s=2.0).targets
        ctl = Controller(client, PolicyRunner(policies["slow_x"]), ControllerConfig(targets="auto"))
        assert ctl.targets == "joint"  # until connect() asks
        ctl.connect()
        assert ctl.targets == "cartesian"
        res = ctl.run_episode(max_steps=4)
        assert res.ok and np.isnan(res.frames["target_joint_pos"]).all()
    finally:
        client.close()


def test_a_policy_drives_the_kinematic_arm_server(policies):
    """serve-arm --driver kinematic (the physics-free mock arm) is a full arm server: the controller runs a policy on
    it through the same protocol, and the hand moves as the policy asks (+x at 0.1 of the action scale per step);
    a task with objects to move is refused before the server starts, naming them."""
    import subprocess

    from tests.runtime.conftest import PY, ROOT, ServerProc

    srv = ServerProc(driver="kinematic")
    client = ArmClient(parse_bind(srv.addr))
    try:
        ctl = Controller(client, PolicyRunner(policies["slow_x"]))
        ctl.connect()
        assert client.describe().arm == "kinematic_panda"
        start = client.wait_state(2.0).eef_pos.copy()
        res = ctl.run_episode(max_steps=20, reset=False)
        assert res.ok and res.steps == 20
        moved = client.wait_state(2.0).eef_pos - start
        assert moved[0] > 0.02 and abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01, moved
    finally:
        client.close()
        srv.stop()
    r = subprocess.run([PY, "-m", "robotstack.cli", "serve-arm", "--driver", "kinematic", "--task", "push",
                        "--describe"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "dynamic object" in r.stderr and "cube" in r.stderr, r.stderr[-300:]
