"""`robotstack pipeline` end to end at a tiny budget on reach (rounds 0, online off: the offline/online stages are
other modules), re-runs that skip finished stages, a Ctrl-C'd run that resumes, and configs refused before any
work."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from robotstack.cli import main as cli
from robotstack.core.errors import ConfigError
from robotstack.pipeline.runner import prepare, run_pipeline
from robotstack.pipeline.stages import run_stage
from robotstack.train.il import resolve_config, train

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_pipeline_reports_and_rerun_skips(tiny_pipeline, tmp_path, snapshot, capsys):
    out = tmp_path / "run"
    # start from a pipeline killed during il_0: demos done, il_0 checkpointed at step 4 of 8, no summary yet
    cfg, root, plan, resolved = prepare(str(tiny_pipeline), [], str(out))
    run_stage(plan[0], cfg, resolved, show_progress=False)
    il_cfg = resolve_config(plan[1].config, plan[1].overrides, None)
    train(il_cfg, plan[1].run_dir, show_progress=False, stop_at=4)
    (plan[1].run_dir / "summary.json").unlink()  # what a kill right after the step-4 checkpoint leaves
    capsys.readouterr()
    assert cli(["pipeline", "--config", str(tiny_pipeline), "--out", str(out), "--quiet"]) == 0
    log = capsys.readouterr().out
    assert "demos: finished earlier, skipped" in log and "il_0: resuming" in log
    il_sum = json.loads((out / "il_0" / "summary.json").read_text())
    assert (il_sum["steps"], il_sum["steps_this_run"]) == (8, 4)
    doc = json.loads((out / "pipeline.json").read_text())
    assert doc["status"] == "finished"
    assert [s["name"] for s in doc["stages"]] == ["demos", "il_0", "distill", "export", "evaluate"]
    assert all(s["status"] == "done" for s in doc["stages"])
    stages = {s["name"]: s for s in doc["stages"]}
    # the data recipe, counted: 3 noisy scripted demos
    assert doc["data"][0]["episodes"] == 3 and set(doc["data"][0]["by_source"]) == {"scripted"}
    # success with Wilson intervals: the teacher's stage eval (2 episodes) and the CM-1 artifact in sim
    for name in ("il_0", "evaluate"):
        s = stages[name]["success"]
        assert s["episodes"] == 2 and 0.0 <= s["ci95_low"] <= s["rate"] <= s["ci95_high"] <= 1.0
    tvs = doc["teacher_vs_student"]
    assert tvs["teacher_stage"] == "il_0" and tvs["artifact_sampler"] == "cm1" and tvs["artifact"]["episodes"] == 2
    assert (out / "export" / "artifact" / "policy.onnx").is_file()
    assert stages["evaluate"]["env_steps"] > 0 and doc["env_steps"]["by_stage"]["demos"] == doc["data"][0]["frames"]
    assert all(stages[n]["wall_s"] > 0 for n in stages)
    report = (out / "report.md").read_text()
    assert "## Data by source" in report and "| il_0 | done |" in report and "(cm1, onnxruntime)" in report
    for png in ("success", "data", "wall_time"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000
    # the student came from the distill stage, trained from the pipeline's own teacher on the demo store
    distill_cfg = json.loads((out / "distill" / "config.json").read_text())
    assert distill_cfg["teacher"] == str(out / "il_0" / "checkpoints" / "latest")
    assert distill_cfg["data"]["paths"] == [str(out / "demos" / "store.zarr")]

    # re-run: every stage is finished, so no run dir is touched
    before = {name: snapshot(out / name) for name in stages}
    doc2 = run_pipeline(str(tiny_pipeline), [], out=str(out), show_progress=False)
    assert {name: snapshot(out / name) for name in stages} == before
    assert doc2["status"] == "finished"
    assert capsys.readouterr().out.count("finished earlier, skipped") == 5
    # a teacher run that holds a jointly trained student (as the RL stages save it): distill is skipped and the
    # export takes that student
    other = tmp_path / "joint"
    for name in ("demos", "il_0"):
        shutil.copytree(out / name, other / name, symlinks=True)
    shutil.copytree(out / "distill" / "checkpoints", other / "il_0" / "student" / "checkpoints", symlinks=True)
    doc3 = run_pipeline(str(tiny_pipeline), [], out=str(other), show_progress=False)
    by3 = {s["name"]: s["summary"] for s in doc3["stages"]}
    assert by3["distill"]["skipped"] and not (other / "distill" / "checkpoints").exists()
    assert by3["export"]["checkpoint"] == str(other / "il_0" / "student" / "checkpoints" / "latest")
    # the same --out with another config is refused (it would mix two experiments)
    with pytest.raises(ConfigError, match="demos.episodes: 3 -> 4"):
        run_pipeline(str(tiny_pipeline), ["demos.episodes=4"], out=str(out), show_progress=False)


@pytest.mark.slow  # a real process and SIGINT, then the whole tiny pipeline again (~25 s on an idle machine)
def test_ctrl_c_stops_the_pipeline_and_a_rerun_resumes(tiny_pipeline, tmp_path, demos_recorder):
    """A partly recorded demo store and an IL run stopped by SIGINT are both continued by the re-run."""
    out = tmp_path / "run"
    demos_recorder(out / "demos" / "store.zarr", 1)  # as if the demos stage died after its first episode
    il = yaml.safe_load((tiny_pipeline.parent / "il.yaml").read_text())
    # long enough to be interrupted; no periodic checkpoints (Ctrl-C saves one), the first log row says it runs
    il["train"] |= {"steps": 400, "checkpoint_every": 0, "log_every": 10}
    (tiny_pipeline.parent / "il.yaml").write_text(yaml.safe_dump(il))
    cmd = [sys.executable, "-m", "robotstack.cli", "pipeline", "--config", str(tiny_pipeline), "--out", str(out),
           "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = out / "il_0" / "metrics.csv"
        deadline = time.monotonic() + 120
        while not started.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.is_file(), proc.communicate()[0] if proc.poll() is not None else "IL did not start in time"
        proc.send_signal(signal.SIGINT)
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log
    assert "run the same command again to resume" in log
    doc = json.loads((out / "pipeline.json").read_text())
    assert doc["status"] == "interrupted"
    stopped = json.loads((out / "il_0" / "summary.json").read_text())
    assert stopped["interrupted"] and 0 < stopped["steps"] < 400
    assert not (out / "distill").exists()  # nothing after the interrupted stage ran

    doc = run_pipeline(str(tiny_pipeline), [], out=str(out), show_progress=False)
    assert doc["status"] == "finished"
    il_sum = json.loads((out / "il_0" / "summary.json").read_text())
    assert il_sum["steps"] == 400 and il_sum["steps_this_run"] == 400 - stopped["steps"]
    state = json.loads((out / "state.json").read_text())
    assert state["il_0"]["runs"] == 2 and state["demos"]["runs"] == 1
    from robotstack.data.store import EpisodeStore

    with EpisodeStore.open(out / "demos" / "store.zarr") as st:  # the demos stage recorded only what was missing
        assert sorted(m.seed for m in st.episode_metas()) == [0, 1, 2]


def _write(path: Path, doc: dict) -> str:
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("case, match", [
    ("unknown_key", r"unknown key 'demos.episodez'"),
    ("missing_stage_file", r"il.config: nope.yaml -> .*nope.yaml does not exist"),
    ("task_mismatch", r"task 'reach' but il.config .* is for task 'push'"),
    ("stage_override_unknown", r"stage il_0 .*unknown key 'train.stepz'"),
    ("stage_override_task", r"stage il_0: task 'push'"),
    ("offline_without_config", r"offline.config: required"),
])
def test_bad_configs_fail_before_any_work(tiny_pipeline, tmp_path, case, match):
    doc = yaml.safe_load(tiny_pipeline.read_text())
    cfg_dir = tiny_pipeline.parent
    if case == "unknown_key":
        doc["demos"]["episodez"] = 3
    elif case == "missing_stage_file":
        doc["il"]["config"] = "nope.yaml"
    elif case == "task_mismatch":
        il = yaml.safe_load((cfg_dir / "il.yaml").read_text())
        doc["il"]["config"] = _write(cfg_dir / "il_push.yaml", il | {"task": "push"})
    elif case == "stage_override_unknown":
        doc["il"]["overrides"] = ["train.stepz=3"]
    elif case == "stage_override_task":
        doc["il"]["overrides"] = ["task=push"]
    elif case == "offline_without_config":
        doc["rounds"] = 1
    path = _write(cfg_dir / "bad.yaml", doc)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        run_pipeline(path, [], out=str(out), show_progress=False)
    assert not out.exists()  # refused before any work: not even the pipeline dir


def test_stage_modules_missing_from_the_tree_are_named(tiny_pipeline, tmp_path):
    """Offline rounds need robotstack.train.offline_rl: where the tree lacks it, the check says so up front."""
    import importlib.util

    if importlib.util.find_spec("robotstack.train.offline_rl") is not None:
        pytest.skip("robotstack.train.offline_rl exists in this tree")
    (tiny_pipeline.parent / "offline.yaml").write_text("task: reach\n")
    with pytest.raises(ConfigError, match="needs robotstack.train.offline_rl"):
        run_pipeline(str(tiny_pipeline), ["rounds=1", "offline.config=offline.yaml"], out=str(tmp_path / "r"),
                     show_progress=False)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "configs" / "pipeline").glob("*.yaml")
                                        if not p.name.startswith("_")), ids=lambda p: p.stem)
def test_shipped_pipeline_configs_load(path):
    """Every shipped pipeline names existing IL/distill configs of its own task (offline/online configs are
    checked the same way once those stages ship theirs)."""
    from robotstack.pipeline.config import load_pipeline_config

    cfg = load_pipeline_config(path, ["rounds=0", "online.enabled=false"])
    assert Path(cfg.il.config).is_file() and Path(cfg.distill.config).is_file()
    assert cfg.offline.config.startswith("../offline_rl/") and cfg.online.config.startswith("../online_rl/")
    assert cfg.demos.noise > 0 and cfg.collect.episodes > 0  # the mixed-quality data recipe is on by default


def test_a_joint_student_stands_in_for_distillation_only_when_it_kept_up():
    """The RL stage's jointly trained student replaces the distill stage when its evaluation puts it within the
    tolerance of its teacher (or nothing was evaluated); trailing further, the final teacher is distilled."""
    from robotstack.pipeline.stages import joint_student_stands_in

    ok, why = joint_student_stands_in({"eval_success_rate": 0.94, "student_eval_success_rate": 0.93}, 0.02)
    assert ok and "within 2%" in why
    ok, why = joint_student_stands_in({"eval_success_rate": 0.94, "student_eval_success_rate": 0.39}, 0.02)
    assert not ok and "39%" in why and "94%" in why and "distilling the final teacher" in why
    assert joint_student_stands_in({"eval_success_rate": 0.94}, 0.02)[0]  # student not evaluated
    assert joint_student_stands_in(None, 0.02)[0]  # no summary to go by
    assert not joint_student_stands_in({"eval_success_rate": 0.5, "student_eval_success_rate": 0.2}, 0.2)[0]


def test_a_dir_pinned_before_new_options_resumes_while_they_stay_at_their_defaults(tiny_pipeline, tmp_path):
    """A pipeline started by an older version lacks the options added since (collect.arm, .keys, .sampler,
    .max_steps came later): resuming it with them at their defaults is the same pipeline; using one is refused."""
    _, root, _, _ = prepare(str(tiny_pipeline), [], str(tmp_path / "old"))
    saved = json.loads((root / "config.json").read_text())
    for key in ("arm", "keys", "sampler", "max_steps"):
        del saved["collect"][key]
    del saved["distill"]["coverage"]
    (root / "config.json").write_text(json.dumps(saved))
    prepare(str(tiny_pipeline), [], str(root))  # no refusal
    with pytest.raises(ConfigError, match=r"collect.max_steps: None -> 5"):
        prepare(str(tiny_pipeline), ["collect.max_steps=5"], str(root))


def test_a_servo_arm_pipeline_runs_its_base_tasks_stage_configs(tiny_pipeline, tmp_path):
    """task: reach@servo (the arm server's servo arm in the sim) uses reach's stage YAMLs; every stage runs the
    variant; another task's stage YAML is still refused."""
    il_yaml = tiny_pipeline.parent / "il.yaml"
    il_yaml.write_text(yaml.safe_dump(yaml.safe_load(il_yaml.read_text()) | {"task": "reach"}))
    _, _, plan, _ = prepare(str(tiny_pipeline), ["task=reach@servo"], str(tmp_path / "run"))
    il = next(s for s in plan if s.name == "il_0")
    assert resolve_config(il.config, il.overrides, None).task == "reach@servo"
    with pytest.raises(ConfigError, match=r"task 'push@servo' but il.config .* is for task 'reach'"):
        prepare(str(tiny_pipeline), ["task=push@servo"], str(tmp_path / "other"))


def test_distill_extra_data_joins_the_final_store_and_bad_ones_fail_before_any_work(tiny_pipeline, tiny_policy,
                                                                                     tmp_path):
    """distill.extra_data: more observation stores for the student (e.g. arm-server episodes) beside the final store;
    a path that is no store, or a distill method that would also fit the stores' actions, is refused up front."""
    store, _ = tiny_policy
    _, root, plan, _ = prepare(str(tiny_pipeline), [f"distill.extra_data=[{store}]"], str(tmp_path / "run"))
    distill = next(s for s in plan if s.kind == "distill")
    paths = [o for o in distill.overrides if o.startswith("data.paths=")]
    assert len(paths) == 1 and str(root / "demos") in paths[0] and str(store) in paths[0]
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"distill.extra_data\[0\]: .*nope.zarr is not an episode store"):
        prepare(str(tiny_pipeline), ["distill.extra_data=[nope.zarr]"], str(out))
    ctm = _write(tiny_pipeline.parent / "distill_ctm.yaml",
                 {"base": str(Path(__file__).resolve().parents[2] / "configs" / "distill" / "ctm.yaml")})
    with pytest.raises(ConfigError, match="distill.extra_data: needs policy.method rl100"):
        prepare(str(tiny_pipeline), [f"distill.config={ctm}", f"distill.extra_data=[{store}]"], str(out))
    assert not out.exists()


