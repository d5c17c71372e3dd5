"""Servo core: limits, stale / out-of-order targets, watchdogs, e-stop latch; the 1 kHz loop on pybullet.

Most checks drive ServoCore with an ideal in-memory arm on a virtual clock (fast and exact); the loop test runs
the real-time ServoLoop for about a second with the pybullet Panda and prints its period statistics (no timing
asserts beyond sanity: the VM's tails are not ours to promise, machine_notes.md §8).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from hardware.drivers.base import ArmState, SentCommand, panda_info
from hardware.servo import PANDA_WORKSPACE, ServoConfig, ServoCore, ServoLoop, ServoTarget
from robotstack.core import kinematics as kin
from robotstack.core.errors import ConfigError
from robotstack.core.rotations import mat_to_quat

SEC = 1_000_000_000
MS = 1_000_000


class IdealArm:
    """Follows every command exactly (an ArmDriver with no dynamics)."""

    def __init__(self, q0=None):
        self.info = panda_info("ideal", simulated=True)
        self.q = np.array(kin.HOME_Q if q0 is None else q0, dtype=np.float64)
        self.sent: list[np.ndarray] = []
        self.fail_after: int | None = None
        self.halted = False
        self.steps = 0

    is_connected = True

    def connect(self):
        pass

    def disconnect(self):
        pass

    def read_state(self):
        return ArmState(joint_pos=self.q.copy(), joint_vel=np.zeros(7), timestamp_ns=0)

    def command_joints(self, q, gripper=None):
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            raise RuntimeError("link down")
        self.q = np.asarray(q, dtype=np.float64).copy()
        self.sent.append(self.q)
        return SentCommand(q=self.q, gripper=gripper, time_ns=0)

    def step(self, dt):
        self.steps += 1

    def reset(self, seed=None, object_poses=None):
        return self.read_state()

    def halt(self):
        self.halted = True


def make(q0=None, **cfg):
    arm = IdealArm(q0)
    core = ServoCore(arm.info, ServoConfig(**cfg))
    return arm, core


def run(arm, core, n, t0=0, heartbeat=True):
    """n ticks on the virtual clock from t0; returns the commands and the time after the last tick."""
    out = []
    for i in range(n):
        now = t0 + i * core.period_ns
        if heartbeat:
            core.heartbeat(now)
        o = core.tick(arm.read_state().joint_pos, now)
        arm.command_joints(o.q, o.gripper)
        out.append(o)
    return out, t0 + n * core.period_ns


def joint(q, seq, now, valid=SEC, **kw):
    return ServoTarget.joint(q, seq=seq, sent_ns=now, expires_ns=now + valid, **kw)


# in-box joint goals: FAR is up to 2 rad from HOME_Q in joint space, NEAR about 0.5 rad
FAR = kin.solve_ik(kin.HOME_Q, [0.35, -0.35, 0.1], 1.2, iters=100)
NEAR = kin.solve_ik(kin.HOME_Q, [0.6, 0.0, 0.3], 0.0, iters=100)


# --- limits ------------------------------------------------------------------------------------------------------
def test_target_beyond_joint_limits_is_clamped():
    arm, core = make()
    core.heartbeat(0)
    far = kin.HOME_Q.copy()
    far[6] = 5.0  # wrist beyond its 2.97 rad range (turning about the TCP axis keeps the TCP in the box)
    v = core.submit(joint(far, 1, 0, valid=10 * SEC), now_ns=0)
    assert v.accepted and v.q[6] == pytest.approx(kin.JOINT_UPPER[6] - core.config.joint_margin)
    assert core.counters.clamps["target_joint_limit"] == 1
    outs, _ = run(arm, core, 3000)
    q = np.array([o.q for o in outs])
    assert q[:, 6].max() <= core.q_hi[6] + 1e-12
    assert q[-1, 6] == pytest.approx(core.q_hi[6])


def test_huge_jump_is_rate_limited_every_tick():
    arm, core = make()
    core.heartbeat(0)
    goal = FAR
    assert core.submit(joint(goal, 1, 0, valid=10 * SEC), now_ns=0).accepted
    outs, _ = run(arm, core, 4000)
    q = np.array([kin.HOME_Q] + [o.q for o in outs])
    dq = np.diff(q, axis=0)
    assert np.all(np.abs(dq) <= core.max_step + 1e-12)  # max step per tick
    v = dq / core.period
    assert np.all(np.abs(v) <= core.v_max + 1e-9)  # velocity limit
    acc = np.diff(v, axis=0) / core.period
    # acceleration limit holds except on the final landing tick of each joint (a sub-tick snap onto the goal)
    assert np.mean(np.all(np.abs(acc) <= core.a_max * (1 + 1e-6), axis=1)) > 0.99
    assert np.abs(q[1] - q[0]).max() < 1e-4  # first tick: starts from rest
    np.testing.assert_allclose(q[-1], goal, atol=1e-9)  # and gets there
    assert core.counters.clamps["acceleration"] > 0


def test_joint_motion_is_synchronized_and_meets_target_time():
    arm, core = make()
    core.heartbeat(0)
    goal = kin.HOME_Q + np.array([0.05, 0.02, 0.0, -0.03, 0.0, 0.0, 0.04])
    assert core.submit(joint(goal, 1, 0, target_time_ns=500 * MS), now_ns=0).accepted
    outs, _ = run(arm, core, 700)
    q = np.array([o.q for o in outs])
    err = np.linalg.norm(q - goal, axis=1)
    arrive = int(np.argmax(err < 1e-6))
    assert 450 <= arrive <= 560  # about target_time (ramps at both ends take a few ticks)
    # straight line in joint space: mid-way the direction matches the full displacement
    mid = q[250] - kin.HOME_Q
    cos = mid @ (goal - kin.HOME_Q) / (np.linalg.norm(mid) * np.linalg.norm(goal - kin.HOME_Q))
    assert cos > 0.999


def test_workspace_box_rejects_or_clamps_targets():
    arm, core = make()
    core.heartbeat(0)
    lo, hi = PANDA_WORKSPACE
    v = core.submit(ServoTarget.cartesian([0.5, 0.0, -0.05], yaw=0.0, seq=1, sent_ns=0, expires_ns=SEC), 0)
    assert not v.accepted and v.reason == "workspace"
    q_low = kin.solve_ik(kin.HOME_Q, [0.5, 0.0, -0.03], 0.0, iters=60)  # a joint target with the TCP below the box
    v = core.submit(joint(q_low, 2, 0), 0)
    assert not v.accepted and v.reason == "workspace"
    assert core.counters.rejected["workspace"] == 2
    # clamp mode: the Cartesian target is pulled into the box and accepted
    arm, core = make(workspace_mode="clamp")
    core.heartbeat(0)
    v = core.submit(ServoTarget.cartesian([0.5, 0.0, -0.05], yaw=0.0, seq=1, sent_ns=0, expires_ns=SEC), 0)
    assert v.accepted and core.counters.clamps["target_workspace"] == 1
    assert kin.forward_kinematics(v.q)[2][2] == pytest.approx(lo[2], abs=1e-3)


def test_interpolated_path_never_leaves_the_box():
    # two in-box configurations whose straight joint-space path sags ~2 cm below z = 0.12 (wrist swing)
    lo = (0.2, -0.45, 0.11)
    start = kin.solve_ik(kin.HOME_Q, [0.45, -0.35, 0.12], -1.2, iters=100)
    goal = kin.solve_ik(kin.HOME_Q, [0.45, 0.35, 0.12], 1.2, iters=100)
    arm, core = make(q0=start, workspace=(lo, PANDA_WORKSPACE[1]))
    core.heartbeat(0)
    assert core.submit(joint(goal, 1, 0, valid=10 * SEC), 0).accepted
    outs, _ = run(arm, core, 3000)
    z = np.array([kin.forward_kinematics(o.q)[2][2] for o in outs])
    assert z.min() >= lo[2] - 1e-9  # the command stops at the floor instead of dipping through it
    assert core.counters.clamps["workspace"] > 0


def test_command_lead_over_measured_position_is_bounded():
    arm, core = make(max_lead=0.05)
    core.heartbeat(0)
    goal = FAR
    assert core.submit(joint(goal, 1, 0, valid=10 * SEC), 0).accepted
    blocked = kin.HOME_Q.copy()  # the arm is stuck (contact): measured never moves
    for i in range(2000):
        core.heartbeat(i * MS)
        o = core.tick(blocked, i * MS)
    assert np.abs(o.q - blocked).max() <= 0.05 + 1e-12
    assert core.counters.clamps["lead"] > 0


# --- target validity ---------------------------------------------------------------------------------------------
def test_stale_and_out_of_order_targets_are_ignored():
    arm, core = make()
    core.heartbeat(0)
    now = 100 * MS
    v = core.submit(ServoTarget.joint(kin.HOME_Q, seq=1, sent_ns=0, expires_ns=50 * MS), now)
    assert not v.accepted and v.reason == "stale"
    assert core.submit(joint(kin.HOME_Q + 0.01, 5, now), now).accepted
    older_seq = core.submit(joint(kin.HOME_Q + 0.02, 4, now + MS), now + MS)
    older_time = core.submit(joint(kin.HOME_Q + 0.02, 6, now - MS), now + MS)
    same = core.submit(joint(kin.HOME_Q + 0.02, 5, now + MS), now + MS)
    assert [older_seq.reason, older_time.reason, same.reason] == ["out_of_order"] * 3
    assert core.counters.rejected["stale"] == 1 and core.counters.rejected["out_of_order"] == 3
    assert core.last_target_seq == 5
    outs, _ = run(arm, core, 200, t0=now)
    np.testing.assert_allclose(outs[-1].q, np.clip(kin.HOME_Q + 0.01, core.q_lo, core.q_hi))
    assert outs[-1].target_seq == 5 and core.last_target_applied_ns == now


def test_expired_target_makes_the_arm_hold():
    arm, core = make()
    core.heartbeat(0)
    goal = FAR
    assert core.submit(joint(goal, 1, 0, valid=200 * MS), 0).accepted
    outs, _ = run(arm, core, 600)
    q = np.array([o.q for o in outs])
    assert outs[150].state == "tracking" and outs[-1].state == "holding"
    assert core.hold_reason == "stale" and core.counters.stale_holds == 1
    assert np.abs(q[-1] - goal).max() > 0.1  # stopped short of the goal
    v = np.diff(q, axis=0) / core.period
    assert np.abs(v[-50:]).max() == 0.0  # at rest
    assert np.all(np.abs(np.diff(v[190:], axis=0)) / core.period <= core.a_max * (1 + 1e-6))  # braked smoothly


def test_invalid_targets():
    arm, core = make()
    core.heartbeat(0)
    assert core.submit(joint(np.zeros(6), 1, 0), 0).reason == "invalid"
    assert core.submit(joint(np.full(7, np.nan), 2, 0), 0).reason == "invalid"
    tilted = [np.cos(0.4), np.sin(0.4), 0.0, 0.0]  # 0.8 rad off pointing-down
    v = core.submit(ServoTarget.cartesian([0.5, 0, 0.2], quat=tilted, seq=3, sent_ns=0, expires_ns=SEC), 0)
    assert v.reason == "orientation"
    down = mat_to_quat(kin.down_rotation(0.4))
    v = core.submit(ServoTarget.cartesian([0.5, 0, 0.2], quat=down, seq=4, sent_ns=0, expires_ns=SEC), 0)
    assert v.accepted
    _, big = make(workspace=((-2, -2, -2), (2, 2, 2)))
    big.heartbeat(0)
    v = big.submit(ServoTarget.cartesian([1.5, 0, 0.3], seq=1, sent_ns=0, expires_ns=SEC), 0)
    assert v.reason == "ik_failed"


def test_targets_need_a_heartbeat_first():
    arm, core = make()
    assert core.submit(joint(kin.HOME_Q, 1, 0), 0).reason == "no_heartbeat"
    _, relaxed = make(require_heartbeat=False)
    assert relaxed.submit(joint(kin.HOME_Q, 1, 0), 0).accepted


def test_an_expired_target_after_a_reset_counts_as_no_heartbeat():
    """The soak's 33 unexplained `no_heartbeat` rejects: its fuzzer's expired targets that arrived between a reset
    (which disarms the watchdog) and the controller's next heartbeat. The first failing check names the reject
    (docs/protocol.md §6), so those count as no_heartbeat, not stale."""
    arm, core = make()
    core.heartbeat(0)
    expired = joint(kin.HOME_Q, 2**64 - 1, 0, valid=MS)
    assert core.submit(expired, 5 * MS).reason == "stale"
    core.reset(go_home=True, now_ns=5 * MS)
    assert core.submit(expired, 6 * MS).reason == "no_heartbeat"
    core.heartbeat(7 * MS)
    assert core.submit(expired, 8 * MS).reason == "stale"


# --- watchdogs and e-stop ----------------------------------------------------------------------------------------
def test_heartbeat_loss_stops_until_reset():
    arm, core = make(heartbeat_timeout_s=0.1)
    core.heartbeat(0)
    goal = NEAR
    assert core.submit(joint(goal, 1, 0, valid=10 * SEC), 0).accepted
    outs, t = run(arm, core, 50)
    assert outs[-1].state == "tracking"
    outs, t = run(arm, core, 400, t0=t, heartbeat=False)  # the controller goes quiet
    assert outs[-1].state == "stopped" and core.mode == "stop" and "heartbeat_lost" in core.faults
    assert core.counters.stops == {"heartbeat_lost": 1}
    q = np.array([o.q for o in outs])
    assert np.abs(np.diff(q[-100:], axis=0)).max() == 0.0  # holding
    core.heartbeat(t)  # a late heartbeat alone does not resume
    v = core.submit(joint(goal, 2, t), t)
    assert not v.accepted and v.reason == "stopped"
    ok, _ = core.reset()
    assert ok and core.mode == "servo" and not core.faults
    assert core.submit(joint(goal, 1, t), t).reason == "no_heartbeat"  # watchdog re-arms on the next heartbeat
    core.heartbeat(t)
    assert core.submit(joint(goal, 1, t), t).accepted  # seq order restarted by reset
    # a mode change also leaves STOP
    run(arm, core, 200, t0=t + MS, heartbeat=False)
    assert core.mode == "stop"
    assert core.request_mode("servo") == (True, "servo", "")


def test_estop_latches():
    arm, core = make()
    core.heartbeat(0)
    goal = NEAR
    assert core.submit(joint(goal, 1, 0, valid=10 * SEC), 0).accepted
    _, t = run(arm, core, 100)
    core.estop(True, "operator")
    outs, t = run(arm, core, 300, t0=t)
    assert outs[-1].state == "stopped" and core.estop_engaged and "estop" in core.faults
    assert core.submit(joint(goal, 2, t), t).reason == "stopped"
    assert core.reset()[0] is False  # refused while engaged
    assert core.request_mode("servo")[0] is False
    core.estop(False)
    outs, t = run(arm, core, 10, t0=t)
    assert outs[-1].state == "stopped"  # releasing does not resume on its own
    ok, _ = core.reset()
    assert ok and core.mode == "servo"
    core.heartbeat(t)
    assert core.submit(joint(goal, 1, t), t).accepted


def test_hold_mode_refuses_targets_and_go_home():
    arm, core = make(q0=kin.HOME_Q + 0.2)
    core.heartbeat(0)
    assert core.request_mode("hold") == (True, "hold", "")
    assert core.submit(joint(kin.HOME_Q, 1, 0), 0).reason == "mode_hold"
    assert core.request_mode("fly")[0] is False
    ok, detail = core.reset(go_home=True)
    assert ok and "home" in detail
    outs, _ = run(arm, core, 2000)
    np.testing.assert_allclose(outs[-1].q, kin.HOME_Q, atol=1e-9)
    assert core.hold_reason == "home"


def test_config_is_validated():
    with pytest.raises(ConfigError, match="unknown key"):
        ServoConfig.from_dict({"rate": 1000})
    with pytest.raises(ConfigError, match="velocity_scale"):
        ServoConfig.from_dict({"velocity_scale": 2.0})
    info = panda_info("p", simulated=True)
    with pytest.raises(ConfigError, match="lo < hi"):
        ServoCore(info, {"workspace": ((1, 0, 0), (0, 1, 1))})


# --- the loop runner -----------------------------------------------------------------------------------------------
def test_loop_stops_and_halts_on_driver_error():
    arm, core = make()
    arm.fail_after = 20
    loop = ServoLoop(arm, core, realtime=False)
    with pytest.raises(RuntimeError, match="link down"):
        loop.run(max_ticks=100)
    assert arm.halted and core.mode == "stop" and core.estop_engaged


def test_loop_counts_hook_errors_and_survives_missing_sched_fifo(monkeypatch):
    def no_fifo(*a):
        raise PermissionError("not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", no_fifo)
    arm, core = make()
    seen = []

    def hook(rec):
        seen.append(rec.index)
        if rec.index == 3:
            raise ValueError("boom")

    loop = ServoLoop(arm, core, hook=hook, realtime=True)
    stats = loop.run(max_ticks=50)
    assert stats["ticks"] == 50 and not stats["realtime"] and "PermissionError" in stats["realtime_error"]
    assert loop.hook_errors == 1 and len(seen) == 50


def test_hook_publishes_before_the_physics_step():
    """The state a tick samples goes out before the driver's step (a simulated arm's physics step, ~0.4 ms in
    PyBullet, used to sit between sampling the state and publishing it)."""
    arm, core = make()
    steps_seen = []
    loop = ServoLoop(arm, core, hook=lambda rec: steps_seen.append((rec.index, arm.steps)), realtime=False)
    loop.run(max_ticks=5)
    assert steps_seen == [(i, i) for i in range(5)] and arm.steps == 5


def test_a_teleport_in_the_hook_is_seen_by_the_same_tick():
    """A simulated reset teleports the arm inside the hook (arm server: reset -> driver.reset + core.resync); the
    tick's servo step must start from the new pose, not from the state read before the hook (it commanded the
    pre-reset joints, and the next episode's arm drifted back toward the old pose)."""
    arm, core = make()
    core.heartbeat(0)
    teleported = NEAR.copy()

    def hook(rec):
        rec.core.heartbeat(rec.now_ns)
        if rec.index == 3:
            arm.q = teleported.copy()
            rec.core.resync()

    ServoLoop(arm, core, hook=hook, realtime=False).run_simulated(5)
    np.testing.assert_allclose(arm.sent[3], teleported, atol=1e-9)
    np.testing.assert_allclose(arm.sent[4], teleported, atol=1e-9)


