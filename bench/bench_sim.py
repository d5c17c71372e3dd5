"""Sim benchmark: per task, env steps/s (state obs, 96x96 RGB), scripted-expert success over N episodes
(noise off / on), and recording throughput to a zarr store (frames/s, with and without RGB).

    python bench/bench_sim.py [--episodes 100] [--tasks reach,push,...] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import print_table, write_results  # noqa: E402

OWN = ["reach", "push", "pick_place", "push_t", "stack"]
METAWORLD = ["mw:reach-v3", "mw:push-v3", "mw:pick-place-v3"]
CAMERA = {"mw": "corner"}


def camera_for(task: str) -> str:
    return "corner" if task.startswith("mw:") else "front"


def steps_per_s(task: str, cameras: tuple[str, ...], seconds: float = 3.0) -> float:
    import sim

    env = sim.make(task, cameras=cameras, image_size=96)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        _, _, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
        n += 1
        if term or trunc:
            env.reset(seed=n)
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate


def expert_success(task: str, noise: float, episodes: int, seed0: int = 1000) -> dict:
    import sim

    env = sim.make(task)
    expert = sim.make_expert(env, noise=noise, seed=seed0)
    successes, lengths = 0, []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed0 + ep)
        expert.reset()
        success = False
        for t in range(100_000):
            obs, _, term, trunc, info = env.step(expert.act(obs))
            success = success or bool(info.get("is_success"))
            if term or trunc:
                break
        successes += success
        lengths.append(t + 1)
    env.close()
    return {"success": successes / episodes, "mean_len": float(np.mean(lengths))}


def record_fps(task: str, cameras: tuple[str, ...], episodes: int = 3) -> float:
    import sim
    from robotstack.data.store import EpisodeStore
    from robotstack.data.recording import record_scripted

    env = sim.make(task, cameras=cameras, image_size=96)
    expert = sim.make_expert(env, noise=0.0, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        store = EpisodeStore.create(Path(tmp) / "rec.zarr")
        stats = record_scripted(env, expert, store, task, episodes, seed=0, noise=0.0, show_progress=False)
    env.close()
    return stats.frames_per_s


def bench_task(task: str, episodes: int) -> dict:
    cam = (camera_for(task),)
    row = {"task": task}
    try:
        row["steps_s_state"] = steps_per_s(task, ())
        row["steps_s_rgb96"] = steps_per_s(task, cam)
        for noise in (0.0, 0.3):
            row[f"expert_noise{noise}"] = expert_success(task, noise, episodes)
        row["record_fps_state"] = record_fps(task, ())
        row["record_fps_rgb96"] = record_fps(task, cam)
    except Exception as exc:  # a broken task is reported, not hidden
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--tasks", default=",".join(OWN + METAWORLD))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(bench_task, tasks, [args.episodes] * len(tasks)))
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["task"], "ERROR", r["error"][:60], "", "", "", ""])
            continue
        table.append([r["task"], round(r["steps_s_state"]), round(r["steps_s_rgb96"]),
                      f"{r['expert_noise0.0']['success']:.0%}", f"{r['expert_noise0.3']['success']:.0%}",
                      round(r["record_fps_state"]), round(r["record_fps_rgb96"])])
    print_table(f"bench_sim ({args.episodes} episodes per expert cell, {args.workers} workers in parallel)",
                ["task", "steps/s state", "steps/s rgb96", "expert ok (noise 0)", "expert ok (noise 0.3)",
                 "record frames/s state", "record frames/s rgb96"], table)
    # merge by task with rows of earlier runs (each row keeps its own machine/commit/date)
    import json

    from bench.common import RESULTS, machine

    old = RESULTS / "bench_sim.json"
    merged = {}
    if old.exists():
        prev = json.loads(old.read_text())
        for r in prev.get("rows", []):
            merged[r["task"]] = {**r, "machine": r.get("machine", prev.get("machine"))}
    for r in rows:
        merged[r["task"]] = {**r, "machine": machine(), "episodes": args.episodes, "workers": args.workers}
    path = write_results("bench_sim", {"rows": list(merged.values())})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
