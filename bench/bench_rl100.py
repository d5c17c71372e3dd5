"""RL-100 benchmark: per task, `robotstack pipeline` from noisy demos (configs/pipeline/<name>.yaml) and one table of
success after IL / each offline round / online RL / the exported one-step (CM-1) artifact, with env steps and wall
time per stage.

    python bench/bench_rl100.py [--tasks push,pick_place,...] [--episodes 100] [--set rounds=1 ...]
                                [--work runs/bench_rl100] [--quiet]

Every success is measured over `--episodes` episodes (passed as the pipeline's eval.episodes: each stage's own
evaluation and the artifact's) and reported with its 95% Wilson interval. Each task's pipeline dir is
WORK/<name>: re-running the same command resumes an interrupted task and re-reads finished ones, so a long run
can be split. Results are merged per task into bench/results/bench_rl100.json (the README table is generated
from it) with the issue-11 targets checked per task. Nothing here is tuned to pass: the configs are the shipped
defaults plus the `--set` overrides, which are recorded with each row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine, print_table, write_results  # noqa: E402

DEFAULT_TASKS = ["push", "pick_place", "stack", "push_t", "mw_push", "mw_pick_place"]
ONLINE_STEP_BUDGET = 500_000


def success_columns(doc: dict) -> dict[str, dict]:
    """column -> success dict, in pipeline order: il_m, offline_m, online, their joint students, the artifact."""
    cols: dict[str, dict] = {}
    for s in doc["stages"]:
        if s["kind"] in ("il", "offline", "online") and s["success"]:
            cols[s["name"]] = s["success"]
        if s["kind"] in ("offline", "online") and s["student_success"]:
            cols[f"{s['name']} student"] = s["student_success"]
    if doc["teacher_vs_student"]["artifact"]:
        cols[f"artifact {doc['teacher_vs_student']['artifact_sampler']}"] = doc["teacher_vs_student"]["artifact"]
    return cols


def targets(name: str, doc: dict) -> dict:
    """Issue 11's targets, checked where the pipeline measured what they need (None: not measured)."""
    by = {s["name"]: s for s in doc["stages"]}
    def rate(stage: str) -> float | None:
        success = (by.get(stage) or {}).get("success")
        return None if not success else success["rate"]

    art = doc["teacher_vs_student"]["artifact"]
    teacher = doc["teacher_vs_student"]["teacher"]
    need = 0.90 if name == "push_t" else 0.99
    il0 = rate("il_0")
    offline = [s for s in doc["stages"] if s["kind"] == "offline" and s["success"]]
    online = by.get("online", {})
    return {
        "online_ge_target": None if rate("online") is None else rate("online") >= need,
        "artifact_ge_target": None if not art else art["rate"] >= need,
        "artifact_within_2pts_of_teacher": None if not (art and teacher) else art["rate"] >= teacher["rate"] - 0.02,
        "no_offline_round_below_il": None if not (offline and il0 is not None) else
        all(s["success"]["rate"] >= il0 for s in offline),
        "offline_plus_10pts_where_il_below_80": None if not (offline and il0 is not None) or il0 >= 0.8 else
        max(s["success"]["rate"] for s in offline) >= il0 + 0.10,
        "online_env_steps_le_500k": None if not online.get("env_steps") else online["env_steps"] <= ONLINE_STEP_BUDGET,
    }


def run_task(name: str, args: argparse.Namespace, work: Path) -> dict:
    from robotstack.pipeline.runner import run_pipeline

    config = ROOT / "configs" / "pipeline" / f"{name}.yaml"
    overrides = [f"eval.episodes={args.episodes}", *args.set]
    doc = run_pipeline(str(config), overrides, out=str(work / name), show_progress=not args.quiet)
    return {"task": name, "env": doc["task"], "status": doc["status"], "config": str(config.relative_to(ROOT)),
            "overrides": overrides, "success": success_columns(doc), "env_steps": doc["env_steps"],
            "wall_s": doc["wall_s"], "data": doc["data"], "teacher_vs_student": doc["teacher_vs_student"],
            "gate": {s["name"]: s["gate"] for s in doc["stages"] if s.get("gate")},
            "targets": targets(name, doc), "pipeline_dir": doc["pipeline_dir"]}


