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


@pytest.mark.slow
def test_push_t_expert_at_demo_noise_100_seeds(env_factory):
    """bench_il records push_t demos at noise 0.2: the memoryless expert must still solve it under that noise
    (measured 100%; the bar leaves room for the noise's pauses and detours)."""
    env = env_factory("push_t")
    expert = sim.make_expert(env, noise=0.2, seed=0)
    rate = np.mean([run_episode(env, expert, seed) for seed in range(100)])
    assert rate >= 0.9, rate


def policy_obs_keys(name: str) -> list[str]:
    """The observation keys the task's IL policy is trained on (configs/il/<task>.yaml)."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "configs" / "il" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())["data"]["obs_keys"]


@pytest.mark.parametrize("name", ["reach", "push", "pick_place", "stack", "push_t"])
def test_expert_actions_are_a_function_of_what_the_policy_observes(name, env_factory, tmp_path):
    """Regression (issue 10 #2): record clean episodes with the real recorder, then feed each stored frame, in
    shuffled order and restricted to the policy's obs keys, to a FRESH expert: it must give the recorded action.
    The old pick_place/stack expert (close for 6 steps, open for 4, phases in its head) fails this, and so does the
    old push_t planner (phase, chosen contact, plan, random choice among near-tied contacts)."""
    from robotstack.data.recording import record_scripted
    from robotstack.core import keys as K
    from robotstack.data.store import EpisodeStore

    env = env_factory(name)
    store = EpisodeStore.create(tmp_path / "demo.zarr")
    stats = record_scripted(env, sim.make_expert(env, noise=0.0, seed=0), store, name, episodes=2, seed=300,
                            noise=0.0, show_progress=False)
    assert stats.successes == 2
    obs_keys = policy_obs_keys(name)
    data = store.load([*obs_keys, K.ACTION])
    fresh = sim.make_expert(env, noise=0.0, seed=1)
    order = np.random.default_rng(0).permutation(len(data[K.ACTION]))
    mismatched = [int(t) for t in order
                  if not np.allclose(fresh.act({k: data[k][t] for k in obs_keys}), data[K.ACTION][t], atol=1e-5)]
    assert not mismatched, f"{len(mismatched)}/{len(order)} frames differ, e.g. frames {sorted(mismatched)[:10]}"