def test_distill_coverage_records_randomised_expert_states_for_the_student(tiny_pipeline, tmp_path):
    """distill.coverage: a `coverage` stage records the noisy expert in randomised sim scenes, on its own seeds,
    and the distill stage reads that store beside the final one; bad settings are refused before any work."""
    cfg, root, plan, resolved = prepare(str(tiny_pipeline), [
        "distill.coverage.episodes=2", "distill.coverage.noise=0.4", "distill.coverage.randomize.friction=0.3"],
        str(tmp_path / "run"))
    assert [s.name for s in plan] == ["demos", "il_0", "coverage", "distill", "export", "evaluate"]
    distill = next(s for s in plan if s.kind == "distill")
    paths = [o for o in distill.overrides if o.startswith("data.paths=")]
    assert len(paths) == 1 and str(root / "coverage" / "store.zarr") in paths[0]
    summary = run_stage(plan[2], cfg, resolved, show_progress=False)
    assert summary["episodes"] == 2 and summary["randomize"] == {"friction": 0.3}
    from robotstack.data.store import EpisodeStore

    with EpisodeStore.open(root / "coverage" / "store.zarr") as store:
        metas = [store.episode_meta(i) for i in range(store.n_episodes)]
    assert [m.seed for m in metas] == [400_000, 400_001]
    assert all("expert(noise=0.4)" in m.policy_id and "friction=0.3" in m.policy_id for m in metas)
    out = tmp_path / "never"
    for override, message in (("distill.coverage.randomize.frition=0.3", r"distill.coverage.randomize: unknown key"),
                              ("distill.coverage.noise=2", r"distill.coverage.noise: expected in \[0, 1\]"),
                              ("distill.coverage.episodes=-1", r"distill.coverage.episodes: expected >= 0")):
        with pytest.raises(ConfigError, match=message):
            prepare(str(tiny_pipeline), ["distill.coverage.episodes=2", override], str(out))
    ctm = _write(tiny_pipeline.parent / "distill_ctm.yaml",
                 {"base": str(ROOT / "configs" / "distill" / "ctm.yaml")})
    with pytest.raises(ConfigError, match="distill.coverage: needs policy.method rl100"):
        prepare(str(tiny_pipeline), [f"distill.config={ctm}", "distill.coverage.episodes=2"], str(out))
    assert not out.exists()


