"""Closed-loop rollouts of a diffusion policy in sim: observation history To, action chunks Ta, replanning.

Glossary: E parallel envs, To obs history, T horizon (predicted chunk), Ta executed actions, Da action dim.

Per env the runner keeps the last To observations (at reset the first one is repeated To times, matching the
edge padding the training windows use) and a queue of actions. When the queue is empty the policy predicts a
chunk from the history and the Ta executed actions chunk[action_start : action_start + Ta] are queued, so the
env runs Ta actions open-loop and then replans (diffusion_policy's receding horizon).

Envs: one env steps in-process (gymnasium SyncVectorEnv); num_envs > 1 uses AsyncVectorEnv subprocesses
(spawn context, so no MuJoCo/EGL or torch state is forked). Autoreset is disabled: finished envs are reset
here with the next episode's seed, so episode i always gets seed `seed + i`, whatever num_envs is. The
diffusion noise comes from one generator seeded with `seed` and consumed by batched predictions; results are
reproducible for a given (seed, num_envs) but depend on num_envs (the batch composition changes the draws).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from robotstack.core import keys as K
from robotstack.core.progress import progress_bar
from robotstack.eval.metrics import EpisodeResult, summarize

import sim


@dataclass
class EvalResult:
    episodes: list[EpisodeResult]
    wall_s: float
    env_steps: int
    videos: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return summarize(self.episodes) | {"wall_s": self.wall_s,
                                           "env_steps_per_s": self.env_steps / max(self.wall_s, 1e-9)}


def env_kwargs(policy_config, max_episode_steps: int | None = None, render: bool = False,
               action_mode: str | None = None) -> dict[str, Any]:
    """sim.make kwargs that produce the observations the policy was trained on (cameras, image size) and take
    its actions (action_mode; None = the env's default, delta)."""
    image_keys = [k for k in policy_config.obs_shapes if K.is_image_key(k)]
    kwargs: dict[str, Any] = {} if action_mode is None else {"action_mode": action_mode}
    if image_keys:
        kwargs["cameras"] = tuple(k[len(K.IMAGE_PREFIX):] for k in image_keys)
        kwargs["image_size"] = int(policy_config.obs_shapes[image_keys[0]][0])
    if max_episode_steps:
        kwargs["max_episode_steps"] = int(max_episode_steps)
    if render:
        kwargs["render_mode"] = "rgb_array"
    return kwargs


def make_vector_env(task: str, num_envs: int, kwargs: dict[str, Any]) -> gym.vector.VectorEnv:
    fns = [functools.partial(sim.make, task, **kwargs) for _ in range(num_envs)]
    mode = gym.vector.AutoresetMode.DISABLED
    if kwargs.get("cameras"):  # spawned workers render headless: without MUJOCO_GL mujoco picks glfw and fails
        os.environ.setdefault("MUJOCO_GL", "egl")
    if num_envs == 1:
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv(fns, context="spawn", autoreset_mode=mode)


class _Slot:
    """One env's running episode: obs history (To), action queue, accumulators, optional frames."""

    def __init__(self, n_obs_steps: int):
        self.history: collections.deque = collections.deque(maxlen=n_obs_steps)
        self.queue: collections.deque = collections.deque()
        self.episode = -1  # -1: idle (no episode left to run)
        self.seed = 0
        self.length, self.ret, self.success = 0, 0.0, False
        self.frames: list[np.ndarray] | None = None

    def start(self, episode: int, seed: int, obs: dict[str, np.ndarray], record: bool) -> None:
        self.episode, self.seed = episode, seed
        self.length, self.ret, self.success = 0, 0.0, False
        self.queue.clear()
        self.history.clear()
        for _ in range(self.history.maxlen):
            self.history.append(obs)
        self.frames = [] if record else None


def _obs_at(obs: dict[str, np.ndarray], i: int, keys: list[str]) -> dict[str, np.ndarray]:
    return {k: np.array(obs[k][i]) for k in keys}


def _predict(policy, slots: list[_Slot], keys: list[str], sampler: str, steps: int,
             generator: torch.Generator) -> np.ndarray:
    """Histories of `slots` -> (len(slots), Ta, Da) executed actions (env units)."""
    device = next(policy.parameters()).device
    obs = {k: torch.from_numpy(np.stack([np.stack([h[k] for h in s.history]) for s in slots])).to(device)
           for k in keys}
    return policy.predict_action(obs, sampler=sampler, steps=steps, generator=generator).action.cpu().numpy()


@torch.no_grad()
def evaluate(policy, task: str, episodes: int, seed: int = 100_000, num_envs: int = 1, sampler: str | None = None,
             steps: int | None = None, max_episode_steps: int | None = None, out_dir: str | Path | None = None,
             video_episodes: int = 0, show_progress: bool = True, action_mode: str | None = None,
             observer=None) -> EvalResult:
    """Run `episodes` episodes (seeds seed, seed+1, ...) of `policy` in `task`; write per-episode JSON,
    summary JSON and the first `video_episodes` videos to out_dir (if given). action_mode: the env's
    end-effector action mode (None = delta); must be the one the policy was trained in. `observer` (optional)
    sees every env's full observations: on_reset(env, episode, seed, obs) and on_step(env, action, next_obs,
    reward, terminated, truncated, success) (robotstack/eval/collect.py records episodes with it)."""
    if episodes < 1:
        raise ValueError(f"evaluate: episodes must be >= 1, got {episodes}")
    cfg = policy.config
    keys = list(cfg.obs_shapes)
    num_envs = max(1, min(num_envs, episodes))
    envs = make_vector_env(task, num_envs, env_kwargs(cfg, max_episode_steps, render=video_episodes > 0,
                                                               action_mode=action_mode))
    fps = float(envs.metadata.get("render_fps", 20) or 20)
    policy.eval()
    gen = torch.Generator().manual_seed(seed)
    slots = [_Slot(cfg.n_obs_steps) for _ in range(num_envs)]
    results: list[EpisodeResult] = []
    videos: list[str] = []
    out = Path(out_dir) if out_dir is not None else None
    next_ep, env_steps, t0 = 0, 0, time.perf_counter()
    bar = progress_bar(f"eval {task}", show_progress)
    bar_task = bar.add_task("eval", total=episodes, status="")
    bar.start()
    try:
        mask = np.ones(num_envs, dtype=bool)
        while True:
            # (re)start every env in `mask`: the next episode's seed, or idle when none is left
            seeds = [None] * num_envs
            starts = {}
            for i in np.flatnonzero(mask):
                if next_ep < episodes:
                    starts[i] = next_ep
                    seeds[i] = seed + next_ep
                    next_ep += 1
                else:
                    slots[i].episode = -1
            obs, _ = envs.reset(seed=seeds, options={"reset_mask": mask.copy()})
            for i, ep in starts.items():
                slots[i].start(ep, seed + ep, _obs_at(obs, i, keys), record=ep < video_episodes)
                if observer is not None:
                    observer.on_reset(i, ep, seed + ep, _obs_at(obs, i, list(obs)))
            if all(s.episode < 0 for s in slots):
                break
            if any(s.frames is not None for s in slots):
                _add_frames(envs, slots)

            mask = np.zeros(num_envs, dtype=bool)
            while not mask.any():
                need = [s for s in slots if s.episode >= 0 and not s.queue]
                if need:
                    for s, chunk in zip(need, _predict(policy, need, keys, cfg.scheduler.default_sampler
                                                       if sampler is None else sampler, steps, gen)):
                        s.queue.extend(chunk.astype(np.float32))
                actions = np.stack([s.queue.popleft() if s.episode >= 0 else
                                    np.zeros(envs.single_action_space.shape, np.float32) for s in slots])
                obs, reward, terminated, truncated, info = envs.step(actions)
                success = np.asarray(info.get("is_success", np.zeros(num_envs, bool)), dtype=bool)
                if any(s.frames is not None for s in slots):
                    _add_frames(envs, slots)
                for i, s in enumerate(slots):
                    done = bool(terminated[i] or truncated[i])
                    if s.episode < 0:
                        mask[i] |= done  # idle env ran out its time limit: reset it before stepping again
                        continue
                    if observer is not None:
                        observer.on_step(i, actions[i], _obs_at(obs, i, list(obs)), float(reward[i]),
                                         bool(terminated[i]), bool(truncated[i]), bool(success[i]))
                    env_steps += 1
                    s.length += 1
                    s.ret += float(reward[i])
                    s.success |= bool(success[i])
                    s.history.append(_obs_at(obs, i, keys))
                    if done:
                        results.append(EpisodeResult(s.episode, s.seed, s.success, s.length, s.ret))
                        if s.frames:
                            from robotstack.eval.video import write_video

                            if out is not None:
                                videos.append(str(write_video(s.frames, out / "videos" / f"episode_{s.episode:04d}",
                                                              fps=fps)))
                        s.frames = None
                        mask[i] = True
                        n_ok = sum(r.success for r in results)
                        bar.update(bar_task, advance=1, status=f"success {n_ok}/{len(results)}")
    finally:
        bar.stop()
        envs.close()
    results.sort(key=lambda r: r.episode)
    result = EvalResult(results, time.perf_counter() - t0, env_steps, videos)
    if out is not None:
        write_eval(out, result, {"task": task, "seed": seed, "num_envs": num_envs, "sampler": sampler,
                                 "steps": steps, "max_episode_steps": max_episode_steps,
                                 "action_mode": action_mode or "delta"})
    return result


def _add_frames(envs: gym.vector.VectorEnv, slots: list[_Slot]) -> None:
    frames = envs.call("render")
    for s, f in zip(slots, frames):
        if s.frames is not None and f is not None:
            s.frames.append(np.asarray(f, np.uint8))


def write_eval(out_dir: str | Path, result: EvalResult, settings: dict[str, Any]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "episodes.json").write_text(json.dumps([r.to_json() for r in result.episodes], indent=1))
    (out / "summary.json").write_text(json.dumps(result.summary() | {"settings": settings, "videos": result.videos},
                                                 indent=2))


def evaluate_checkpoint(checkpoint: str | Path, episodes: int, ema: bool | None = None, task: str | None = None,
                        out_dir: str | Path | None = None, **kwargs: Any) -> tuple[EvalResult, Path]:
    """Load any policy's checkpoint dir (EMA weights when present unless ema=False) and `evaluate` it in its training
    task (config.json extra.task) or `task`. Results go to out_dir (default CHECKPOINT/eval)."""
    from policies.checkpoint import (EMA_FILE, CheckpointError, checkpoint_action_mode, load_checkpoint, read_extra,
                                     resolve_weights)

    ckpt = Path(checkpoint)
    task = task or read_extra(ckpt).get("task")
    if not task:
        raise CheckpointError(f"{ckpt / 'config.json'}: extra.task is missing; pass --task")
    if ema and not (ckpt / EMA_FILE).is_file():
        raise CheckpointError(f"{ckpt / EMA_FILE}: missing (asked for EMA weights; use --no-ema)")
    # any registered policy (diffusion teacher or distilled consistency student) opens through the one loader
    weights = resolve_weights(ckpt, "auto" if ema is None else "ema" if ema else "model")
    policy = load_checkpoint(ckpt, weights=weights)
    out = Path(out_dir) if out_dir is not None else ckpt.resolve() / "eval"
    # the action mode the policy was trained in travels in the checkpoint's task spec (absent: delta)
    kwargs.setdefault("action_mode", checkpoint_action_mode(read_extra(ckpt)))
    result = evaluate(policy, task, episodes, out_dir=out, **kwargs)
    summary_path = out / "summary.json"
    doc = json.loads(summary_path.read_text())
    doc["settings"] |= {"checkpoint": str(ckpt), "weights": weights}
    summary_path.write_text(json.dumps(doc, indent=2))
    return result, out