def test_servo_cpus_pin_only_the_loop_thread():
    """ServoLoop(cpus=...) pins the thread that runs the loop while it runs; threads started before (libzmq's I/O
    thread in the arm server) keep their CPUs, and the thread gets its old set back after the loop."""
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    arm, core = make()
    seen = []
    loop = ServoLoop(arm, core, hook=lambda rec: seen.append(os.sched_getaffinity(0)), realtime=False, cpus={cpu})
    other = []
    t = threading.Thread(target=lambda: (time.sleep(0.05), other.append(os.sched_getaffinity(0))))
    t.start()
    stats = loop.run(max_ticks=100)
    t.join()
    assert seen and all(s == {cpu} for s in seen) and stats["cpus"] == [cpu]
    assert other == [before] and os.sched_getaffinity(0) == before


def test_arm_server_refuses_servo_cpus_it_cannot_use():
    from hardware.server import ArmServerConfig
    from robotstack.core.errors import ConfigError

    with pytest.raises(ConfigError, match="servo_cpus"):
        ArmServerConfig(servo_cpus="4096")
    with pytest.raises(ConfigError, match="servo_cpus"):
        ArmServerConfig(servo_cpus="x")


def test_1khz_loop_with_pybullet_reports_period_stats():
    from hardware.drivers import make_driver

    driver = make_driver("pybullet", objects=[{"name": "cube", "shape": "box", "size": [0.02] * 3,
                                               "pose": [0.5, 0.0, 0.021], "mass": 0.1}])
    driver.connect()
    try:
        core = ServoCore(driver.info, ServoConfig(rate_hz=1000.0))
        published = []

        def hook(rec):  # what the networking layer will do: keep the controller alive, publish the state
            rec.core.heartbeat(rec.now_ns)
            published.append(rec.state.timestamp_ns)

        loop = ServoLoop(driver, core, hook=hook, realtime=True)
        core.heartbeat()
        goal = np.clip(kin.HOME_Q + 0.2, core.q_lo, core.q_hi)
        import time

        now = time.monotonic_ns()
        assert core.submit(ServoTarget.joint(goal, seq=1, sent_ns=now, expires_ns=now + 5 * SEC), now).accepted
        loop.start(duration_s=1.0)
        stats = loop.join(timeout=10)
    finally:
        driver.disconnect()
    p = stats["period_us"]
    print(f"\n1 kHz servo loop, pybullet Panda, {stats['ticks']} ticks, SCHED_FIFO={stats['realtime']} "
          f"({stats['realtime_error']}): period p50 {p['p50']:.1f} us, p99 {p['p99']:.1f} us, "
          f"p99.9 {p['p999']:.1f} us, max {p['max']:.1f} us; work p50 {stats['work_us']['p50']:.0f} us, "
          f"p99 {stats['work_us']['p99']:.0f} us; late ticks {stats['late_ticks']}, skipped {stats['skipped_ticks']}")
    assert stats["ticks"] > 500 and len(published) == stats["ticks"]
    assert 900 < p["p50"] < 1100
    assert core.mode == "servo" and core.counters.ticks == stats["ticks"]


