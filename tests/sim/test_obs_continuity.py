"""Observations a policy sees must not jump when the arm moves smoothly (issue 10: what caps imitation)."""

import numpy as np
import pytest

import sim


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="KNOWN BUG (stop 15, not fixed): robot_eef_quat flips sign when the hand "
                   "yaw passes -pi/2, inside the action contract's +-1.6 rad yaw range; the scripted experts stay "
                   "within 1.55 rad, so demos never show it. The fix (a yaw sin/cos feature or a canonical sign, "
                   "the same in the sim and the MuJoCo driver) changes the observation spec and needs re-recorded "
                   "data. When it is fixed this test passes: remove the marker.")
def test_hand_quaternion_is_continuous_over_the_yaw_range():
    env = sim.make("push")
    try:
        obs, _ = env.reset(seed=0)
        names = env.unwrapped.task_spec()["action_names"]
        turn = np.zeros(len(names))
        turn[names.index("dyaw")], turn[names.index("gripper")] = -1.0, -1.0  # full yaw rate, to the limit
        prev, jumps = obs["robot_eef_quat"].copy(), []
        for _ in range(15):  # 0.15 rad a step: well past -1.6 rad
            obs, *_ = env.step(turn)
            jumps.append(float(np.abs(obs["robot_eef_quat"] - prev).max()))
            prev = obs["robot_eef_quat"].copy()
        assert max(jumps) < 0.3, np.round(jumps, 3)  # a 0.15 rad turn moves a unit quaternion by < 0.1
    finally:
        env.close()
