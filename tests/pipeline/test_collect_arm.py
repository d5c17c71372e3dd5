"""The collect stage on an arm server (`collect.arm`): the round's policy is exported and run by the real-time
controller against a real `serve-arm` process (the kinematic Panda on reach), every episode lands in collect_m's
store as `deploy --record` writes it, a second run collects only what is missing, and merge_m grows the sim store
on the keys both stores have (the arm's telemetry keys stay in collect_m)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from store_testing import OFFLINE_RL_TINY

from robotstack.core.errors import ConfigError, StoreError
from robotstack.data.merge import merge_stores
from robotstack.data.store import EpisodeStore
from robotstack.pipeline import stages
from robotstack.pipeline.config import CollectSection, PipelineConfig, load_pipeline_config
from tests.runtime.conftest import ServerProc

ROOT = Path(__file__).resolve().parents[2]


def test_collect_on_an_arm_records_every_episode_and_merges_on_the_store_keys(tiny_policy, tmp_path, snapshot):
    demos, ckpt = tiny_policy
    before = snapshot(demos)
    srv = ServerProc(driver="kinematic")
    try:
        cfg = PipelineConfig(task="reach", collect=CollectSection(arm=srv.addr, episodes=2, max_steps=6))
        stage = stages.Stage("collect_0", "collect", tmp_path / "collect_0",
                             inputs={"policy": str(ckpt), "policy_id": "offline_0", "seed": "200000"})
        summary = stages._run_collect(stage, cfg, {}, False)
        assert summary["arm"] == srv.addr and summary["episodes"] == 2
        artifact = tmp_path / "collect_0" / "artifact"
        assert (artifact / "policy.onnx").is_file()
        exported = (artifact / "policy.onnx").stat().st_mtime_ns
        rollouts = tmp_path / "collect_0" / stages.STORE
        with EpisodeStore.open(rollouts) as st:
            metas = st.episode_metas()
            assert [m.seed for m in metas] == [200000, 200001]
            assert {m.source for m in metas} == {"policy"} and {m.policy_id for m in metas} == {"offline_0"}
            assert {"latency_ms", "target_joint_pos", "policy_action"} <= set(st.key_specs())  # deploy's telemetry
            assert all(len(st.episode(i)["action"]) == 6 for i in range(2))  # max_steps policy steps each

        cfg.collect.episodes = 3  # a stopped or extended collection continues, with the next seed, same artifact
        assert stages._run_collect(stage, cfg, {}, False)["episodes"] == 3
        assert (artifact / "policy.onnx").stat().st_mtime_ns == exported
        with EpisodeStore.open(rollouts) as st:
            assert [m.seed for m in st.episode_metas()] == [200000, 200001, 200002]
    finally:
        srv.stop()
    assert "Traceback" not in srv.output()

    with pytest.raises(StoreError, match="latency_ms"):  # the plain merge refuses the telemetry keys ...
        merge_stores([demos, rollouts], tmp_path / "plain.zarr")
    merge = stages.Stage("merge_0", "merge", tmp_path / "merge_0", inputs={"data": str(demos), "new": str(rollouts)})
    summary = stages._run_merge(merge, cfg, {}, False)  # ... the merge stage keeps the keys both stores have
    with EpisodeStore.open(demos) as d, EpisodeStore.open(tmp_path / "merge_0" / stages.STORE) as merged:
        kept = set(merged.key_specs())
        assert kept == set(d.key_specs()) - set(summary["dropped_keys_data"])
        assert "object_state" in summary["dropped_keys_data"]  # the kinematic arm has no objects
        assert {"latency_ms", "policy_action"} <= set(summary["dropped_keys_new"])
        assert {"action", "robot_eef_pos", "robot_gripper", "goal"} <= kept  # what the policy trains on
        assert merged.n_episodes == d.n_episodes + 3
        assert [m.source for m in merged.episode_metas()][-3:] == ["policy"] * 3
    assert snapshot(demos) == before  # the inputs are only read


@pytest.mark.parametrize("override, message", [
    ("collect.arm=127.0.0.1:6510", "'127.0.0.1:6510': expected tcp://HOST:PORT"),
    ("collect.arm=tcp://127.0.0.1:port", "'tcp://127.0.0.1:port': expected tcp://HOST:PORT"),
    ("collect.keys=keys", "without collect.arm"),
])
def test_bad_arm_settings_fail_before_any_work(tiny_pipeline, override, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(tiny_pipeline, [override])


def test_an_arm_runs_a_teacher_sampler_and_needs_an_existing_key_dir(tiny_pipeline, tmp_path):
    arm = "collect.arm=tcp://127.0.0.1:6510"
    with pytest.raises(ConfigError, match="collect.sampler: 'cm1'"):
        load_pipeline_config(tiny_pipeline, [arm, "collect.sampler=cm1"])
    with pytest.raises(ConfigError, match="is not a directory"):
        load_pipeline_config(tiny_pipeline, [arm, f"collect.keys={tmp_path / 'nokeys'}"])
    assert load_pipeline_config(tiny_pipeline, [arm]).collect.arm == "tcp://127.0.0.1:6510"


@pytest.mark.slow
def test_a_round_on_an_arm_runs_through_the_whole_pipeline(tiny_pipeline, tmp_path):
    """demos -> il_0 -> offline_0 -> collect_0 on a real arm server -> merge_0 -> il_1 (on the merged keys) ->
    select_1 -> distill -> export -> evaluate, at the tiny budgets of test_full_chain."""
    from robotstack.pipeline.runner import run_pipeline

    doc = yaml.safe_load(tiny_pipeline.read_text())
    offline = {"config": str(ROOT / "configs" / "offline_rl" / "reach.yaml"), "overrides": OFFLINE_RL_TINY}
    srv = ServerProc(driver="kinematic")
    try:
        doc |= {"rounds": 1, "round_gate": {"episodes": 2}, "offline": offline,
                "collect": {"episodes": 2, "arm": srv.addr, "max_steps": 8}}
        tiny_pipeline.write_text(yaml.safe_dump(doc))
        result = run_pipeline(str(tiny_pipeline), [], out=str(tmp_path / "run"), show_progress=False)
    finally:
        srv.stop()
    assert result["status"] == "finished"
    by = {s["name"]: s["summary"] for s in result["stages"]}
    assert by["collect_0"]["arm"] == srv.addr and by["collect_0"]["episodes"] == 2
    assert "object_state" in by["merge_0"]["dropped_keys_data"]
    with EpisodeStore.open(tmp_path / "run" / "merge_0" / stages.STORE) as st:
        assert [m.source for m in st.episode_metas()] == ["scripted"] * 3 + ["policy"] * 2