def test_tcp_reach_bound_used_to_skip_fk_holds():
    from hardware.servo import TCP_REACH_M

    rng = np.random.default_rng(0)
    for q in rng.uniform(kin.JOINT_LOWER, kin.JOINT_UPPER, (500, 7)):
        joint_pos, _, tcp, _ = kin.forward_kinematics(q)
        assert np.linalg.norm(tcp - joint_pos, axis=1).max() < TCP_REACH_M  # lever arm of every joint


def test_an_in_box_target_the_arm_cannot_reach_goes_to_the_nearest_pose_and_is_counted():
    """The pocket right above the base (inside the action box, x 0.25 m, y ~0) cannot be reached pointing down. The
    servo used to reject every such Cartesian target (`ik_failed`, 3,039 of them in a 50-episode push deployment,
    the arm frozen at its last target), while the sim env and the controller's joint-target IK carry the residual
    and move to the nearest pose. Now the servo does the same within ik_nearest_max_m, counted as a clamp."""
    near = [0.34, -0.03, 0.15]  # reachable
    pocket = [0.26, -0.03, 0.15]  # in the box, ~4 cm out of reach
    arm, core = make()
    core.heartbeat(0)
    assert core.submit(ServoTarget.cartesian(near, yaw=0.0, seq=1, sent_ns=0, expires_ns=SEC), 0).accepted
    v = core.submit(ServoTarget.cartesian(pocket, yaw=0.0, seq=2, sent_ns=0, expires_ns=SEC), 0)
    assert v.accepted and core.counters.clamps["target_unreachable"] == 1
    reached = kin.forward_kinematics(v.q)[2]
    assert 0.005 < np.linalg.norm(reached - pocket) < 0.05
    assert np.linalg.norm(reached - pocket) < np.linalg.norm(np.array(near) - pocket)  # it did move towards it
    # re-sent (controllers re-send at ~100 Hz): same pose, counted again
    v2 = core.submit(ServoTarget.cartesian(pocket, yaw=0.0, seq=3, sent_ns=0, expires_ns=SEC), 0)
    assert v2.accepted and np.array_equal(v2.q, v.q) and core.counters.clamps["target_unreachable"] == 2

    _, strict = make(ik_nearest_max_m=0.0)  # the old behaviour, on request
    strict.heartbeat(0)
    assert strict.submit(ServoTarget.cartesian(near, yaw=0.0, seq=1, sent_ns=0, expires_ns=SEC), 0).accepted
    for seq in (2, 3):  # a re-sent reject is rejected (and counted) again
        v = strict.submit(ServoTarget.cartesian(pocket, yaw=0.0, seq=seq, sent_ns=0, expires_ns=SEC), 0)
        assert v.reason == "ik_failed" and "mm from" in v.detail
    assert strict.counters.rejected["ik_failed"] == 2 and strict.counters.clamps["target_unreachable"] == 0
    with pytest.raises(ConfigError, match="ik_nearest_max_m"):
        ServoConfig(ik_nearest_max_m=-1.0)
