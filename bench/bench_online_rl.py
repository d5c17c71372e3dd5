"""Online-RL learning curves: `robotstack train online-rl` (RL-100 stage 3) from a given policy, one row per variant.

    python bench/bench_online_rl.py --task push --policy runs/bench_il/push_run/checkpoints/latest \
        [--variant rl100] [--set train.env_steps=120000 rl.sigma_min=0.1 ...] [--work runs/bench_online_rl]

Runs (or resumes: the same --work/--task/--variant continues the run dir WORK/<task>@<variant> with the policy
and overrides it was started with, kept in its bench_start.json; --set on a resume, e.g. a larger
train.env_steps, applies on top and is recorded with the row) the shipped configs/online_rl/<task>.yaml with
the --set overrides, then reads the run's metrics.csv and records the curve:
deterministic DDIM evaluation success with its 95% interval at every `eval.every` updates (the starting policy
first), the stochastic training policy's success per update (episodes completed in that update's collection),
PPO diagnostics (clip fraction, approx KL), env steps and wall time. Results merge per `<task>@<variant>` into
bench/results/bench_online_rl.json. This isolates the online stage from the pipeline (bench_rl100 runs all of it):
the question it answers is whether online PPO over the denoising steps improves a given policy, at what cost.
Nothing is tuned to pass: the rows are the shipped config plus the recorded overrides.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine, print_table, write_results  # noqa: E402

NAME = "bench_online_rl"


def _f(row: dict, key: str) -> float | None:
    v = row.get(key, "")
    return float(v) if v not in ("", None) else None


def curve(run_dir: Path) -> dict:
    """metrics.csv -> the evaluation and training curves, diagnostics and cost of one online run."""
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    evals = [{"env_steps": int(float(r["step"])), "success": _f(r, "eval/success_rate"),
              "ci95": [_f(r, "eval/ci95_low"), _f(r, "eval/ci95_high")]}
             for r in rows if _f(r, "eval/success_rate") is not None]
    updates = [{"env_steps": int(float(r["env_steps"])), "train_success": _f(r, "train/success_rate"),
                "episodes": _f(r, "train/episodes"), "clip_frac": _f(r, "clip_frac"), "approx_kl": _f(r, "approx_kl"),
                "rollout_s": _f(r, "rollout_s"), "update_s": _f(r, "update_s")}
               for r in rows if _f(r, "update") is not None]
    walls = [_f(r, "wall_time") for r in rows]
    return {"evals": evals, "updates": updates, "env_steps": updates[-1]["env_steps"] if updates else 0,
            "wall_s": (walls[-1] - walls[0]) if len(walls) > 1 else 0.0,
            "rollout_s": sum(u["rollout_s"] or 0 for u in updates), "update_s": sum(u["update_s"] or 0 for u in updates)}


def run(task: str, policy: str, variant: str, overrides: list[str], work: Path, quiet: bool) -> dict:
    from robotstack.train import online_rl

    run_dir = work / f"{task}@{variant}"
    config = ROOT / "configs" / "online_rl" / f"{task}.yaml"
    started = run_dir / "bench_start.json"  # what the run was started with (a resume keeps the run's config)
    if (run_dir / "config.json").is_file():
        start = json.loads(started.read_text())
        if overrides:  # e.g. a longer budget (train.env_steps=...) for a finished run: recorded with the row
            start["resume_overrides"] = [*start.get("resume_overrides", []), *overrides]
            started.write_text(json.dumps(start))
        online_rl.main(None, overrides, resume=str(run_dir), show_progress=not quiet)
    else:
        if not policy:
            raise SystemExit(f"{run_dir} does not exist yet: --policy is needed to start it")
        start = {"policy": policy, "overrides": overrides}
        run_dir.mkdir(parents=True)
        started.write_text(json.dumps(start))
        online_rl.main(str(config), [f"policy={policy}", *overrides], out=str(run_dir), show_progress=not quiet)
    cfg = json.loads((run_dir / "config.json").read_text())
    return {"task": task, "variant": variant, "config": str(config.relative_to(ROOT)), **start,
            "resolved": {k: cfg.get(k) for k in ("rl", "ppo", "gae", "env", "train", "distill", "eval")},
            "run_dir": str(run_dir), **curve(run_dir)}


COLUMNS = ["task@variant", "overrides", "start", "end", "eval curve", "train success, first -> last quarter",
           "env steps", "wall"]


def summary_row(key: str, r: dict) -> list:
    """One results row -> the COLUMNS cells (this script's table and tools/bench_tables.py's table in
    docs/benchmarks.md)."""
    ev = r["evals"]
    pct = lambda x: f"{x:.0%}"  # noqa: E731
    tr = [u["train_success"] for u in r["updates"]  # NaN: no episode ended within that update
          if u["train_success"] is not None and not math.isnan(u["train_success"])]
    k = max(1, len(tr) // 4)
    resumed = " ".join(r.get("resume_overrides", []))
    overrides = (" ".join(r["overrides"]) or "(shipped)") + (f"; resumed with {resumed}" if resumed else "")
    return [key, overrides, pct(ev[0]["success"]) if ev else "-",
            f"{pct(ev[-1]['success'])} [{pct(ev[-1]['ci95'][0])}, {pct(ev[-1]['ci95'][1])}]" if ev else "-",
            " / ".join(f"{pct(e['success'])}@{e['env_steps'] // 1000}k" for e in ev),
            f"{pct(sum(tr[:k]) / k)} -> {pct(sum(tr[-k:]) / k)}" if tr else "-", r["env_steps"],
            f"{r['wall_s'] / 60:.0f} min"]


def table(results: dict) -> str:
    return print_table("online RL (train online-rl) learning curves: deterministic DDIM eval, 95% CI", COLUMNS,
                       [summary_row(key, r) for key, r in results.items()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="push")
    ap.add_argument("--policy", help="IL / offline-rl checkpoint to start from (not needed to resume)")
    ap.add_argument("--variant", default="rl100", help="results key <task>@<variant> and run dir name")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, recorded with the row")
    ap.add_argument("--work", default=str(ROOT / "runs" / NAME))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    row = run(args.task, args.policy, args.variant, args.set, Path(args.work), args.quiet)
    path = RESULTS / f"{NAME}.json"  # read after the (long) run: parallel runs each add their own row
    payload = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    payload["results"][f"{args.task}@{args.variant}"] = row | {"machine": machine()}
    payload["table"] = table(payload["results"])
    print(f"wrote {write_results(NAME, payload)}")


if __name__ == "__main__":
    main()
