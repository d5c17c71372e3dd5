"""robotstack.core.joint_motion: the servo's interpolation (also the sim's servo arm) keeps its limits and lands."""

import numpy as np
import pytest

from robotstack.core.joint_motion import JointMotion

V_MAX = np.array([1.0, 0.5, 2.0])
A_MAX = np.array([4.0, 2.0, 8.0])
RATE = 500.0


def _run(goal, q0=None, v0=None, ticks=2000, remaining=None):
    m = JointMotion(V_MAX, A_MAX, RATE)
    q = np.zeros(3) if q0 is None else np.array(q0, float)
    v = np.zeros(3) if v0 is None else np.array(v0, float)
    qs, vs = [q.copy()], [v.copy()]
    for i in range(ticks):
        left = None if remaining is None else remaining - i / RATE
        dq, _ = m.step(goal - q, v, left)
        q, v = q + dq, dq * RATE
        qs.append(q.copy())
        vs.append(v.copy())
    return np.array(qs), np.array(vs)


def test_moves_within_velocity_and_acceleration_limits_and_lands_at_rest():
    goal = np.array([1.0, -0.7, 0.3])
    qs, vs = _run(goal)
    assert np.all(np.abs(vs) <= V_MAX + 1e-9)
    # velocity changes per tick within a_max * dt, except as each joint lands (the tick onto its goal and the one
    # after, when it stops): those stop from a crawl, not from speed
    dv = np.abs(np.diff(vs, axis=0))
    landed = np.argmax(qs == goal, axis=0)  # the first tick each joint is on its goal
    for j in range(3):
        landing = [landed[j] - 1, landed[j]]
        assert np.all(np.delete(dv[:, j], landing) <= A_MAX[j] / RATE + 1e-9)
        assert np.all(dv[landing, j] <= 0.1 * V_MAX[j])
    assert np.array_equal(qs[-1], goal) and np.all(vs[-1] == 0)


def test_a_target_time_slows_the_move_to_arrive_then():
    goal = np.array([0.1, 0.0, 0.0])
    fast, _ = _run(goal, ticks=600)
    slow, _ = _run(goal, ticks=600, remaining=1.0)
    t_fast = int(np.argmax(np.all(fast == goal, axis=1)))
    t_slow = int(np.argmax(np.all(slow == goal, axis=1)))
    assert t_fast < 0.6 * RATE and t_slow == pytest.approx(RATE, abs=0.05 * RATE)


def test_reports_when_the_acceleration_limit_bit():
    m = JointMotion(V_MAX, A_MAX, RATE)
    _, limited = m.step(np.array([1.0, 0.0, 0.0]), np.zeros(3))  # from rest toward a far goal
    assert limited
    _, limited = m.step(np.array([1e-6, 0.0, 0.0]), np.zeros(3))  # a tiny gap closes in one tick
    assert not limited
