"""Scripted experts: clean experts solve every task; noise changes behaviour; a slow 100-seed check."""

import numpy as np
import pytest

import sim

TASKS = sim.task_names()


def run_episode(env, expert, seed):
    obs, _ = env.reset(seed=seed)
    expert.reset()
    for _ in range(env.unwrapped.max_episode_steps):
        obs, _, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            break
    return info["is_success"]


@pytest.mark.parametrize("name", TASKS)
def test_clean_expert_solves_a_few_seeds(name, env_factory):
    env = env_factory(name)
    expert = sim.make_expert(env, noise=0.0, seed=0)
    results = [run_episode(env, expert, seed) for seed in range(100, 105)]
    assert all(results), results


def test_noisy_expert_differs_and_stays_in_bounds(env_factory):
    env = env_factory("reach")
    obs, _ = env.reset(seed=0)
    clean = sim.make_expert(env, noise=0.0, seed=0).act(obs)
    noisy = [sim.make_expert(env, noise=0.5, seed=s).act(obs) for s in range(5)]
    assert any(not np.allclose(a, clean) for a in noisy)
    for a in noisy:
        assert a.dtype == np.float32 and np.all(np.abs(a) <= 1)


def test_expert_noise_is_validated(env_factory):
    with pytest.raises(ValueError):
        sim.make_expert(env_factory("reach"), noise=1.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", TASKS)
def test_clean_expert_success_rate_100_seeds(name, env_factory):
    env = env_factory(name)
    expert = sim.make_expert(env, noise=0.0, seed=0)
    rate = np.mean([run_episode(env, expert, seed) for seed in range(100)])
    assert rate >= 0.95, rate