def test_export_rti_ships_the_teacher_and_refuses_best_of_n(tiny_pipeline, tiny_policy, tmp_path):
    """export.sampler rti: the artifact is the teacher with RTI warm starts (not the distilled student); with a
    best-of-N critic it is refused before any work (RTI candidates are not independent)."""
    from robotstack.pipeline.stages import Stage

    _, root, plan, _ = prepare(str(tiny_pipeline), ["export.sampler=rti"], str(tmp_path / "run"))
    export = next(s for s in plan if s.kind == "export")
    assert export.inputs["checkpoint"] == export.inputs["teacher"] == str(root / "il_0" / "checkpoints" / "latest")
    _, ckpt = tiny_policy
    stage = Stage("export", "export", tmp_path / "export", inputs={
        "checkpoint": str(ckpt), "fallback": str(tmp_path / "no_student"), "teacher": str(ckpt), "sampler": "rti"})
    summary = run_stage(stage, None, {}, show_progress=False)
    manifest = json.loads((tmp_path / "export" / "artifact" / "manifest.json").read_text())
    assert summary["sampler"] == manifest["sampler"] == "rti" and summary["checkpoint"] == str(ckpt)
    assert summary["nfe"] == 3  # the export default levels [20, 10, 0]
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"export.sampler: rti with critic.kind 'dqc'; best-of-N needs independent candidates"):
        prepare(str(tiny_pipeline), ["export.sampler=rti", "critic.kind=dqc"], str(out))
    assert not out.exists()


def test_export_cm_warm_ships_the_student_and_refuses_best_of_n(tiny_pipeline, tmp_path):
    """export.sampler cm_warm: the export stage takes the distilled student (as cm1 does), warm-started at run time;
    with a best-of-N critic it is refused before any work (one carried state, no independent candidates)."""
    _, root, plan, _ = prepare(str(tiny_pipeline), ["export.sampler=cm_warm"], str(tmp_path / "run"))
    export = next(s for s in plan if s.kind == "export")
    assert export.inputs["sampler"] == "cm_warm"
    assert export.inputs["checkpoint"] == str(root / "distill" / "checkpoints" / "latest")
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match=r"export.sampler: cm_warm with critic.kind 'dqc'; best-of-N needs"):
        prepare(str(tiny_pipeline), ["export.sampler=cm_warm", "critic.kind=dqc"], str(out))
    assert not out.exists()
