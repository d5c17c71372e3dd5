"""Rollout workers on Ray for `train online-rl --ray ADDRESS` (optional extra: `pip install robotstack[ray]`).

Each worker is a Ray actor that owns a rollouts.Collector (its own envs) and a copy of the policy, rebuilt from
the policy's registry name + resolved config (the RL-ready scheduler travels with it). Every update the learner
puts the current weights in the object store once and each worker loads them before it collects its share of
the env steps, so every decision is still sampled by the current weights (first PPO ratio 1). Worker w draws
its diffusion noise from its own seed and its episodes from its own seed range (first_seed + w * SEED_STRIDE),
so a run is reproducible for a given number of workers. The learner (PPO, V, student) stays in the driver.

address: "local" starts a local Ray instance (ray.init() with no address) and shuts it down on close; anything
else is passed to ray.init(address=...) (e.g. "auto" or "ray://host:10001") and left running.
"""

from __future__ import annotations

from typing import Any

import torch

from robotstack.core.errors import ConfigError
from robotstack.train.rollouts import Collector, Rollout

SEED_STRIDE = 1_000_000  # episode seeds per worker per collection, far more than one collection uses
INSTALL_HINT = "pip install 'robotstack[ray]' (the optional Ray extra)"


def require_ray(where: str) -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"{where}: Ray is not installed ({exc}); {INSTALL_HINT}, or leave ray.address empty "
                          f"for local vector envs") from exc
    return ray


class RolloutWorker:
    """The actor's body (wrapped by ray.remote in RayCollector): envs + a policy copy."""

    def __init__(self, policy_name: str, policy_config: dict, task: str, num_envs: int,
                 max_episode_steps: int | None, shaped_reward: bool, num_threads: int,
                 randomize: dict | None = None):
        from policies.registry import build_policy

        if num_threads:
            torch.set_num_threads(num_threads)
        self.policy = build_policy(policy_name, policy_config).eval()
        self.collector = Collector(task, num_envs, self.policy.config, max_episode_steps, shaped_reward,
                                   randomize)

    def collect(self, weights: dict[str, torch.Tensor], env_steps: int, first_seed: int, gamma: float,
                noise_seed: int, steps: int, eta: float) -> Rollout:
        self.policy.load_state_dict(weights, strict=True)
        return self.collector.collect(self.policy, env_steps, first_seed, gamma,
                                      torch.Generator().manual_seed(noise_seed), steps=steps, eta=eta)

    def close(self) -> None:
        self.collector.close()


class RayCollector:
    """Same collect/close interface as rollouts.Collector; the env steps are split evenly over the workers."""

    def __init__(self, address: str, num_workers: int, envs_per_worker: int, task: str, policy: torch.nn.Module,
                 max_episode_steps: int | None, shaped_reward: bool, num_threads: int = 1,
                 randomize: dict | None = None):
        from policies.registry import name_of

        ray = require_ray(f"config ray.address={address!r}")
        self._ray = ray
        self._started = not ray.is_initialized() and address == "local"
        if not ray.is_initialized():
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        actor = ray.remote(num_cpus=0)(RolloutWorker)  # env-bound, mostly waiting on MuJoCo; don't reserve cores
        name, conf = name_of(policy), policy.config.to_dict()
        self.workers = [actor.remote(name, conf, task, envs_per_worker, max_episode_steps, shaped_reward,
                                     num_threads, randomize) for _ in range(num_workers)]

    def collect(self, policy: torch.nn.Module, env_steps: int, first_seed: int, gamma: float,
                generator: torch.Generator, steps: int = 10, eta: float = 1.0, stop=None) -> Rollout | None:
        weights = self._ray.put({k: v.detach().cpu().clone() for k, v in policy.state_dict().items()})
        n = len(self.workers)
        share = -(-env_steps // n)
        # per-worker noise seeds drawn from the learner's per-update generator (deterministic resume)
        seeds = torch.randint(0, 2 ** 62, (n,), generator=generator).tolist()
        futures = [w.collect.remote(weights, share, first_seed + i * SEED_STRIDE, gamma, seeds[i], steps, eta)
                   for i, w in enumerate(self.workers)]
        parts = self._ray.get(futures)
        if stop is not None and stop.requested:
            return None
        roll = Rollout.concat(parts)
        roll.n_started = n * SEED_STRIDE  # the next collection starts past every worker's range
        return roll

    def close(self) -> None:
        for w in self.workers:
            try:
                self._ray.get(w.close.remote())
                self._ray.kill(w)
            except Exception:  # noqa: BLE001 - a dead worker must not stop the run's shutdown
                pass
        if self._started:
            self._ray.shutdown()
