"""`robotstack record`: drive a task with a scripted expert or a person and append episodes to a store.

Scripted experts run as fast as the sim allows (or paced with --realtime); people are always paced at the
task's control rate by a RateKeeper, and every frame keeps its measured capture time beside the grid time.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from robotstack.core import ee_action as ee
from robotstack.core import keys as K
from robotstack.core.rotations import quat_yaw
from robotstack.core.timing import RateKeeper
from robotstack.data.recorder import EpisodeRecorder
from robotstack.data.store import EpisodeStore
from robotstack.data.recording import RecordStats


def record_teleop(env, device, store: EpisodeStore, task: str, episodes: int, seed: int, source: str = "human",
                  live_view: Path | None = None, print_fn=print) -> RecordStats:
    """A person drives the env at its control rate. Enter starts/saves, x discards, Q quits."""
    from hardware.teleop.keyboard import HELP

    spec = env.unwrapped.task_spec()
    control_hz, action_dim = spec["control_hz"], len(spec["action_names"])
    store.set_action_mode(spec.get("action_mode", "delta"))
    absolute = env.unwrapped.action_spec if spec.get("action_mode") == ee.ABSOLUTE else None
    recorder = EpisodeRecorder(store, control_hz=control_hz)
    stats = RecordStats()
    t0 = time.monotonic()
    ep_seed = seed
    obs, _ = env.reset(seed=ep_seed)
    recording, success, last_view = False, False, 0.0
    print_fn(HELP)
    print_fn("press Enter to start an episode")
    rate = RateKeeper(control_hz)
    while stats.saved < episodes:
        cmd = device.poll()
        if "quit" in cmd.events:
            if recording:
                recorder.discard()
                stats.discarded += 1
            break
        if "discard" in cmd.events and recording:
            recorder.discard()
            stats.discarded += 1
            recording = False
            ep_seed += 1
            obs, _ = env.reset(seed=ep_seed)
            print_fn("episode discarded; Enter starts the next one")
        elif "start_or_save" in cmd.events:
            if recording:
                _finish(recorder, stats, success, print_fn)
                recording = False
                ep_seed += 1
                obs, _ = env.reset(seed=ep_seed)
            else:
                recorder.begin(source=source, task=task, seed=ep_seed, policy_id="")
                recording, success = True, False
                print_fn(f"recording episode {stats.saved + 1}/{episodes} (seed {ep_seed})")
        action = cmd.action(action_dim)
        if absolute is not None:  # devices speak deltas: target measured TCP + step (core/ee_action.py)
            action = ee.absolute_from_delta(absolute, action, obs[K.EEF_POS], quat_yaw(obs[K.EEF_QUAT]))
        next_obs, reward, terminated, truncated, info = env.step(action)
        if recording:
            recorder.add(obs, action, reward, terminated, truncated, intervention=False)
            success = success or bool(info.get("is_success", False))
            if terminated or truncated:
                _finish(recorder, stats, success, print_fn)
                recording = False
        if terminated or truncated:
            ep_seed += 1
            next_obs, _ = env.reset(seed=ep_seed)
        obs = next_obs
        now = time.monotonic()
        if live_view is not None and now - last_view > 0.25:  # no display: a PNG a viewer can refresh
            _save_view(env, live_view)
            last_view = now
        rate.wait()
    if recording:
        recorder.discard()
    stats.seconds = time.monotonic() - t0
    return stats


def _finish(recorder: EpisodeRecorder, stats: RecordStats, success: bool, print_fn) -> None:
    stats.frames += recorder.n_frames
    index = recorder.save(success=success)
    stats.saved += 1
    stats.successes += int(success)
    print_fn(f"saved episode {index} ({'success' if success else 'no success'}); Enter starts the next one")


def _save_view(env, path: Path) -> None:
    from PIL import Image

    frame = env.unwrapped.render()
    if frame is not None:
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(np.asarray(frame)).save(tmp)
        tmp.replace(path)  # atomic: a viewer never sees a half-written PNG
