"""Imitation-learning benchmark: per task, record noisy scripted demos, train the default CPU config
(configs/il/<name>.yaml) and evaluate the EMA policy in sim.

    python bench/bench_il.py [--tasks reach,push,...] [--demos 50] [--noise 0.2] [--episodes 100]
                             [--num-envs 2] [--action-mode delta|absolute] [--labels executed|clean]
                             [--set train.steps=1000 ...]

Reports per task: demo success, frames, training throughput (samples/s) and wall time of the config, success
over `--episodes` evaluation episodes with its 95% Wilson interval and mean episode length. Results are merged
per task into bench/results/bench_il.json (so tasks can be run one at a time); `--set` overrides are recorded
with each row. Nothing here is tuned to pass: the configs are the shipped defaults.

--action-mode (issue 10 item 3): the end-effector action mode the demos are recorded in and the policy is
trained and evaluated in (core/ee_action.py); every row records it, and absolute-mode rows are stored under
`<task>@absolute` so the delta rows (key `<task>`) are kept side by side.

--randomize '{"friction": 0.4, "mass": 0.5}': the demos are recorded with the sim's domain randomisation (a
robustness lever for deployment on another physics engine, bench_deploy); evaluation stays on the nominal scene.

--labels clean: DART demos (robotstack/data/recording.py): the noisy expert drives, each frame is labelled with the
clean expert's action in that state; rows `<task>@clean`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine, print_table, write_results  # noqa: E402

DEFAULT_TASKS = ["reach", "push", "pick_place", "push_t", "stack", "push_rgb", "mw_reach", "mw_push",
                 "mw_pick_place"]


def record_demos(task: str, cameras: tuple[str, ...], image_size: int, path: Path, demos: int, noise: float,
                 action_mode: str = "delta", labels: str = "executed", randomize: dict | None = None) -> dict:
    import sim
    from robotstack.data.recording import open_or_create_store, record_scripted

    env = sim.make(task, cameras=cameras, image_size=image_size, action_mode=action_mode,
                   **({"randomize": randomize} if randomize else {}))
    store = open_or_create_store(path, zarr_format=3)
    try:
        stats = record_scripted(env, sim.make_expert(env, noise=noise, seed=0), store, task, demos, seed=0,
                                noise=noise, show_progress=False, labels=labels)
    finally:
        store.close()
        env.close()
    return {"demo_success": stats.success_rate, "demo_frames": stats.frames, "record_s": stats.seconds}


def row_key(name: str, action_mode: str, labels: str = "executed", tag: str = "") -> str:
    """Results key: the task name for delta rows with executed labels (as before the options existed), else
    `<task>@absolute`, `<task>@clean`, `<task>@absolute@clean`; `--tag T` appends `@T` (a variant run with
    `--set` overrides kept beside the default row)."""
    return (name + ("" if action_mode == "delta" else f"@{action_mode}") + ("" if labels == "executed" else f"@{labels}")
            + (f"@{tag}" if tag else ""))


def run_task(name: str, args: argparse.Namespace, work: Path) -> dict:
    from robotstack.core import keys as K
    from robotstack.eval.rollout import evaluate_checkpoint
    from robotstack.train.il import resolve_config, train

    config = ROOT / "configs" / "il" / f"{name}.yaml"
    base = resolve_config(str(config), list(args.set), None)
    cams = tuple(k[len(K.IMAGE_PREFIX):] for k in base.data.obs_keys if K.is_image_key(k))
    mode = args.action_mode
    store = work / f"{row_key(name, mode, args.labels, args.tag)}_demos.zarr"
    row: dict = {"task": name, "env": base.task, "config": str(config.relative_to(ROOT)), "overrides": list(args.set),
                 "demos": args.demos, "noise": args.noise, "action_mode": mode, "labels": args.labels,
                 "record_randomize": args.randomize}
    if not store.exists():
        row |= record_demos(base.task, cams, 96, store, args.demos, args.noise, mode, args.labels, args.randomize)
    else:  # reused from an earlier run of this script: report what is in it
        from robotstack.data.store import EpisodeStore

        with EpisodeStore.open(store) as s:
            metas = s.episode_metas()
            row |= {"demo_success": sum(m.success for m in metas) / max(1, len(metas)), "demo_frames": s.n_frames}
    cfg = resolve_config(str(config), [f"data.paths=[{store}]", "eval.episodes=0", f"action_mode={mode}", *args.set],
                         None)
    run_dir = work / f"{row_key(name, mode, args.labels, args.tag)}_run"
    t0 = time.perf_counter()
    summary = train(cfg, run_dir, show_progress=not args.quiet)
    row |= {"train_steps": cfg.train.steps, "batch_size": cfg.train.batch_size, "train_wall_s": time.perf_counter() - t0,
            "train_samples_per_s": summary["samples_per_s"], "final_loss": summary["final_loss"],
            "n_episodes": summary["n_episodes"], "n_windows": summary["n_windows"]}
    result, _ = evaluate_checkpoint(run_dir / "checkpoints" / "latest", args.episodes, ema=True,
                                    seed=args.eval_seed, num_envs=args.num_envs, show_progress=not args.quiet)
    s = result.summary()
    row |= {"eval_episodes": s["episodes"], "success_rate": s["success_rate"], "ci95_low": s["ci95_low"],
            "ci95_high": s["ci95_high"], "mean_length": s["mean_length"], "eval_wall_s": s["wall_s"]}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="config names under configs/il/")
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--eval-seed", type=int, default=100_000)
    p.add_argument("--num-envs", type=int, default=2)
    p.add_argument("--action-mode", default="delta", choices=["delta", "absolute"],
                   help="end-effector action mode of demos, training and evaluation (rows keyed <task>@absolute)")
    p.add_argument("--labels", default="executed", choices=["executed", "clean"],
                   help="demo labels: executed (noisy) actions, or the expert's clean ones (DART; rows <task>@clean)")
    p.add_argument("--randomize", type=json.loads, default=None,
                   help='domain randomisation of the demo recording only (sim Randomize keys, JSON), e.g. '
                        '\'{"friction": 0.4, "mass": 0.5}\'; evaluation stays nominal')
    p.add_argument("--tag", default="", help="row key suffix @TAG for a variant (e.g. with --set overrides)")
    p.add_argument("--set", action="append", default=[], help="config override for every task, e.g. train.steps=500")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_il"), help="demo stores and run dirs (git-ignored)")
    p.add_argument("--workers", type=int, default=1,
                   help="tasks trained side by side in separate processes (each config uses 1 torch thread)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    if args.randomize and not args.tag:  # the demo store is reused by row key: untagged, it would be the nominal one
        p.error("--randomize needs --tag (its rows and demo stores must not be the nominal task's)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_il.json"
    rows = {}
    names = [t for t in args.tasks.split(",") if t]

    def keep(name: str, row: dict) -> None:
        key = row_key(name, args.action_mode, args.labels, args.tag)
        rows[key] = row | {"machine": machine(), "workers": args.workers}
        # re-read before every write: runs side by side (other tasks, --labels, --tag) keep each other's rows
        previous = json.loads(path.read_text()).get("tasks", {}) if path.exists() else {}
        previous[key] = rows[key]
        write_results("bench_il", {"tasks": previous})  # after every task: a long run keeps what it measured

    if args.workers <= 1:
        for name in names:
            keep(name, run_task(name, args, work))
    else:  # spawn, not fork: torch and EGL contexts do not survive a fork
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_task, name, args, work): name for name in names}
            for fut in as_completed(futures):
                try:
                    keep(futures[fut], fut.result())
                except Exception as exc:  # a failed task is reported, not hidden
                    keep(futures[fut], {"task": futures[fut], "action_mode": args.action_mode,
                                        "error": f"{type(exc).__name__}: {exc}"})
    cols = ["task", "action_mode", "demo_success", "train_steps", "train_samples_per_s", "train_wall_s", "final_loss",
            "success_rate", "ci95_low", "ci95_high", "mean_length", "eval_wall_s"]
    print_table("bench_il (this run)", cols, [[r.get(c, "") for c in cols] for r in rows.values()])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
