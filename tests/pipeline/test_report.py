"""report.py on run dirs shaped as the stage contract says (docs/CONTRACTS.md): the offline stage's gate.jsonl and
summary keys become the gate table and the AM-Q plot; a stage that reports only a success rate gets its Wilson
interval from the episode count in its resolved config."""

from __future__ import annotations

import json

from robotstack.eval.metrics import wilson_interval
from robotstack.pipeline.config import load_pipeline_config
from robotstack.pipeline.report import write_report
from robotstack.pipeline.stages import build_plan


def test_report_reads_gate_decisions_and_rates(tiny_pipeline, tmp_path):
    (tiny_pipeline.parent / "offline.yaml").write_text("task: reach\n")
    cfg = load_pipeline_config(tiny_pipeline, ["rounds=1", "offline.config=offline.yaml"])
    root = tmp_path / "p"
    plan = build_plan(cfg, root)
    assert [s.name for s in plan] == ["demos", "il_0", "offline_0", "collect_0", "merge_0", "il_1", "select_1",
                                      "distill", "export", "evaluate"]
    off = root / "offline_0"
    off.mkdir(parents=True)
    gate = [{"update": 5, "amq_old": 0.40, "amq_new": 0.45, "accepted": True, "mode": "delta_revert"},
            {"update": 10, "amq_old": 0.45, "amq_new": 0.46, "accepted": False, "mode": "delta_revert"}]
    (off / "gate.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gate))
    (off / "config.json").write_text(json.dumps({"eval": {"episodes": 50}}))
    (off / "summary.json").write_text(json.dumps({"interrupted": False, "wall_s": 3.0, "amq_initial": 0.40,
                                                  "amq_final": 0.45, "n_accepted": 1, "n_rejected": 1,
                                                  "eval_success_rate": 0.62, "student_eval_success_rate": 0.6}))
    doc = write_report(cfg, root, plan, {"offline_0": {"wall_s": 7.5, "runs": 2}}, "interrupted", print_fn=lambda *_: 0)
    row = next(s for s in doc["stages"] if s["name"] == "offline_0")
    assert row["status"] == "done" and row["wall_s"] == 7.5  # summed over resumes, from state.json
    assert row["success"]["episodes"] == 50 and row["success"]["successes"] == 31
    assert (row["success"]["ci95_low"], row["success"]["ci95_high"]) == wilson_interval(31, 50)
    assert row["student_success"]["successes"] == 30
    assert row["gate"]["decisions"] == gate and row["gate"]["n_rejected"] == 1
    assert next(s for s in doc["stages"] if s["name"] == "il_1")["status"] == "fresh"
    report = (root / "report.md").read_text()
    assert "## Gate decisions (AM-Q)" in report and "| offline_0 | 10 | 0.45 | 0.46 | False | delta_revert |" in report
    assert (root / "plots" / "amq.png").stat().st_size > 1000
    assert json.loads((root / "pipeline.json").read_text())["status"] == "interrupted"


def test_recorded_data_reports_its_success_once(tiny_pipeline, tmp_path):
    from robotstack.pipeline.report import success_of

    cfg = load_pipeline_config(tiny_pipeline)
    demos = build_plan(cfg, tmp_path)[0]
    summary = {"episodes": 30, "successes": 27}
    assert success_of(demos, summary)["rate"] == 0.9 and success_of(demos, summary)["ci95_low"] > 0.7
    assert success_of(demos, summary, "student_eval_") is None
