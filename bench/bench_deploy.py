"""Deployment transfer benchmark: an exported policy through the real-time runtime on the PyBullet arm server vs
the same artifact in MuJoCo (the training physics), same scenes (seeds), same success criterion.

    python bench/bench_deploy.py --artifact runs/bench_il/push@goal_frame_run/artifact_cm1_ctm_1000 \
        [--task TASK (default: the manifest's)] [--episodes 50] [--max-steps 200] [--label "push IL CM-1"]

Two processes on loopback, as on a robot: `robotstack serve-arm --driver pybullet --task T` (1 kHz servo) and a
controller worker (bench_control's: onnxruntime PolicyRunner, the runtime Controller; `--targets cartesian` by
default, as `deploy` sends to a Panda server, or joint), episodes back to back on the server's scenes (seeds 1001,
1002, ...; `--seed0` moves them). Then the artifact runs in MuJoCo on the same seeds through the same PolicyRunner
(bench_control.mujoco_success). Reported: success on each with 95% Wilson intervals,
the ratio PyBullet / MuJoCo (issue 11's deployment target: >= 0.9), stop reasons and controller latency.
Results merge per label into bench/results/bench_deploy.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.bench_control import mujoco_success, run_phase  # noqa: E402
from bench.common import RESULTS, print_table, write_results  # noqa: E402

NAME = "bench_deploy"
COLUMNS = ["artifact", "episodes", "PyBullet arm server", "MuJoCo", "PyBullet / MuJoCo",
           "both / only PyBullet / only MuJoCo", "stops", "inference p50 / p99 ms"]


def rate(x: float, ci) -> str:
    return f"{100 * x:.0f}% [{100 * ci[0]:.0f}%, {100 * ci[1]:.0f}%]"


def summary_row(label: str, r: dict) -> list:
    """One results row -> the COLUMNS cells (this script's table and tools/bench_tables.py's table in
    docs/benchmarks.md)."""
    return [label, r["episodes"], rate(r["pybullet_success"], r["pybullet_ci95"]),
            rate(r["mujoco_success"], r["mujoco_ci95"]), "-" if r["ratio"] is None else f"{r['ratio']:.2f}",
            f"{r['both']} / {r['only_pybullet']} / {r['only_mujoco']}",
            ", ".join(f"{k} {v}" for k, v in sorted(r["stop_reasons"].items())),
            f"{r['inference_p50_ms']:.2f} / {r['inference_p99_ms']:.2f}"]


POOLED_COLUMNS = ["artifact (rows pooled over scene sets)", "scenes", "episodes", "PyBullet arm server", "MuJoCo",
                  "PyBullet / MuJoCo"]


def pooled_rows(results: dict[str, dict]) -> list[list]:
    """One row per artifact run on more than one scene set: the successes summed over its rows (same artifact dir,
    task, target kind and servo; one row per seed0, the first when a scene set was run twice). Only rows that record
    their seed0 (2026-11-30 on) are pooled: older rows ran on other server versions under reused dirs. Rows that
    record their graphs' sha256 (`graphs`, 2026-12-01 on) are one artifact only when those match: a re-run pipeline
    exports a different policy into the same dir."""
    from robotstack.eval.metrics import wilson_interval

    groups: dict[str, dict[int, tuple[str, dict]]] = {}
    for label, r in results.items():
        if r.get("seed0") is None:
            continue
        key = json.dumps([r["artifact"], r.get("graphs"), r["task"], r["targets"], r.get("servo") or {}],
                         sort_keys=True)
        groups.setdefault(key, {}).setdefault(r["seed0"], (label, r))
    rows = []
    for by_seed in groups.values():
        if len(by_seed) < 2:
            continue
        parts = [by_seed[s] for s in sorted(by_seed)]
        n = sum(r["episodes"] for _, r in parts)
        k_pb = sum(round(r["pybullet_success"] * r["episodes"]) for _, r in parts)
        k_mj = sum(round(r["mujoco_success"] * r["episodes"]) for _, r in parts)
        scenes = ", ".join(f"{s + 1}-{s + r['episodes']}" for s, (_, r) in zip(sorted(by_seed), parts))
        rows.append([parts[0][0], scenes, n, rate(k_pb / n, wilson_interval(k_pb, n)),
                     rate(k_mj / n, wilson_interval(k_mj, n)), f"{k_pb / k_mj:.2f}" if k_mj else "-"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--task", default="", help="default: the artifact manifest's task (push@servo runs the servo "
                                               "arm in the MuJoCo column)")
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--max-steps", type=int, default=200)
    ap.add_argument("--label", default="", help="results key (default: task + artifact dir name)")
    ap.add_argument("--targets", default="cartesian", choices=["cartesian", "joint"],
                    help="controller target kind: cartesian (what `deploy --targets auto` sends to a Panda server: "
                         "its servo solves IK) or joint (IK on the controller, the rows before 2026-11-30)")
    ap.add_argument("--servo", default="", help="the arm server's servo limits, JSON (serve-arm --servo), e.g. "
                                               "'{\"accel_scale\": 1.0}'; recorded with the row")
    ap.add_argument("--seed0", type=int, default=1000,
                    help="episodes run on the scenes of seeds seed0 + 1, seed0 + 2, ... (rows without seed0: 1000)")
    args = ap.parse_args()
    try:  # a bad --servo fails here, not after the episodes (serve-arm checks its keys by name)
        servo = json.loads(args.servo) if args.servo else {}
    except ValueError as e:
        raise SystemExit(f"--servo {args.servo!r}: {e}") from None
    from hardware.protocol.transport import free_base_port
    from robotstack.core.manifest import read_manifest
    from robotstack.eval.metrics import wilson_interval

    manifest = read_manifest(args.artifact)
    args.task = args.task or manifest.task["name"]
    # which policy ran (the path alone does not say: a re-run pipeline exports into the same dir)
    graphs = {role: g["sha256"] for role, g in manifest.graphs.items()} | (
        {"critic": manifest.critic["sha256"]} if manifest.critic else {})

    label = args.label or f"{args.task}: {Path(args.artifact).name}"
    with tempfile.TemporaryDirectory() as td:
        res = run_phase(args.task, 0.0, args.artifact, args.episodes, args.episodes, args.max_steps, Path(td),
                        free_base_port(), targets=args.targets, servo=args.servo, seed0=args.seed0)
    eps = res["episodes"]
    pb = np.array([e["success"] for e in eps], bool)
    mj = np.array(mujoco_success(args.task, [e["seed"] for e in eps], args.artifact, args.max_steps), bool)
    k_pb, k_mj, n = int(np.sum(pb)), int(np.sum(mj)), len(eps)
    lat = res["telemetry"]["latency_ms"]
    row = {"task": args.task, "artifact": args.artifact, "graphs": graphs, "episodes": n, "targets": args.targets,
           "servo": servo, "seed0": args.seed0,
           "pybullet_success": k_pb / n, "pybullet_ci95": wilson_interval(k_pb, n),
           "mujoco_success": k_mj / n, "mujoco_ci95": wilson_interval(k_mj, n),
           "ratio": (k_pb / k_mj) if k_mj else None,
           "stop_reasons": dict(collections.Counter(e["reason"] for e in eps)),
           "both": int(np.sum(pb & mj)), "only_pybullet": int(np.sum(pb & ~mj)), "only_mujoco": int(np.sum(~pb & mj)),
           "inference_p50_ms": lat["inference"]["p50"], "inference_p99_ms": lat["inference"]["p99"],
           "wall_s": res["cpu"]["wall_s"], "server_status": res.get("server_status")}

    path = RESULTS / f"{NAME}.json"
    results = (json.loads(path.read_text()) if path.exists() else {}).get("results", {}) | {label: row}
    table = print_table(f"{NAME}: one artifact, PyBullet arm server (runtime) vs MuJoCo, same seeds", COLUMNS,
                        [summary_row(k, r) for k, r in results.items()])
    write_results(NAME, {"results": results, "table": table})


if __name__ == "__main__":
    main()
