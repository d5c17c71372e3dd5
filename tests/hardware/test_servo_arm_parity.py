"""The sim's servo arm (``<task>@servo``) commands the joints exactly as the arm server's servo would.

A policy is trained in MuJoCo and deployed on an arm server whose servo caps joint velocity and acceleration; the
``@servo`` task variants step the sim arm through the same interpolation (robotstack/core/joint_motion.py). This
test drives a push@servo episode with random actions, records the joint command MuJoCo receives at every physics
step, then feeds the env's IK targets to a real ServoCore (default limits, ticking at the physics rate) and checks
the two command streams are the same."""

from __future__ import annotations

from unittest import mock

import mujoco
import numpy as np

import sim
from hardware.drivers.base import panda_info
from hardware.servo import ServoConfig, ServoCore, ServoTarget

SEC = 1_000_000_000


def _sim_commands(name: str, steps: int, seed: int = 0):
    """-> (env, the reset joint command, IK target per control step, arm joint command per physics step) of a
    random-action episode."""
    env = sim.make(name)
    u = env.unwrapped
    env.reset(seed=seed)
    q_reset = u.data.ctrl[u.h.arm_act].copy()
    rng = np.random.default_rng(seed)
    real_step, ctrl = mujoco.mj_step, []

    def recording_step(m, d, nstep=1):
        for _ in range(nstep):
            ctrl.append(d.ctrl[u.h.arm_act].copy())
            real_step(m, d)

    targets = []
    with mock.patch("sim.base_env.mujoco.mj_step", recording_step):  # observes the commands; physics unchanged
        for _ in range(steps):
            env.step(rng.uniform(-1, 1, env.action_space.shape))
            targets.append(u.q_cmd.copy())
    return u, q_reset, np.array(targets), np.array(ctrl)


def test_servo_arm_commands_the_joints_as_the_arm_servers_servo():
    u, q_reset, targets, ctrl = _sim_commands("push@servo", steps=30)
    assert u.task_spec()["task"] == "push@servo" and u.task_spec()["servo"] == {"velocity_scale": 0.5,
                                                                                 "accel_scale": 0.5}
    physics_hz = u.control_hz * u.n_substeps
    core = ServoCore(panda_info("parity", simulated=True), ServoConfig(rate_hz=physics_hz))
    q = q_reset  # the servo starts where the sim arm rests
    period, out, t = core.period_ns, [], 0
    for seq, q_target in enumerate(targets):
        core.heartbeat(t)
        verdict = core.submit(ServoTarget.joint(q_target, seq=seq, sent_ns=t, expires_ns=t + SEC), t)
        assert verdict.accepted, verdict
        for _ in range(u.n_substeps):
            o = core.tick(q, t)  # an ideal arm: measured = commanded (the lead clamp never bites)
            q = o.q
            out.append(q)
            t += period
    np.testing.assert_allclose(np.array(out), ctrl, atol=1e-12)  # ctrl[k]: what physics step k ran with
    assert core.counters.clamps["acceleration"] > 0  # the limits were exercised, not idle


def test_plain_task_reaches_each_target_at_once_and_servo_arm_lags():
    _, _, targets, ctrl = _sim_commands("push", steps=10)
    n = len(ctrl) // len(targets)
    assert np.array_equal(ctrl[::n], targets)  # the MuJoCo position servos get each IK target at once
    _, _, targets_s, ctrl_s = _sim_commands("push@servo", steps=10)
    lag = np.abs(ctrl_s[n - 1::n] - targets_s).max()  # at the last physics step of each control step
    assert lag > 0.01  # rad: the servo arm is still on its way when the next target comes
