"""Every Panda task: gymnasium API compliance, clean physics, determinism, contract shapes."""

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim
from robotstack.core import keys
from robotstack.core.errors import ConfigError

TASKS = sim.task_names()


def test_task_names():
    assert TASKS == ["reach", "push", "pick_place", "push_t", "stack"]


@pytest.mark.parametrize("name", TASKS)
def test_check_env(name, env_factory):
    env = env_factory(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium's checker only warns; any warning is a failure here
        check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("name", TASKS)
def test_random_actions_two_seconds_no_mujoco_warnings(name, env_factory):
    env = env_factory(name)
    u = env.unwrapped
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(int(2 * u.control_hz)):
        obs, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        assert env.observation_space.contains(obs)
        assert isinstance(info["is_success"], bool)
        assert np.isfinite(reward)
    assert u.warning_counts() == {}


@pytest.mark.parametrize("name", TASKS)
def test_seeded_reset_is_deterministic(name, env_factory):
    env = env_factory(name)
    actions = np.random.default_rng(1).uniform(-1, 1, (10,) + env.action_space.shape)

    def rollout(seed):
        obs, _ = env.reset(seed=seed)
        traj = [obs]
        for a in actions:
            traj.append(env.step(a)[0])
        return traj

    t1, t2, t3 = rollout(7), rollout(7), rollout(8)
    for o1, o2 in zip(t1, t2):
        for k in o1:
            np.testing.assert_array_equal(o1[k], o2[k])
    assert not np.array_equal(t1[0][keys.GOAL], t3[0][keys.GOAL]) or not np.array_equal(
        t1[0][keys.OBJECT_STATE], t3[0][keys.OBJECT_STATE]
    )


@pytest.mark.parametrize("name", TASKS)
def test_contract_shapes_and_task_spec(name, env_factory):
    env = env_factory(name)
    u = env.unwrapped
    obs, _ = env.reset(seed=0)
    assert set(obs) == set(keys.STATE_KEYS)
    for k in keys.STATE_KEYS:
        assert obs[k].dtype == np.float32
    assert obs[keys.JOINT_POS].shape == (7,) and obs[keys.EEF_QUAT].shape == (4,)
    assert env.action_space.dtype == np.float32 and env.action_space.shape == (len(u.action_names),)
    assert u.action_names[:3] == ("dx", "dy", "dz") and u.action_names[-1] == "gripper"
    spec = json.loads(json.dumps(u.task_spec()))
    assert spec["task"] == name and spec["action_names"] == list(u.action_names)
    assert spec["max_episode_steps"] == u.max_episode_steps


def test_push_t_has_yaw_action_and_pick_place_does_not(env_factory):
    assert "dyaw" in env_factory("push_t").unwrapped.action_names
    assert "dyaw" not in env_factory("pick_place").unwrapped.action_names


def test_time_limit_truncates(env_factory):
    env = env_factory("reach", max_episode_steps=3)
    env.reset(seed=0)
    flags = [env.step(np.zeros(4, np.float32))[3] for _ in range(3)]
    assert flags == [False, False, True]


def test_actions_move_the_tcp(env_factory):
    env = env_factory("reach")
    obs, _ = env.reset(seed=0)
    p0 = obs[keys.EEF_POS].copy()
    for _ in range(5):
        obs = env.step(np.array([1, 0, 0, -1], np.float32))[0]
    moved = obs[keys.EEF_POS] - p0
    assert 0.07 < moved[0] < 0.11 and abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01  # 5 steps x 2 cm


def test_gripper_closes_on_positive_action(env_factory):
    env = env_factory("pick_place")
    obs, _ = env.reset(seed=0)
    assert obs[keys.GRIPPER][0] > 0.07
    for _ in range(5):
        obs = env.step(np.array([0, 0, 0, 1], np.float32))[0]
    assert obs[keys.GRIPPER][0] < 0.01


def test_randomize_knobs(env_factory):
    with pytest.raises(ConfigError, match="unknown key 'fricton'.*allowed keys.*friction"):
        sim.make("push", randomize={"fricton": 0.1})
    # read by the one strict reader (core/config.py): wrong types and domain errors name the key and value
    with pytest.raises(ConfigError, match=r"randomize: key 'action_latency_steps' = 1\.5: expected int"):
        sim.make("push", randomize={"action_latency_steps": 1.5})
    with pytest.raises(ConfigError, match=r"randomize: key 'obs_noise' = '0\.1': expected float"):
        sim.make("push", randomize={"obs_noise": "0.1"})
    with pytest.raises(ConfigError, match=r"randomize: mass=1\.0: expected a relative range < 1"):
        sim.make("push", randomize={"mass": 1.0})
    with pytest.raises(ConfigError, match=r"randomize: object_pose=-0\.01: expected a non-negative number"):
        sim.make("push", randomize={"object_pose": -0.01})
    env = env_factory("push", randomize={"friction": 0.3, "mass": 0.3, "object_pose": 0.02,
                                          "action_latency_steps": 2, "obs_noise": 0.001})
    u = env.unwrapped
    assert u.task_spec()["randomize"] == {"object_pose": 0.02, "friction": 0.3, "mass": 0.3,
                                          "action_latency_steps": 2, "obs_noise": 0.001}
    cube = u.model.body("cube").id
    env.reset(seed=0)
    m1 = u.model.body_mass[cube]
    env.reset(seed=1)
    assert u.model.body_mass[cube] != m1
    assert abs(u.model.body_mass[cube] / u._nominal_mass[cube] - 1) <= 0.3
    # latency: the first two actions are replaced by idle ones, the TCP barely moves
    obs, _ = env.reset(seed=2)
    p0 = obs[keys.EEF_POS].copy()
    for _ in range(2):
        obs = env.step(np.array([1, 0, 0, 0, -1], np.float32))[0]
    assert abs(obs[keys.EEF_POS][0] - p0[0]) < 0.01
    obs = env.step(np.array([1, 0, 0, 0, -1], np.float32))[0]
    obs = env.step(np.array([1, 0, 0, 0, -1], np.float32))[0]
    assert obs[keys.EEF_POS][0] - p0[0] > 0.02


def test_make_with_gym_wrappers_is_fine(env_factory):
    env = gym.wrappers.RecordEpisodeStatistics(env_factory("reach"))
    env.reset(seed=0)
    env.step(env.action_space.sample())
