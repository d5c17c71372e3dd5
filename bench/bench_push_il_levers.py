"""push imitation levers, side by side: evaluate finished `train il` runs on the same 100 evaluation episodes and
record the failure modes (bench/push_il_diag.py) next to each run's config diff, steps and wall time.

    python bench/bench_push_il_levers.py --run NAME=RUN_DIR [--run NAME=RUN_DIR ...] [--episodes 100]
                                         [--seed 100000] [--ta 0]

Each run is a `robotstack train il --config configs/il/push.yaml [overrides]` run dir; its resolved
config.json is diffed against the reference run (the first --run, the shipped default), so the JSON says exactly
what each lever changed. Results merge by NAME into bench/results/push_il_levers.json (re-running a name
replaces its row). Episodes: seeds seed, seed+1, ... (bench_il's and bench_ladder's evaluation seeds), DDIM-10,
EMA weights. Nothing here is tuned: the evaluation is the one every IL bench uses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, machine, print_table  # noqa: E402

NAME = "push_il_levers"


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= flat(v, key + ".") if isinstance(v, dict) else {key: v}
    return out


def config_diff(ref: dict, cfg: dict) -> dict:
    a, b = flat(ref), flat(cfg)
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            and not k.startswith("eval.")}


def run_row(run_dir: Path, ref_cfg: dict, episodes: int, seed: int, ta: int) -> dict:
    from bench.push_il_diag import run as diag_run
    from robotstack.data.store import EpisodeStore

    cfg = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    ckpt = run_dir / "checkpoints" / f"step_{summary['steps']}"
    with EpisodeStore.open(cfg["data"]["paths"][0]) as s:
        demos, frames = len(s.episode_metas()), s.n_frames
    d = diag_run(str(ckpt), episodes, seed, ta=ta)
    s = d["summary"]
    return {"run_dir": str(run_dir), "config_diff_vs_reference": config_diff(ref_cfg, cfg),
            "demos": demos, "demo_frames": frames, "steps": summary["steps"], "train_wall_s": summary["wall_s"],
            "final_loss": summary.get("final_loss"), "eval_wall_s": d["eval_summary"]["wall_s"],
            "n_action_steps_eval": d["n_action_steps"], "episodes": s["episodes"], "successes": s["successes"],
            "success_rate": s["success_rate"], "ci95": s["ci95"], "mean_length": s["mean_length"],
            "failure_modes": s["modes"], "fail_dist_final_m": s["fail_dist_final"],
            "fail_dist_min_m": s["fail_dist_min"], "action_gap_vs_expert": s["gap_mean"],
            "action_gap_success": s["gap_mean_success"], "action_gap_fail": s["gap_mean_fail"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR; the first is the reference")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--ta", type=int, default=0)
    p.add_argument("--only", default="", help="comma list of names to (re-)evaluate; others only define the ref")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    runs = [(n, Path(d)) for n, d in (r.split("=", 1) for r in a.run)]
    ref_cfg = json.loads((runs[0][1] / "config.json").read_text())
    path = RESULTS / f"{NAME}.json"
    doc = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    only = set(filter(None, a.only.split(",")))
    for name, run_dir in runs:
        if only and name not in only:
            continue
        doc["runs"][name] = run_row(run_dir, ref_cfg, a.episodes, a.seed, a.ta) | {"reference": runs[0][0]}
        doc["machine"] = machine()
        doc["eval"] = {"task": "push", "episodes": a.episodes, "seed": a.seed, "sampler": "ddim", "steps": 10,
                       "weights": "ema"}
        path.write_text(json.dumps(doc, indent=2, default=str))
    rows = [[n, r["demos"], r["steps"], f"{r['success_rate']:.0%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}]",
             r["mean_length"], json.dumps(r["failure_modes"]), round(r["train_wall_s"])]
            for n, r in doc["runs"].items()]
    print_table("push IL levers", ["run", "demos", "steps", "success (95% CI)", "mean len", "modes", "train s"], rows)


if __name__ == "__main__":
    main()
