"""What runs between state arrival and target send: IK computed ahead must give bit-for-bit the joint target IK on
the step gives; the scheduler's peek agrees with its pop; the controller reacts to state arrival."""

from __future__ import annotations

import numpy as np

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
