"""On-policy rollout collection for `train online-rl` (rl100.md §5): one decision = one executed chunk.

Glossary: E parallel envs, To obs history, T horizon, Ta = n_c executed actions (one decision = n_c env steps),
Da action dim, K denoising steps, Dc encoder-feature width, N decisions collected in one call.

Each env runs on its own clock, as in robotstack/eval/rollout.py: when its action queue is empty the policy
samples a stochastic-DDIM chain for it (denoise_ppo.sample_chain: the chain x_K..x_0, the K behaviour
log-probs, the deterministic features), and its Ta executed actions are queued. A decision closes when the
queue empties or the episode ends; its reward is sum_j gamma^j r_{t+j} over the steps actually taken (n_steps),
`terminated` = a true terminal (success; no bootstrap), `truncated` = the time limit (bootstraps from V of
the final observation, kept as next_cond before the env is reset). An env that ends mid-chunk is reset at
once (Meta-World refuses to step a finished env) and asks for a new decision.

A collection stops cleanly: once an env has taken its share of `env_steps` it is *parked* at its next decision
boundary (stepped with zeros, results dropped, reset if it ends), so every stored decision was sampled by the
current weights (the first PPO ratio is exactly 1) and no chunk straddles an update. Every collection starts
fresh episodes with explicit seeds (first_seed, first_seed + 1, ...), which makes a resumed run draw what the
uninterrupted one drew; the episode a parked env was in is cut (its last decision bootstraps from V).

    Collector(task, num_envs, policy_config, ...).collect(policy, env_steps, first_seed, gamma, gen) -> Rollout
    Rollout.concat([...]) merges rollouts of several collectors (Ray workers), each env keeping its sequence.
"""

from __future__ import annotations

import collections
import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from policies.rl.denoise_ppo import sample_chain
from policies.rl.features import encode_blocks


@dataclass
class Rollout:
    """N decisions, env-major (env 0's decisions in time order, then env 1's, ...); numpy, picklable."""

    chain: np.ndarray  # (N, K+1, T, Da) normalized x_K .. x_0
    log_probs: np.ndarray  # (N, K) behaviour log-probs over the executed window
    cond: np.ndarray  # (N, Dc) deterministic features of the decision's observation
    next_cond: np.ndarray  # (N, Dc) features of the observation after the decision (the final one at an end)
    reward: np.ndarray  # (N,) sum_j gamma^j r_{t+j}
    n_steps: np.ndarray  # (N,) env steps the decision took (n_c, fewer when the episode ended mid-chunk)
    terminated: np.ndarray  # (N,) bool: true terminal, no bootstrap
    truncated: np.ndarray  # (N,) bool: time limit, bootstraps from V(next)
    lengths: list[int]  # decisions per env sequence (GAE runs per sequence)
    timesteps: np.ndarray  # (K,)
    prev_timesteps: np.ndarray  # (K,)
    env_steps: int = 0  # env steps of the stored decisions (parked steps excluded)
    episodes: list[dict[str, Any]] = field(default_factory=list)  # completed episodes: success, length, return, seed
    n_started: int = 0  # episode seeds consumed (the next collection starts at first_seed + n_started)
    wall_s: float = 0.0

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    @staticmethod
    def concat(parts: list[Rollout]) -> Rollout:
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return Rollout(cat("chain"), cat("log_probs"), cat("cond"), cat("next_cond"), cat("reward"), cat("n_steps"),
                       cat("terminated"), cat("truncated"), [n for p in parts for n in p.lengths],
                       np.array(parts[0].timesteps), np.array(parts[0].prev_timesteps),  # writable copies
                       sum(p.env_steps for p in parts),
                       [e for p in parts for e in p.episodes], sum(p.n_started for p in parts),
                       max(p.wall_s for p in parts))


class _Slot:
    """One env: obs history (To), action queue, the open decision, the closed ones, the running episode."""

    def __init__(self, n_obs_steps: int):
        self.history: collections.deque = collections.deque(maxlen=n_obs_steps)
        self.queue: collections.deque = collections.deque()
        self.parked = False
        self.open: dict[str, Any] | None = None
        self.closed: list[dict[str, Any]] = []
        self.seed, self.length, self.ret, self.success = 0, 0, 0.0, False

    def start_episode(self, obs: dict[str, np.ndarray], seed: int | None) -> None:
        self.history.clear()
        for _ in range(self.history.maxlen):  # edge padding, as the training windows and eval do
            self.history.append(obs)
        self.queue.clear()
        self.seed, self.length, self.ret, self.success = seed, 0, 0.0, False

    def stacked(self, keys: list[str]) -> dict[str, np.ndarray]:
        return {k: np.stack([h[k] for h in self.history]) for k in keys}

    def close(self, keys: list[str], terminated: bool, truncated: bool) -> None:
        self.open.update(terminated=terminated, truncated=truncated, next_obs=self.stacked(keys))
        self.closed.append(self.open)
        self.open = None
        self.queue.clear()


def _obs_at(obs: dict[str, np.ndarray], i: int, keys: list[str]) -> dict[str, np.ndarray]:
    return {k: np.array(obs[k][i]) for k in keys}


