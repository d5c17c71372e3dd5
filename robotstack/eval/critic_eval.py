"""ALOE-style evaluation of a policy next to its Monte Carlo return (`robotstack critic evaluate`).

Glossary: E episodes, M policy samples per start state, To obs history, K ensemble members.

    estimate_i = mean_m min_k Q_k(s0_i, a_m),  a_m ~ pi(. | s0_i)     (the ALOE critic's value of pi at s0_i)
    mc_i       = sum_t gamma^t r_t of a fresh rollout of pi from s0_i  (same gamma as the critic)
Both are averaged over the E start states of episodes seed, seed+1, ... (the exact states the rollouts start from:
the env is reset with the same seeds, the first observation repeated To times as the rollout pads it) and reported
with a 95% normal interval over episodes (1.96 s / sqrt(E)).

MC return from episode results: the sim tasks' default reward is sparse, 1 on the success step, which terminates
the episode, so sum_t gamma^t r_t = gamma^(L-1) for a success of length L and 0 otherwise. A task run with shaped
rewards would break this; the envs are built here with their default (sparse) reward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robotstack.core.errors import ConfigError


@dataclass
class Interval:
    mean: float
    lo: float
    hi: float

    @classmethod
    def of(cls, x: np.ndarray) -> Interval:
        x = np.asarray(x, np.float64)
        half = 1.959963984540054 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("inf")
        return cls(float(x.mean()), float(x.mean() - half), float(x.mean() + half))

    def __str__(self) -> str:
        return f"{self.mean:.4f}  [{self.lo:.4f}, {self.hi:.4f}]"


def mc_returns(lengths: np.ndarray, successes: np.ndarray, gamma: float) -> np.ndarray:
    """(E,) discounted returns of sparse-terminal-reward episodes (module docstring)."""
    return np.where(np.asarray(successes, bool), gamma ** (np.asarray(lengths, np.float64) - 1), 0.0)


def start_windows(task: str, seeds: list[int], obs_keys: list[str], n_obs_steps: int,
                  max_episode_steps: int | None = None) -> dict[str, torch.Tensor]:
    """{key: (E, To, ...)}: the first observation of each seeded episode, repeated To times."""
    import sim

    env = sim.make(task, **({"max_episode_steps": max_episode_steps} if max_episode_steps else {}))
    try:
        firsts = [env.reset(seed=s)[0] for s in seeds]
    finally:
        env.close()
    return {k: torch.from_numpy(np.stack([np.repeat(np.asarray(o[k], np.float32)[None], n_obs_steps, 0)
                                          for o in firsts])) for k in obs_keys}


@torch.no_grad()
def estimate_values(scorer, policy, obs: dict[str, torch.Tensor], num_samples: int, seed: int) -> np.ndarray:
    """(E,) mean over M policy chunks of the scorer's pessimistic (min over members) value at each obs window."""
    from policies.critics.scorer import BestOfNPolicy

    bon = BestOfNPolicy(policy, scorer, num_samples)
    executed, _ = bon.candidates(obs, sampler="ddim", generator=torch.Generator().manual_seed(seed))
    return scorer({k: obs[k] for k in scorer.config.obs_shapes}, executed).mean(1).numpy()


def evaluate_policy_value(checkpoint: str | Path, critic: str | Path, episodes: int = 50, seed: int = 100_000,
                          num_samples: int = 16, out: str | Path | None = None,
                          max_episode_steps: int | None = None, show_progress: bool = True) -> dict:
    """Estimate the value of `checkpoint` with the ALOE critic `critic` (a `train critic` scorer dir of method aloe
    trained with this policy as the current policy) at the start states of `episodes` fresh rollouts and compare
    with their discounted MC returns. -> result dict (estimate, mc_return, their 95% intervals, rel_error)."""
    from policies.checkpoint import load_checkpoint, read_extra, require_delta_actions
    from policies.critics.scorer import load_scorer, read_scorer_doc
    from robotstack.eval.rollout import evaluate

    ckpt = Path(checkpoint)
    extra = read_extra(ckpt)
    require_delta_actions(extra, f"--checkpoint {ckpt}")
    task = extra.get("task")
    if not task:
        raise ConfigError(f"{ckpt / 'config.json'}: extra.task is missing")
    out = Path(out) if out else ckpt.resolve() / "critic_eval"
    doc = read_scorer_doc(critic)
    if doc["extra"].get("method") != "aloe":
        raise ConfigError(f"--critic {critic}: method {doc['extra'].get('method')!r}; the value estimate needs an "
                          "ALOE critic (configs/critic/aloe.yaml: current-policy bootstrap, linear values)")
    gamma = float(doc["extra"]["gamma"])
    scorer = load_scorer(critic)
    policy = load_checkpoint(ckpt, weights="auto")
    seeds = [seed + i for i in range(episodes)]
    obs = start_windows(task, seeds, list(scorer.config.obs_shapes), policy.config.n_obs_steps, max_episode_steps)
    est = estimate_values(scorer, policy, obs, num_samples, seed)
    res = evaluate(policy, task, episodes, seed=seed, max_episode_steps=max_episode_steps, out_dir=out / "rollouts",
                   show_progress=show_progress)
    mc = mc_returns(np.array([e.length for e in res.episodes]), np.array([e.success for e in res.episodes]), gamma)
    e_i, m_i = Interval.of(est), Interval.of(mc)
    return {"task": task, "checkpoint": str(ckpt), "critic": str(critic), "gamma": gamma, "episodes": episodes,
            "estimate": e_i.mean, "estimate_ci95": [e_i.lo, e_i.hi], "mc_return": m_i.mean,
            "mc_ci95": [m_i.lo, m_i.hi], "success_rate": float(np.mean([e.success for e in res.episodes])),
            "rel_error": abs(e_i.mean - m_i.mean) / abs(m_i.mean) if m_i.mean else float("inf"),
            "per_episode": {"estimate": est.tolist(), "mc": mc.tolist()}}
