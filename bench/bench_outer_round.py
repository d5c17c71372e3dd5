"""RL-100's outer loop without its PPO step: roll the policy out, grow the store, re-imitate (rl100.md §4.6).

    python bench/bench_outer_round.py --task push_t [--from push_t@goal_frame_8k] [--rounds 1] [--rollouts 150]
        [--reimitate successes] [--episodes 100] [--work runs/bench_outer_round]

Starts from a bench_il row (its run dir and demo store under runs/bench_il/: `<row>_run`, `<row>_demos.zarr`) and
runs the pipeline's collect -> merge -> il_{m+1} steps (robotstack/pipeline: every rollout kept in the grown store
with source=policy; IL re-trained from scratch on it with `data.episodes=<reimitate>`, the task's shipped IL
config). Each round's policy and the starting one are evaluated side by side on bench_il's seeds (100,000+), so
the rows compare like with like. When the offline gate rejects every PPO candidate (as measured on push and
reach), this is what a pipeline round does; the question answered: does the round alone improve a policy?
Results: bench/results/bench_outer_round.json, one entry per `<from>@<reimitate>[@<tag>]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, print_table, write_results  # noqa: E402

NAME = "bench_outer_round"
EVAL_SEED = 100_000  # bench_il's evaluation seeds
COLLECT_SEED = 200_000  # the pipeline's: round m collects from 200,000 + 10,000 m


def evaluate(checkpoint: Path, episodes: int, out_dir: Path) -> dict:
    """The checkpoint (EMA when present) in its own task on bench_il's seeds; episode JSON under out_dir."""
    from robotstack.eval.rollout import evaluate_checkpoint

    res, _ = evaluate_checkpoint(checkpoint, episodes, seed=EVAL_SEED, out_dir=out_dir, show_progress=False)
    s = res.summary()
    return {k: s[k] for k in ("success_rate", "ci95_low", "ci95_high", "mean_length", "wall_s")}


def one_round(m: int, task: str, config: str, policy: Path, store: Path, work: Path, args) -> tuple[dict, Path, Path]:
    """collect_m -> merge_m -> il_{m+1}; finished steps are reused (a re-run resumes). -> (row, policy, store)"""
    from robotstack.data.merge import merge_stores
    from robotstack.eval.collect import collect
    from robotstack.train.il import resolve_config, train

    d = work / f"round_{m}"
    d.mkdir(parents=True, exist_ok=True)
    row: dict = {"round": m, "collected_by": str(policy)}
    if not (d / "collect.json").is_file():  # written after the store is complete
        shutil.rmtree(d / "rollouts.zarr", ignore_errors=True)  # an interrupted collection: start it again
        stats = collect(policy, d / "rollouts.zarr", args.rollouts, f"il_{m}", task=task,
                        seed=COLLECT_SEED + 10_000 * m, show_progress=False).to_json()
        (d / "collect.json").write_text(json.dumps(stats))
    row["collect"] = json.loads((d / "collect.json").read_text())
    if not (d / "grown.zarr").exists():
        merge_stores([store, d / "rollouts.zarr"], d / "grown.zarr")
    cfg = resolve_config(config, [f"data.paths=[{d / 'grown.zarr'}]", f"data.episodes={args.reimitate}",
                                  "eval.episodes=0", *args.set], None)
    summary = (json.loads((d / "il" / "summary.json").read_text()) if (d / "il" / "summary.json").is_file()
               else train(cfg, d / "il", show_progress=not args.quiet))
    # wall times as recorded when each step ran (a re-run reuses finished steps)
    row |= {"collect_wall_s": row["collect"]["wall_s"], "il_wall_s": summary["wall_s"], "il_steps": cfg.train.steps,
            "n_episodes": summary["n_episodes"], "n_windows": summary["n_windows"]}
    return row, d / "il" / "checkpoints" / "latest", d / "grown.zarr"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="a configs/il/<task>.yaml preset")
    p.add_argument("--from", dest="start", default="", help="bench_il row to start from (default: the task's row)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--rollouts", type=int, default=150, help="episodes collected per round (all kept)")
    p.add_argument("--reimitate", default="successes", choices=["successes", "all"])
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--set", action="append", default=[], help="IL config override, e.g. train.steps=4000")
    p.add_argument("--tag", default="", help="key suffix @TAG for a variant (e.g. with --set overrides)")
    p.add_argument("--bench-il", default=str(ROOT / "runs" / "bench_il"))
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_outer_round"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    start = args.start or args.task
    policy = Path(args.bench_il) / f"{start}_run" / "checkpoints" / "latest"
    store = Path(args.bench_il) / f"{start}_demos.zarr"
    for path in (policy, store):
        if not path.exists():
            p.error(f"--from {start}: {path} does not exist (run bench_il for that row first)")
    key = f"{start}@{args.reimitate}" + (f"@{args.tag}" if args.tag else "")
    work = Path(args.work) / key
    config = str(ROOT / "configs" / "il" / f"{args.task}.yaml")
    from robotstack.train.il import resolve_config

    task = resolve_config(config, [], None).task
    entry = {"task": task, "from": start, "rollouts_per_round": args.rollouts, "reimitate": args.reimitate,
             "overrides": args.set, "start": {"policy": str(policy),
                                               "eval": evaluate(policy, args.episodes, work / "start_eval")},
             "rounds": []}
    for m in range(args.rounds):
        row, policy, store = one_round(m, task, config, policy, store, work, args)
        row["eval"] = evaluate(policy, args.episodes, work / f"round_{m}" / "eval")
        entry["rounds"].append(row)
    path = RESULTS / f"{NAME}.json"
    results = json.loads(path.read_text()).get("results", {}) if path.exists() else {}
    results[key] = entry
    table = print_table(f"{NAME}: collect -> grow the store -> re-imitate ({args.episodes} episodes, seeds "
                        f"{EVAL_SEED}+)", COLUMNS, [r for k, e in results.items() for r in summary_rows(k, e)])
    write_results(NAME, {"results": results, "table": table})


COLUMNS = ["start@reimitate", "stage", "success [95% CI]", "collected (successes)", "IL episodes", "IL steps",
           "collect + IL wall"]


def summary_rows(key: str, e: dict) -> list[list]:
    def pct(ev: dict) -> str:
        return f"{100 * ev['success_rate']:.0f}% [{100 * ev['ci95_low']:.0f}, {100 * ev['ci95_high']:.0f}]"

    rows = [[key, "start (IL)", pct(e["start"]["eval"]), "", "", "", ""]]
    for r in e["rounds"]:
        c = r.get("collect", {})
        rows.append([key, f"round {r['round'] + 1}", pct(r["eval"]),
                     f"{c.get('episodes', '')} ({c.get('successes', '')})", r["n_episodes"], r["il_steps"],
                     f"{(r['collect_wall_s'] + r['il_wall_s']) / 60:.0f} min"])
    return rows


if __name__ == "__main__":
    main()
