"""Exported artifacts through onnxruntime in the sim, side by side on the same episode seeds (what `robotstack
eval-artifact` prints, kept as JSON).

    python bench/bench_artifact_eval.py --artifact "LABEL=ART_DIR" [--artifact ...] [--episodes 100] \
        [--seed-env 100000]

Default seeds are the pipeline's evaluation seeds (eval.seed 100000), so a hand-made artifact compares with a
pipeline's `evaluate` stage. Results merge per label into bench/results/bench_artifact_eval.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, print_table, write_results  # noqa: E402

NAME = "bench_artifact_eval"
COLUMNS = ["artifact", "task", "sampler", "episodes (first seed)", "success [95% CI]", "decision p50 / p99 ms"]


def evaluate(path: str, episodes: int, seed_env: int) -> dict:
    from robotstack.eval.actor_rollout import rollout_actor
    from robotstack.runtime.artifact import load_artifact

    art = load_artifact(path, seed=0)
    task = art.manifest.task["name"]
    res = rollout_actor(art, task, episodes, seed=seed_env, show_progress=False, description=f"eval {task}",
                        action_mode=art.manifest.ee_action.get("action_mode", "delta"))
    return {"artifact": path, "task": task, "sampler": art.sampler, "seed_env": seed_env} | res.summary()


def rows(results: dict) -> list[list]:
    return [[label, r["task"], r["sampler"], f"{r['episodes']} ({r['seed_env']})",
             f"{r['success_rate']:.0%} [{r['ci95_low']:.0%}, {r['ci95_high']:.0%}]",
             f"{r['decision_p50_ms']:.2f} / {r['decision_p99_ms']:.2f}"] for label, r in results.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", action="append", required=True, help="LABEL=ARTIFACT_DIR (repeatable)")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--seed-env", type=int, default=100_000)
    args = ap.parse_args()
    items = []
    for item in args.artifact:
        label, sep, path = item.partition("=")
        if not sep or not (Path(path) / "manifest.json").is_file():
            raise SystemExit(f"--artifact {item!r}: expected LABEL=ARTIFACT_DIR (a dir with manifest.json)")
        items.append((label, path))
    out = RESULTS / f"{NAME}.json"
    results = (json.loads(out.read_text()) if out.exists() else {}).get("results", {})
    for label, path in items:
        results[label] = evaluate(path, args.episodes, args.seed_env)
    table = print_table(f"{NAME}: artifacts in the sim (onnxruntime), same seeds", COLUMNS, rows(results))
    write_results(NAME, {"results": results, "table": table})


if __name__ == "__main__":
    main()
