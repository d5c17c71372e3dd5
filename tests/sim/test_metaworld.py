"""Meta-World adapter: env contract (CONTRACTS.md), seeding, rendering, scripted experts."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is first imported

import json
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from robotstack.core import keys
from robotstack.core.errors import ConfigError, UnknownTaskError
from sim.metaworld_env import MetaWorldExpert, make_metaworld, metaworld_task_names


@pytest.fixture
def make():
    envs = []

    def _make(task="reach-v3", **kw):
        env = make_metaworld(task, **kw)
        envs.append(env)
        return env

    yield _make
    for env in envs:  # close renderers explicitly (EGL teardown noise otherwise)
        env.close()


def rollout(env, expert, seed, max_steps=500):
    obs, _ = env.reset(seed=seed)
    expert.reset()
    for t in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            return info["is_success"], terminated, t + 1
    return False, False, max_steps


def test_task_names_and_unknown_name():
    names = metaworld_task_names()
    assert len(names) == 50 and "pick-place-v3" in names and "reach-v3" in names
    with pytest.raises(UnknownTaskError) as exc:
        make_metaworld("pick-plaec-v3")
    msg = str(exc.value)
    assert "pick-plaec-v3" in msg and "pick-place-v3" in msg and "window-open-v3" in msg
    with pytest.raises(KeyError):  # UnknownTaskError is also a KeyError
        make_metaworld("reach")


def test_bad_kwargs_fail_early():
    with pytest.raises(ConfigError, match="camera"):
        make_metaworld("reach-v3", cameras=("nope",))
    with pytest.raises(ConfigError, match="control_hz"):
        make_metaworld("reach-v3", control_hz=20)
    with pytest.raises(ConfigError, match="randomize"):
        make_metaworld("reach-v3", randomize={"friction": 0.1})


def test_env_checker(make):
    env = make("push-v3", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # inf Box bounds warn; that is intended
        check_env(env.unwrapped, skip_render_check=True)


def test_obs_keys_dtypes_and_mapping(make):
    env = make("pick-place-v3", seed=1, control_hz=80)
    obs, info = env.reset()
    assert set(obs) == set(keys.STATE_KEYS)
    assert info["is_success"] is False
    shapes = {keys.JOINT_POS: (7,), keys.JOINT_VEL: (7,), keys.GRIPPER: (1,), keys.EEF_POS: (3,),
              keys.EEF_QUAT: (4,), keys.OBJECT_STATE: (14,), keys.GOAL: (3,)}
    for k, shape in shapes.items():
        assert obs[k].dtype == np.float32 and obs[k].shape == shape, k
    assert env.observation_space.contains(obs)
    raw = env.unwrapped.raw_obs
    assert raw.shape == (39,)
    np.testing.assert_allclose(obs[keys.EEF_POS], raw[:3], rtol=1e-6)
    np.testing.assert_allclose(obs[keys.OBJECT_STATE], raw[4:18], rtol=1e-6)
    np.testing.assert_allclose(obs[keys.GOAL], raw[36:39], rtol=1e-6)
    assert np.linalg.norm(obs[keys.GOAL]) > 0  # goal observable, not zeroed
    assert 0.0 <= obs[keys.GRIPPER][0] <= 0.1  # metres
    assert abs(np.linalg.norm(obs[keys.EEF_QUAT]) - 1.0) < 1e-4

    assert env.unwrapped.action_names == ("dx", "dy", "dz", "gripper")
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    spec = env.unwrapped.task_spec()
    json.dumps(spec)
    assert spec["task"] == "mw:pick-place-v3" and spec["control_hz"] == 80.0
    assert spec["max_episode_steps"] == 500 and spec["obs_shapes"][keys.GOAL] == [3]

    obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert isinstance(info["is_success"], bool) and reward == 0.0
    assert not terminated and not truncated


def test_seeded_resets_are_deterministic(make):
    a, b = make("push-v3", seed=7), make("push-v3")
    oa, _ = a.reset()  # first reset uses the constructor seed
    ob, _ = b.reset(seed=7)
    actions = np.random.default_rng(0).uniform(-1, 1, (15, 4)).astype(np.float32)
    for act in actions:
        oa = a.step(act)[0]
        ob = b.step(act)[0]
    for k in oa:
        np.testing.assert_array_equal(oa[k], ob[k], err_msg=k)
    # continuing the stream is deterministic too, and variations differ between resets and seeds
    ga = [a.reset()[0][keys.GOAL] for _ in range(3)]
    gb = [b.reset()[0][keys.GOAL] for _ in range(3)]
    np.testing.assert_array_equal(ga, gb)
    assert not np.allclose(ga[0], ga[1])
    g8 = a.reset(seed=8)[0][keys.GOAL]
    g7 = a.reset(seed=7)[0][keys.GOAL]
    assert not np.allclose(g7, g8)
    np.testing.assert_array_equal(g7, b.reset(seed=7)[0][keys.GOAL])


def test_time_limit_and_reset_guard(make):
    env = make("reach-v3", seed=0, max_episode_steps=5, shaped_reward=True)
    env.reset()
    for t in range(5):
        _, reward, terminated, truncated, _ = env.step(np.zeros(4, np.float32))
        assert reward > 0.0  # Meta-World's dense reward
        assert truncated == (t == 4) and not terminated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(4, np.float32))


def test_rgb_images(make):
    env = make("pick-place-v3", seed=0, cameras=("corner2", "topview"), image_size=64,
               render_mode="rgb_array", render_size=80)
    obs, _ = env.reset()
    obs, *_ = env.step(env.action_space.sample())
    for cam in ("corner2", "topview"):
        img = obs[keys.image_key(cam)]
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert img.std() > 10  # a real picture, not a blank buffer
    assert env.observation_space.contains(obs)
    assert env.render().shape == (80, 80, 3)
    assert env.unwrapped.task_spec()["obs_shapes"]["image_corner2"] == [64, 64, 3]


@pytest.mark.parametrize("task,seeds", [("reach-v3", (0, 1, 2)), ("pick-place-v3", (0, 1, 2))])
def test_expert_solves(make, task, seeds):
    env = make(task)
    expert = MetaWorldExpert(env)
    for seed in seeds:
        success, terminated, steps = rollout(env, expert, seed)
        assert success and terminated, (task, seed, steps)


def test_expert_without_termination_and_noise_seeding(make):
    env = make("reach-v3", terminate_on_success=False, max_episode_steps=150)
    expert = MetaWorldExpert(env)
    env.reset(seed=0)
    successes = []
    for _ in range(150):
        _, _, terminated, truncated, info = env.step(expert.act(None))
        assert not terminated
        successes.append(info["is_success"])
    assert truncated and any(successes)

    obs, _ = env.reset(seed=3)
    acts = []
    for seed in (5, 5, 6):
        noisy = MetaWorldExpert(env, noise=0.3, seed=seed)
        acts.append(np.stack([noisy.act(obs) for _ in range(20)]))
    np.testing.assert_array_equal(acts[0], acts[1])
    assert not np.allclose(acts[0], acts[2])
    assert np.all(np.abs(acts[0]) <= 1.0) and acts[0].dtype == np.float32
    with pytest.raises(ConfigError):
        MetaWorldExpert(env, noise=1.5)


def success_rate(task, noise, episodes, seed0=1000):
    env = make_metaworld(task)
    expert = MetaWorldExpert(env, noise=noise, seed=seed0)
    wins = sum(rollout(env, expert, seed0 + i)[0] for i in range(episodes))
    env.close()
    return wins / episodes


@pytest.mark.slow
@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "pick-place-v3"])
def test_expert_success_rate(task):
    assert success_rate(task, 0.0, 30) >= 0.9
    assert success_rate(task, 0.3, 30) >= 0.6  # measured 0.8-1.0 over 100 episodes
