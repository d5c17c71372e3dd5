"""Scripted recording into an episode store: an expert drives an env, every step lands in the store as one frame.

`record_scripted` is the library call behind `robotstack record` (cli/record.py, which adds people driving a
teleop device), the pipeline's demos stage and the benchmarks; it takes any env with the robotstack interface and
any expert with `reset()` / `act(obs)`, so it needs neither sim nor hardware imports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robotstack.core import keys as K
from robotstack.core.progress import progress_bar
from robotstack.core.timing import RateKeeper
from robotstack.data.recorder import EpisodeRecorder
from robotstack.data.store import EpisodeStore


@dataclass
class RecordStats:
    saved: int = 0
    discarded: int = 0
    successes: int = 0
    frames: int = 0
    seconds: float = 0.0

    @property
    def success_rate(self) -> float:
        return self.successes / self.saved if self.saved else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def open_or_create_store(out: str | Path, zarr_format: int) -> EpisodeStore:
    path = Path(out)
    if path.exists():
        return EpisodeStore.open(path, mode="a")
    return EpisodeStore.create(path, zarr_format=zarr_format)


def record_scripted(env, expert, store: EpisodeStore, task: str, episodes: int, seed: int, noise: float,
                    realtime: bool = False, show_progress: bool = True, labels: str = "executed") -> RecordStats:
    """Run `episodes` episodes (seeds seed, seed+1, ...) and append each to `store`.

    labels: which action each frame records. "executed" (default): the action sent to the env, noise included -
    what a person's teleop demo is. "clean": the env still executes the noisy action, but the frame's label is
    the expert's noise-free action in that state (`expert.clean_action`), i.e. DART (Laskey et al. 2017): the
    noise widens the states the demos visit (recoveries from off-nominal states), the labels say what to do
    there instead of copying the noise. Only a scripted expert can give such labels.
    """
    if labels not in K.RECORD_LABELS:
        raise ValueError(f"record labels={labels!r}: expected one of {K.RECORD_LABELS}")
    spec = env.unwrapped.task_spec()
    control_hz = spec["control_hz"]
    store.set_action_mode(spec.get("action_mode", "delta"))
    recorder = EpisodeRecorder(store, control_hz=control_hz)
    stats = RecordStats()
    t0 = time.monotonic()
    progress = progress_bar() if show_progress else None
    bar = progress.add_task("record", total=episodes, status="") if progress else None
    if progress:
        progress.start()
    try:
        for ep in range(episodes):
            ep_seed = seed + ep
            obs, info = env.reset(seed=ep_seed)
            expert.reset()
            recorder.begin(source="scripted", task=task, seed=ep_seed,
                           policy_id=f"expert(noise={noise:g})" + (", labels=clean" if labels == "clean" else "")
                           + _randomize_tag(spec))
            rate = RateKeeper(control_hz) if realtime else None
            success = False
            while True:
                action = expert.act(obs)
                label = action if labels == "executed" else _clean_label(expert, action)
                next_obs, reward, terminated, truncated, info = env.step(action)
                recorder.add(obs, label, reward, terminated, truncated)
                success = success or bool(info.get("is_success", False))
                obs = next_obs
                if rate:
                    rate.wait()
                if terminated or truncated:
                    break
            stats.frames += recorder.n_frames
            recorder.save(success=success)
            stats.saved += 1
            stats.successes += int(success)
            stats.seconds = time.monotonic() - t0
            if progress:
                progress.update(bar, advance=1, status=(
                    f"success {stats.success_rate:5.1%}  {stats.frames_per_s:7.0f} frames/s"))
    finally:
        if progress:
            progress.stop()
    stats.seconds = time.monotonic() - t0
    return stats


def _randomize_tag(spec: dict) -> str:
    """", randomize(friction=0.4, mass=0.5)" when the env randomises anything (provenance in each episode's
    policy_id), else ""."""
    on = {k: v for k, v in (spec.get("randomize") or {}).items() if v}
    return f", randomize({', '.join(f'{k}={v:g}' for k, v in on.items())})" if on else ""


def _clean_label(expert, action) -> np.ndarray:
    clean = getattr(expert, "clean_action", None)
    if clean is None:
        raise ValueError(f"record labels='clean': the expert {type(expert).__name__} gives no clean_action after act(); "
                         f"use labels='executed'")
    clean = np.asarray(clean, dtype=np.float32)
    if clean.shape != np.shape(action):
        raise ValueError(f"record labels='clean': clean_action shape {clean.shape} != action shape {np.shape(action)}")
    return clean
