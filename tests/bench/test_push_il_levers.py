"""bench/push_il_diag.py's episode classification and bench/bench_push_il_levers.py's config diff (pure parts;
the rollouts themselves are `robotstack.eval.rollout.evaluate`, tested in tests/eval)."""

from __future__ import annotations

import numpy as np

from bench.bench_push_il_levers import config_diff
from bench.push_il_diag import DiagObserver, summarize


def episode(dists, tcps, cubes, success=False):
    c = {"episode": 0, "seed": 7, "cube0": np.array(cubes[0]), "dist": list(dists), "tcp": [np.array(t) for t in tcps],
         "cube": [np.array(x) for x in cubes], "gap": [0.1] * len(dists), "success": success}
    return DiagObserver._finish(c)


def test_failure_modes():
    n = 50
    still = [[0.5, 0.0, 0.02]] * n
    # the cube passed within 3 cm of the target and ended 20 cm away: overshoot
    e = episode(np.r_[np.linspace(0.2, 0.03, 25), np.linspace(0.03, 0.2, 25)], still,
                [[0.5 + 0.01 * i, 0.0] for i in range(n)])
    assert e["mode"] == "overshoot" and abs(e["dist_min"] - 0.03) < 1e-9
    assert episode([0.2] * n, still, [[0.5, 0.0]] * n)["mode"] == "no_push"
    # the cube moved, the hand sits still next to it: stall; the same with a moving hand: wander
    cubes = [[0.5 + 0.001 * i, 0.0] for i in range(n)]
    assert episode([0.2] * n, still, cubes)["mode"] == "stall"
    moving = [[0.5 + 0.02 * np.sin(i), 0.0, 0.02] for i in range(n)]
    assert episode([0.2] * n, moving, cubes)["mode"] == "wander"
    assert episode([0.2, 0.01], still[:2], cubes[:2], success=True)["mode"] == "success"


def test_summary_counts_modes_and_interval():
    eps = [{"success": i < 3, "mode": "success" if i < 3 else "wander", "length": 10, "dist_final": 0.1,
            "dist_min": 0.05, "tcp_z_final": 0.02, "tail_path": 0.3, "gap_mean": 0.2} for i in range(10)]
    s = summarize(eps)
    assert (s["successes"], s["modes"]) == (3, {"success": 3, "wander": 7})
    assert 0 < s["ci95"][0] < 0.3 < s["ci95"][1] < 1


def test_config_diff_names_changed_keys_and_ignores_eval():
    ref = {"train": {"batch_size": 64, "steps": 6000}, "eval": {"episodes": 0}, "data": {"paths": ["a"]}}
    new = {"train": {"batch_size": 256, "steps": 6000}, "eval": {"episodes": 20}, "data": {"paths": ["a"]}}
    assert config_diff(ref, new) == {"train.batch_size": [64, 256]}