def _cell(s: dict | None) -> str:
    if not s:
        return ""
    return f"{s['rate']:.0%} [{s.get('ci95_low', s['rate']):.0%},{s.get('ci95_high', s['rate']):.0%}]"


def readme_table(tasks: dict[str, dict]) -> str:
    """The README's RL-100 table (markdown) from bench_rl100.json's "tasks": success after IL, the last offline
    round, online RL and the artifact, the online env steps and the whole pipeline's wall time."""
    header = ["task", "IL", "offline (last round)", "online", "artifact (sampler)", "online env steps", "wall",
              "episodes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, r in tasks.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:80]} |" + " |" * (len(header) - 2))
            continue
        succ = r["success"]
        offline = [c for c in succ if c.startswith("offline_") and not c.endswith("student")]
        art = next((c for c in succ if c.startswith("artifact")), None)
        cells = [name, _cell(succ.get("il_0")), _cell(succ[offline[-1]]) if offline else "", _cell(succ.get("online")),
                 f"{_cell(succ.get(art))} ({art.split()[-1]})" if art else "", str(r["env_steps"]["by_stage"].get("online", "")),
                 f"{r['wall_s']['total'] / 60:.0f} min", str(r.get("episodes", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="config names under configs/pipeline/")
    p.add_argument("--episodes", type=int, default=100, help="evaluation episodes of every stage and the artifact")
    p.add_argument("--set", action="append", default=[], help="pipeline override for every task, e.g. rounds=1 or "
                                                              "'il.overrides=[train.steps=500]'")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_rl100"), help="pipeline dirs (git-ignored)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--readme", action="store_true", help="only print the README table from the results JSON")
    args = p.parse_args()
    if args.readme:
        print(readme_table(json.loads((RESULTS / "bench_rl100.json").read_text())["tasks"]))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "bench_rl100.json"
    rows: dict[str, dict] = {}
    for name in [t for t in args.tasks.split(",") if t]:
        try:
            row = run_task(name, args, work)
        except Exception as exc:  # a failed task is reported, not hidden; the others still run
            traceback.print_exc()
            row = {"task": name, "error": f"{type(exc).__name__}: {exc}"}
        rows[name] = row | {"machine": machine(), "episodes": args.episodes}
        # after every task (a long run keeps what it measured), re-reading the file right before: another
        # bench_rl100 process running other tasks may have written meanwhile
        previous = json.loads(path.read_text()).get("tasks", {}) if path.exists() else {}
        write_results("bench_rl100", {"tasks": previous | {name: rows[name]}})
    succ_cols = list(dict.fromkeys(c for r in rows.values() for c in r.get("success", {})))
    wall_cols = list(dict.fromkeys(c for r in rows.values() for c in r.get("wall_s", {}).get("by_stage", {})))
    cols = ["task", "status", *[f"{c} success" for c in succ_cols], "online env steps", "env steps",
            *[f"{c} s" for c in wall_cols], "total s"]
    table = []
    for r in rows.values():
        if "error" in r:
            table.append([r["task"], r["error"]] + [""] * (len(cols) - 2))
            continue
        steps = r["env_steps"]["by_stage"]
        table.append([r["task"], r["status"], *[_cell(r["success"].get(c)) for c in succ_cols],
                      steps.get("online", ""), r["env_steps"]["training"],
                      *[round(r["wall_s"]["by_stage"].get(c) or 0.0) for c in wall_cols], round(r["wall_s"]["total"])])
    print_table(f"bench_rl100 (success over {args.episodes} episodes, 95% Wilson; wall s per stage)", cols, table)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
