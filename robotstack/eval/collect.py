"""Roll out a policy checkpoint in sim and record EVERY episode (successes and failures) into an episode store.

RL-100's outer rounds (rl100.md §4.6) deploy the gate-accepted policy and merge what it did into the data:
offline RL needs the failures as much as the successes (the critics learn what does not work from them), so
nothing is filtered here. Each episode is written with source="policy" and the `policy_id` given (e.g. the
pipeline stage that produced the policy), so `robotstack data info` counts the data by source and policy.

The rollout loop is robotstack/eval/rollout.py's `evaluate` (batched policy, vector envs, seeds seed+i); the
frames go through robotstack/data/recorder.py's EpisodeRecorder (one per env slot) via evaluate's observer hook.
Timestamps: the sim has no wall clock, so each frame's capture time is its grid time (no late ticks); a slow
policy on a shared CPU must not mark sim frames late.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from robotstack.data.recorder import EpisodeRecorder
from robotstack.data.store import EpisodeStore


@dataclass
class CollectStats:
    episodes: int = 0
    successes: int = 0
    frames: int = 0
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"episodes": self.episodes, "successes": self.successes, "frames": self.frames,
                "success_rate": self.successes / self.episodes if self.episodes else 0.0, "wall_s": self.wall_s}


class _StoreObserver:
    """evaluate()'s observer: one EpisodeRecorder per env slot; an episode is saved when its env is done."""

    def __init__(self, store: EpisodeStore, task: str, policy_id: str, control_hz: float):
        self.store, self.task, self.policy_id, self.control_hz = store, task, policy_id, control_hz
        self.recorders: dict[int, EpisodeRecorder] = {}
        self.obs: dict[int, dict[str, np.ndarray]] = {}
        self.success: dict[int, bool] = {}
        self.stats = CollectStats()

    def on_reset(self, env: int, episode: int, seed: int, obs: dict[str, np.ndarray]) -> None:
        rec = self.recorders.setdefault(env, EpisodeRecorder(self.store, control_hz=self.control_hz))
        rec.begin(source="policy", task=self.task, seed=int(seed), policy_id=self.policy_id)
        self.obs[env], self.success[env] = obs, False

    def on_step(self, env: int, action: np.ndarray, next_obs: dict[str, np.ndarray], reward: float,
                terminated: bool, truncated: bool, success: bool) -> None:
        rec = self.recorders[env]
        sim_time = rec.n_frames / self.control_hz
        rec.add(self.obs[env], action, reward, terminated, truncated, capture_time=sim_time)
        self.obs[env] = next_obs
        self.success[env] = self.success[env] or success
        if terminated or truncated:
            self.stats.frames += rec.n_frames
            rec.save(success=self.success[env])
            self.stats.episodes += 1
            self.stats.successes += int(self.success[env])


def _control_hz(checkpoint: Path, task: str) -> float:
    from policies.checkpoint import read_extra

    spec = read_extra(checkpoint).get("task_spec") or {}
    if "control_hz" in spec:
        return float(spec["control_hz"])
    import sim

    env = sim.make(task)
    try:
        return float(env.unwrapped.task_spec()["control_hz"])
    finally:
        env.close()


def collect(checkpoint: str | Path, store_path: str | Path, episodes: int, policy_id: str, task: str | None = None,
            seed: int = 200_000, num_envs: int = 1, max_episode_steps: int | None = None,
            show_progress: bool = True) -> CollectStats:
    """Roll out `checkpoint` (EMA weights when present) for `episodes` episodes (seeds seed, seed+1, ...) and
    append every episode to the store at `store_path` (created when missing). -> what was recorded."""
    from policies.checkpoint import (CheckpointError, checkpoint_action_mode, load_checkpoint, read_extra,
                                     resolve_weights)
    from robotstack.eval.rollout import evaluate

    ckpt = Path(checkpoint)
    extra = read_extra(ckpt)
    task = task or extra.get("task")
    if not task:
        raise CheckpointError(f"{ckpt / 'config.json'}: extra.task is missing; pass task=")
    if not policy_id:
        raise ValueError("collect: policy_id is required (it tells the policy's episodes apart in the store)")
    policy = load_checkpoint(ckpt, weights=resolve_weights(ckpt, "auto"))
    mode = checkpoint_action_mode(extra)  # the env takes, and the store records, the policy's action mode
    store = EpisodeStore.open_or_create(store_path)
    store.set_action_mode(mode)
    observer = _StoreObserver(store, task, policy_id, _control_hz(ckpt, task))
    try:
        result = evaluate(policy, task, episodes, seed=seed, num_envs=num_envs, max_episode_steps=max_episode_steps,
                          show_progress=show_progress, observer=observer, action_mode=mode)
    finally:
        store.close()
    observer.stats.wall_s = result.wall_s
    return observer.stats
