"""Sequential closed-loop rollouts of a stateful *actor* (RTI, consistency students, ONNX artifacts).

Glossary: To obs history, Ta actions returned per decision, Da action dim.

`evaluate()` in rollout.py batches a torch policy over vector envs; warm-started samplers (RTI) and the torch-free
artifact need a per-episode `reset()` and one decision at a time, which this loop provides (one env, batch 1).

Actor protocol: `obs_keys` (list), `n_obs_steps` (To), `reset()`, `act(history: {key: (To, *shape)}) ->
(n, Da)` env-unit actions (n >= 1, all executed before the next decision). `robotstack.runtime.artifact.
ArtifactPolicy` satisfies it; `TorchActor` adapts the torch samplers. Per-decision wall time is recorded.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from robotstack.eval.metrics import EpisodeResult, summarize


class Actor(Protocol):
    obs_keys: list[str]
    n_obs_steps: int

    def reset(self) -> None: ...

    def act(self, history: dict[str, np.ndarray]) -> np.ndarray: ...


class TorchActor:
    """Wraps `predict(obs (1, To, ...) torch) -> actions (1, n, Da) torch` and an optional reset callback."""

    def __init__(self, obs_keys: list[str], n_obs_steps: int, predict: Callable[[dict], Any],
                 reset: Callable[[], None] | None = None):
        import torch  # noqa: F401  (the torch actors only)

        self.obs_keys, self.n_obs_steps = list(obs_keys), n_obs_steps
        self._predict, self._reset = predict, reset

    def reset(self) -> None:
        if self._reset is not None:
            self._reset()

    def act(self, history: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        obs = {k: torch.from_numpy(np.asarray(history[k], np.float32)[None]) for k in self.obs_keys}
        with torch.no_grad():
            return self._predict(obs)[0].numpy()


@dataclass
class ActorResult:
    episodes: list[EpisodeResult]
    decision_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self.decision_s) * 1e3 if self.decision_s else np.zeros(1)
        return summarize(self.episodes) | {"decision_p50_ms": float(np.percentile(lat, 50)),
                                           "decision_p99_ms": float(np.percentile(lat, 99)),
                                           "decisions": len(self.decision_s), "wall_s": self.wall_s}


def rollout_actor(actor: Actor, task: str, episodes: int, seed: int = 100_000, max_episode_steps: int | None = None,
                  show_progress: bool = True, description: str = "", action_mode: str | None = None) -> ActorResult:
    """Episodes seed, seed+1, ...; at reset the first observation is repeated To times (training padding).
    action_mode: the env's end-effector action mode (None = delta), the one the actor was trained in."""
    import sim

    kwargs = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
    env = sim.make(task, **kwargs, **({"action_mode": action_mode} if action_mode else {}))
    res = ActorResult([])
    t_start = time.perf_counter()
    from robotstack.core.progress import progress_bar

    bar = progress_bar(description or f"rollout {task}", show_progress)
    bar_task = bar.add_task("rollout", total=episodes, status="")
    try:
        with bar:
            for ep in range(episodes):
                obs, _ = env.reset(seed=seed + ep)
                actor.reset()
                hist = collections.deque([obs] * actor.n_obs_steps, maxlen=actor.n_obs_steps)
                queue: collections.deque = collections.deque()
                length, ret, success = 0, 0.0, False
                while True:
                    if not queue:
                        h = {k: np.stack([o[k] for o in hist]) for k in actor.obs_keys}
                        t0 = time.perf_counter()
                        acts = actor.act(h)
                        res.decision_s.append(time.perf_counter() - t0)
                        queue.extend(np.asarray(acts, np.float32))
                    obs, reward, terminated, truncated, info = env.step(queue.popleft())
                    length += 1
                    ret += float(reward)
                    success |= bool(info.get("is_success", False))
                    hist.append(obs)
                    if terminated or truncated:
                        break
                res.episodes.append(EpisodeResult(ep, seed + ep, success, length, ret))
                n_ok = sum(e.success for e in res.episodes)
                bar.update(bar_task, advance=1, status=f"success {n_ok}/{len(res.episodes)}")
    finally:
        env.close()
    res.wall_s = time.perf_counter() - t_start
    return res
