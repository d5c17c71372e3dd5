"""bench/bench_rl100.py's target checks and README table (the pipeline run itself is covered by test_pipeline)."""

from __future__ import annotations

from bench.bench_rl100 import readme_table, success_columns, targets


def _doc(online_rate: float, artifact_rate: float) -> dict:
    stages = [{"name": "il_0", "kind": "il", "success": {"rate": 0.5}, "student_success": None},
              {"name": "offline_0", "kind": "offline", "success": {"rate": 0.7}, "student_success": {"rate": 0.65}},
              {"name": "online", "kind": "online", "success": {"rate": online_rate}, "student_success": None,
               "env_steps": 600_000}]
    return {"stages": stages, "teacher_vs_student": {"artifact": {"rate": artifact_rate}, "teacher": {"rate": 1.0},
                                                     "artifact_sampler": "cm1"}}


def test_targets_count_a_zero_as_measured():
    t = targets("push", _doc(0.0, 0.97))
    assert t["online_ge_target"] is False and t["artifact_ge_target"] is False
    assert t["artifact_within_2pts_of_teacher"] is False and t["online_env_steps_le_500k"] is False
    assert t["no_offline_round_below_il"] and t["offline_plus_10pts_where_il_below_80"]
    assert targets("push_t", _doc(0.95, 0.99))["online_ge_target"]  # push_t's target is 90%


def test_readme_table_rows():
    doc = _doc(1.0, 0.99)
    cols = success_columns(doc)
    assert list(cols) == ["il_0", "offline_0", "offline_0 student", "online", "artifact cm1"]
    row = {"success": cols, "env_steps": {"by_stage": {"online": 600_000}}, "wall_s": {"total": 600.0},
           "episodes": 100}
    text = readme_table({"push": row, "stack": {"error": "ConfigError: x"}})
    assert "| push | 50% [50%,50%] | 70% [70%,70%] | 100% [100%,100%] | 99% [99%,99%] (cm1) | 600000 | 10 min | 100 |" in text
    assert "| stack | error: ConfigError: x |" in text