def _to_torch(obs_list: list[dict[str, np.ndarray]], keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([o[k] for o in obs_list])) for k in keys}


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while env subprocesses are spawned: an ignored signal stays ignored across exec (and Python
    keeps it so), so a terminal Ctrl-C, sent to the whole process group, reaches the learner (which saves and
    stops) but not its env workers, which would otherwise die mid-step and take the checkpoint with them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Collector:
    """Owns E gymnasium envs (make_vector_env: subprocesses when E > 1) and collects decisions from them."""

    def __init__(self, task: str, num_envs: int, policy_config, max_episode_steps: int | None = None,
                 shaped_reward: bool = False, randomize: dict | None = None):
        from robotstack.eval.rollout import env_kwargs, make_vector_env  # lazy: imports the sim (MuJoCo)

        kwargs = env_kwargs(policy_config, max_episode_steps)
        if shaped_reward:
            kwargs["shaped_reward"] = True
        if randomize:  # domain randomisation of the training envs only (evaluation stays nominal)
            kwargs["randomize"] = dict(randomize)
        self.task, self.num_envs = task, num_envs
        self.keys = list(policy_config.obs_shapes)
        self.n_obs_steps = policy_config.n_obs_steps
        with _sigint_ignored():
            self.envs = make_vector_env(task, num_envs, kwargs)

    def close(self) -> None:
        self.envs.close()

    @torch.no_grad()
    def collect(self, policy, env_steps: int, first_seed: int, gamma: float, generator: torch.Generator,
                steps: int = 10, eta: float = 1.0, stop=None) -> Rollout | None:
        """Roll out `policy` for about `env_steps` env steps in total (each env takes its share, then parks at a
        decision boundary). `stop` (a StopRequest) aborts: returns None and nothing is kept."""
        t0 = time.perf_counter()
        e, keys = self.num_envs, self.keys
        share = -(-env_steps // e)
        slots = [_Slot(self.n_obs_steps) for _ in range(e)]
        taken = np.zeros(e, dtype=np.int64)
        next_seed = first_seed
        episodes: list[dict[str, Any]] = []
        seeds = list(range(next_seed, next_seed + e))
        next_seed += e
        obs, _ = self.envs.reset(seed=seeds)
        for i, s in enumerate(slots):
            s.start_episode(_obs_at(obs, i, keys), seeds[i])
        zeros = np.zeros(self.envs.single_action_space.shape, np.float32)
        ts = prev = None
        while True:
            if stop is not None and stop.requested:
                return None
            need = []
            for i, s in enumerate(slots):
                if not s.parked and not s.queue:
                    if taken[i] >= share:
                        s.parked = True
                    else:
                        need.append(i)
            if need:
                ch = sample_chain(policy, _to_torch([slots[i].stacked(keys) for i in need], keys), steps=steps,
                                  eta=eta, generator=generator)
                ts, prev = ch.timesteps.numpy(), ch.prev_timesteps.numpy()
                for j, i in enumerate(need):
                    slots[i].open = {"chain": ch.chain[j].numpy(), "log_probs": ch.log_probs[j].numpy(),
                                     "cond": ch.cond[j].numpy(), "reward": 0.0, "n_steps": 0}
                    slots[i].queue.extend(ch.action[j].numpy().astype(np.float32))
            if all(s.parked for s in slots):
                break
            actions = np.stack([zeros if s.parked else s.queue.popleft() for s in slots])
            obs, reward, terminated, truncated, info = self.envs.step(actions)
            success = np.asarray(info.get("is_success", np.zeros(e, bool)), dtype=bool)
            reset = np.zeros(e, dtype=bool)
            for i, s in enumerate(slots):
                ended = bool(terminated[i] or truncated[i])
                if s.parked:
                    reset[i] = ended  # dropped; re-armed so the next step is legal (Meta-World)
                    continue
                taken[i] += 1
                d = s.open
                d["reward"] += gamma ** d["n_steps"] * float(reward[i])
                d["n_steps"] += 1
                s.length, s.ret, s.success = s.length + 1, s.ret + float(reward[i]), s.success or bool(success[i])
                s.history.append(_obs_at(obs, i, keys))
                if ended:
                    s.close(keys, terminated=bool(terminated[i]), truncated=not terminated[i])
                    episodes.append({"seed": s.seed, "success": s.success, "length": s.length, "return": s.ret})
                    reset[i] = True
                elif not s.queue:
                    s.close(keys, terminated=False, truncated=False)
            if reset.any():
                seeds = [None] * e
                for i in np.flatnonzero(reset):
                    if not slots[i].parked:
                        seeds[i] = next_seed
                        next_seed += 1
                obs, _ = self.envs.reset(seed=seeds, options={"reset_mask": reset.copy()})
                for i in np.flatnonzero(reset):
                    slots[i].start_episode(_obs_at(obs, i, keys), seeds[i])
        decisions = [d for s in slots for d in s.closed]
        # in bounded blocks: one pass over ~1000 decisions' camera windows would need GBs of activations
        next_cond = encode_blocks(policy, {k: np.stack([d["next_obs"][k] for d in decisions]) for k in keys}).numpy()
        arr = lambda name, dtype=None: np.asarray([d[name] for d in decisions], dtype=dtype)  # noqa: E731
        return Rollout(np.stack(arr("chain")), arr("log_probs", np.float32), arr("cond", np.float32), next_cond,
                       arr("reward", np.float64), arr("n_steps", np.int64), arr("terminated", bool),
                       arr("truncated", bool), [len(s.closed) for s in slots], ts, prev, int(taken.sum()),
                       episodes, next_seed - first_seed, time.perf_counter() - t0)
