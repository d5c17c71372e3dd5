"""Scripted recording into an episode store: an expert drives an env, every step lands in the store as one frame.

`record_scripted` is the library call behind `robotstack record` (cli/record.py, which adds people driving a
teleop device), the pipeline's demos stage and the benchmarks; it takes any env with the robotstack interface and
any expert with `reset()` / `act(obs)`, so it needs neither sim nor hardware imports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

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
                    realtime: bool = False, show_progress: bool = True) -> RecordStats:
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
            recorder.begin(source="scripted", task=task, seed=ep_seed, policy_id=f"expert(noise={noise:g})")
            rate = RateKeeper(control_hz) if realtime else None
            success = False
            while True:
                action = expert.act(obs)
                next_obs, reward, terminated, truncated, info = env.step(action)
                recorder.add(obs, action, reward, terminated, truncated)
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
